"""The particle system a flow moves: features, labels, weights, and the label parameters its dynamics owns.

:class:`FlowState` follows the :class:`~datasetflow.functionals.base.Particles` protocol that
functionals see. What the label distributions are (statistics of the particles, free class
Gaussians, one Gaussian per particle) is decided by the state's dynamics
(:mod:`~datasetflow.flows.dynamics`), which also lists the tensors the optimizer moves.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..data.dataset import ClassStats, LabeledDataset
from ..distributed.comm import World

if TYPE_CHECKING:  # pragma: no cover
    from .dynamics import Dynamics

__all__ = ["FlowState"]


@dataclass
class FlowState:
    """Particles :math:`z_i = (x_i, y_i)` with weights :math:`w_i`, plus the label parameters of the dynamics.

    Attributes:
        x: ``(n, d)`` particle features (a leaf tensor the optimizer updates).
        y: ``(n,)`` discrete labels, indices into ``classes``.
        weights: ``(n,)`` particle masses, summing to 1.
        classes: class names.
        feature_shape: shape of one sample (for image grids).
        dynamics: the :class:`~datasetflow.flows.dynamics.Dynamics` that owns ``params``.
        params: label parameters owned by the dynamics (name -> tensor), e.g. class means.
        seed: the flow's seed (for dynamics that draw random numbers, e.g. k-means).
        initial_num_classes: the number of classes the flow started with.
        step: number of steps taken.
        world: the ranks the particles are sharded over (single-process by default); ``x``, ``y`` and
            ``weights`` are then this rank's shard, with weights that sum to 1 over all ranks.
    """

    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    classes: tuple[Hashable, ...]
    feature_shape: tuple[int, ...]
    dynamics: Dynamics | None = None
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    seed: int = 0
    initial_num_classes: int = 0
    step: int = 0
    world: World = field(default_factory=World)

    @classmethod
    def from_dataset(cls, dataset: LabeledDataset, dynamics: Dynamics | None = None, *, seed: int = 0) -> FlowState:
        """A state whose features are a fresh leaf copy of ``dataset.x`` (label parameters: none)."""
        return cls(
            x=dataset.x.detach().clone(),
            y=dataset.y.clone(),
            weights=dataset.weights.detach().clone(),
            classes=dataset.classes,
            feature_shape=dataset.feature_shape,
            dynamics=dynamics,
            seed=int(seed),
            initial_num_classes=dataset.num_classes,
        )

    def dataset(self) -> LabeledDataset:
        """The current particles as a :class:`LabeledDataset` (features keep their graph)."""
        return LabeledDataset.from_tensors(
            self.x, self.y, self.weights, self.classes, feature_shape=self.feature_shape, name="flow"
        )

    def class_masses(self) -> torch.Tensor:
        """``(C,)`` mass of every class."""
        masses = torch.zeros(len(self.classes), dtype=self.weights.dtype, device=self.weights.device)
        return masses.index_add(0, self.y, self.weights)

    def label_view(self) -> tuple[LabeledDataset, ClassStats | None]:
        """What label-aware functionals (OTDD) see: a dataset and, when the dynamics has label parameters,
        their statistics (see :meth:`~datasetflow.flows.dynamics.Dynamics.label_view`)."""
        if self.dynamics is None:
            return self.dataset(), None
        return self.dynamics.label_view(self)

    def parameters(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(name, tensor, mass)`` of every tensor the optimizer moves; a gradient divided by its mass
        is the Wasserstein gradient (the flow's velocity)."""
        if self.dynamics is None:
            return [("x", self.x, self.weights[:, None])]
        return self.dynamics.parameters(self)

    def describe(self) -> dict[str, Any]:
        """Sizes, for messages."""
        return {"n": self.x.shape[0], "d": self.x.shape[1], "classes": len(self.classes), "step": self.step}
