"""The particle system functionals are evaluated on and flows move: features, labels and (for
joint dynamics) label parameters."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from ..data.dataset import ClassStats, LabeledDataset

__all__ = ["FlowState"]


@dataclass
class FlowState:
    """Particles :math:`z_i = (x_i, y_i)` with weights :math:`w_i`, plus label parameters.

    Attributes:
        x: ``(n, d)`` particle features (a leaf tensor the optimizer updates).
        y: ``(n,)`` discrete labels, indices into ``classes``.
        weights: ``(n,)`` particle masses, summing to 1.
        classes: class names.
        feature_shape: shape of one sample (for image grids).
        template: the dataset the flow started from (labels, weights, names).
        class_means, class_factors: jd-fl parameters, ``(C, d)`` and ``(C, r, d)`` with
            :math:`\\Sigma_c = F_c^\\top F_c` (PSD by construction).
        particle_means, particle_factors, particle_stds: jd-vl parameters, one Gaussian per
            particle: ``(n, d)`` means and ``(n, r, d)`` factors (full covariances) or ``(n, d)``
            standard deviations (diagonal covariances ``std**2``).
        label_gradient: fd-fl only; whether the label term is differentiated through the
            class statistics of the particles ("attached") or not.
        step: number of steps taken.
    """

    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    classes: tuple[Hashable, ...]
    feature_shape: tuple[int, ...]
    class_means: torch.Tensor | None = None
    class_factors: torch.Tensor | None = None
    particle_means: torch.Tensor | None = None
    particle_factors: torch.Tensor | None = None
    particle_stds: torch.Tensor | None = None
    label_gradient: bool = True
    step: int = 0
    _dataset: LabeledDataset | None = field(default=None, repr=False)

    @classmethod
    def from_dataset(cls, dataset: LabeledDataset) -> FlowState:
        """A state whose features are a fresh leaf copy of ``dataset.x``."""
        return cls(
            x=dataset.x.detach().clone(),
            y=dataset.y.clone(),
            weights=dataset.weights.detach().clone(),
            classes=dataset.classes,
            feature_shape=dataset.feature_shape,
        )

    @property
    def joint(self) -> bool:
        """Whether the label distributions are free parameters (jd-fl, jd-vl)."""
        return self.class_means is not None or self.particle_means is not None

    def dataset(self) -> LabeledDataset:
        """The current particles as a :class:`LabeledDataset` (features keep their graph)."""
        if self._dataset is None or self._dataset.y is not self.y:
            base = object.__new__(LabeledDataset)
            base.__dict__.update(
                x=self.x.detach(),
                y=self.y,
                weights=self.weights,
                classes=self.classes,
                feature_shape=self.feature_shape,
                name="flow",
            )
            self._dataset = base
        return self._dataset.with_features(self.x)

    def label_view(self) -> tuple[LabeledDataset, ClassStats | None]:
        """What label-aware functionals (OTDD) see: a dataset and the statistics of its classes.

        * fd-fl: the particles, statistics recomputed from them (None), or detached statistics
          when ``label_gradient`` is False;
        * jd-fl: the particles with the class-parameter statistics;
        * jd-vl: every particle is its own class, with its own Gaussian.
        """
        data = self.dataset()
        if self.particle_means is not None:
            n = self.x.shape[0]
            own = object.__new__(LabeledDataset)
            own.__dict__.update(data.__dict__)
            own.y = torch.arange(n, device=self.x.device)
            own.classes = tuple(range(n))
            stats = ClassStats(
                means=self.particle_means,
                weights=self.weights,
                counts=torch.ones(n, dtype=torch.long, device=self.x.device),
                classes=own.classes,
                factors=self.particle_factors,
                variances=None if self.particle_stds is None else self.particle_stds**2,
            )
            return own, stats
        if self.class_means is not None:
            masses = torch.zeros(len(self.classes), dtype=self.weights.dtype, device=self.weights.device)
            masses = masses.index_add(0, self.y, self.weights)
            counts = torch.bincount(self.y, minlength=len(self.classes))
            stats = ClassStats(
                means=self.class_means, weights=masses, counts=counts, classes=self.classes, factors=self.class_factors
            )
            return data, stats
        if not self.label_gradient:
            with torch.no_grad():
                return data, data.with_features(self.x.detach()).class_stats()
        return data, None

    def parameters(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(name, tensor, mass)`` of every parameter the optimizer moves; a gradient divided by
        its mass is the Wasserstein gradient (the flow's velocity)."""
        params = [("x", self.x, self.weights[:, None])]
        if self.class_means is not None:
            masses = torch.zeros(len(self.classes), dtype=self.weights.dtype, device=self.weights.device)
            masses = masses.index_add(0, self.y, self.weights)
            params.append(("class_means", self.class_means, masses[:, None]))
            params.append(("class_factors", self.class_factors, masses[:, None, None]))
        if self.particle_means is not None:
            params.append(("particle_means", self.particle_means, self.weights[:, None]))
            if self.particle_factors is not None:
                params.append(("particle_factors", self.particle_factors, self.weights[:, None, None]))
            if self.particle_stds is not None:
                params.append(("particle_stds", self.particle_stds, self.weights[:, None]))
        return params
