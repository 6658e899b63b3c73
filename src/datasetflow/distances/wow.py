r"""The Wasserstein-over-Wasserstein (WoW) distance between labeled datasets, and class matching.

With :math:`P = \sum_c p_c \delta_{\mu_c}` and :math:`Q = \sum_{c'} q_{c'} \delta_{\nu_{c'}}`
(classes as distributions, :mod:`~datasetflow.distances.mmd`),

.. math:: \mathrm{WW}_2^2(P, Q) = \min_{\Gamma \in \Pi(p, q)} \sum_{c, c'} \Gamma_{cc'}\, W_2^2(\mu_c, \nu_{c'}),

a small ``C x C'`` exact OT whose ground cost is a label cost (:mod:`~datasetflow.labels.costs`):
the squared W2 between class clouds, exact (network simplex per class pair), Gaussian (Bures) or
sliced. Its coupling matches classes (:mod:`~datasetflow.labels.matching`): after a flow, each
flowed class is named, one to one, after the target class it exchanges most mass with.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch

from ..costs.linalg import safe_sqrt
from ..data.dataset import LabeledDataset, json_name
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..labels.costs import LabelCost, SlicedLabelCost, get_label_cost
from ..labels.matching import match_classes
from ..solvers.api import solve

__all__ = ["wow", "WoWResult"]


@dataclass(frozen=True)
class WoWResult:
    """Result of :func:`wow`.

    Attributes:
        distance_squared: 0-d tensor :math:`\\mathrm{WW}_2^2` (differentiable in the features).
        distance: its square root.
        class_costs: ``(C, C')`` ground cost :math:`W_2^2(\\mu_c, \\nu_{c'})`.
        coupling: ``(C, C')`` optimal class coupling :math:`\\Gamma`.
        matching: ``(C,)`` long, the target class matched one to one to each source class (the
            assignment of most coupled mass; with more source than target classes, the source
            classes left over take the target class they send most mass to).
        source_classes, target_classes: class names.
        inner: the label cost's name (``"exact"``, ``"gaussian"``, ``"sinkhorn"`` or ``"sliced"``).
    """

    distance_squared: torch.Tensor
    distance: torch.Tensor
    class_costs: torch.Tensor
    coupling: torch.Tensor
    matching: torch.Tensor
    source_classes: tuple[Hashable, ...]
    target_classes: tuple[Hashable, ...]
    inner: str

    @property
    def matched_classes(self) -> list[Hashable]:
        """For each source class, the name of the target class it is matched to."""
        return [self.target_classes[k] for k in self.matching.tolist()]

    def relabel(self, dataset: LabeledDataset) -> LabeledDataset:
        """``dataset`` (labeled like the source) with every sample renamed to its class's matched target class."""
        if dataset.classes != self.source_classes:
            raise InvalidArgumentError(
                f"relabel expects a dataset with the source classes {self.source_classes!r}, got {dataset.classes!r}."
            )
        names = self.matched_classes
        used = [c for c in self.target_classes if c in set(names)]
        return LabeledDataset(
            dataset.x.detach().reshape(len(dataset), *dataset.feature_shape),
            [names[k] for k in dataset.y.tolist()],
            weights=dataset.weights,
            classes=used,
            name=dataset.name,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""

        return {
            "distance": float(self.distance.detach()),
            "distance_squared": float(self.distance_squared.detach()),
            "inner": self.inner,
            "source_classes": [json_name(c) for c in self.source_classes],
            "target_classes": [json_name(c) for c in self.target_classes],
            "class_costs": self.class_costs.detach().cpu().tolist(),
            "coupling": self.coupling.detach().cpu().tolist(),
            "matching": [json_name(c) for c in self.matched_classes],
        }


def wow(
    source: LabeledDataset,
    target: LabeledDataset,
    *,
    inner: str | LabelCost = "exact",
    class_weights: str = "dataset",
    n_projections: int = 500,
    projections: Any = None,
    seed: int = 0,
) -> WoWResult:
    r"""The WoW distance :math:`\mathrm{WW}_2(P, Q)` and the class coupling between two datasets.

    Args:
        source, target: :class:`LabeledDataset` s of the same dimension.
        inner: the class-to-class cost :math:`W_2^2(\mu_c, \nu_{c'})`, a label cost or its name:
            ``"exact"`` (default; POT network simplex between the class clouds, with their sample
            weights), ``"gaussian"`` (alias ``"bures"``: closed form on class means and covariances),
            ``"sinkhorn"`` or ``"sliced"`` (:math:`\mathrm{SW}_2^2`).
        class_weights: ``"dataset"`` (class masses of the datasets) or ``"uniform"``.
        n_projections, projections, seed: directions of the sliced label cost (``inner="sliced"``).

    Returns:
        A :class:`WoWResult` (distance, costs, coupling and class matching).
    """
    for argument, value in (("source", source), ("target", target)):
        if not isinstance(value, LabeledDataset):
            raise InvalidArgumentError(f"{argument} must be a LabeledDataset, got {type(value).__name__}.")
    if source.dim != target.dim:
        raise ShapeMismatchError(f"source has dimension {source.dim} but target has {target.dim}.")
    if class_weights not in ("dataset", "uniform"):
        raise InvalidArgumentError(f"class_weights must be 'dataset' or 'uniform', got {class_weights!r}.")
    if isinstance(inner, str) and get_label_cost(inner).name == "sliced":
        label_cost: LabelCost = SlicedLabelCost(n_projections=n_projections, projections=projections, seed=seed)
    else:
        label_cost = get_label_cost(inner)
    target = target.to(device=source.x.device, dtype=source.x.dtype)
    costs = label_cost.between(source, target)
    if class_weights == "uniform":
        p = costs.new_full((source.num_classes,), 1.0 / source.num_classes)
        q = costs.new_full((target.num_classes,), 1.0 / target.num_classes)
    else:
        p, q = source.class_weights().to(costs), target.class_weights().to(costs)
    result = solve(costs, p, q, method="exact")
    coupling = result.plan.detach()
    value = result.value.clamp_min(0)
    return WoWResult(
        distance_squared=value,
        distance=safe_sqrt(value),
        class_costs=costs,
        coupling=coupling,
        matching=match_classes(coupling, maximize=True),
        source_classes=source.classes,
        target_classes=target.classes,
        inner=label_cost.name,
    )
