r"""Distance to a target dataset: :math:`\mathcal{T}_\beta(\rho) = \tfrac12 \mathrm{OTDD}^2(\rho, \beta)`."""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import LabeledDataset
from ..distances.label_costs import GaussianLabelCost
from ..distances.otdd import otdd
from ..errors import InvalidArgumentError
from .base import Functional

__all__ = ["OTDDToTarget", "otdd_to"]


class OTDDToTarget(Functional):
    r"""Half the squared OTDD to a fixed target dataset,
    :math:`\tfrac12 \mathrm{OTDD}^2(\rho, \beta)` (paper §5, :math:`\mathcal{T}_\beta`).

    The factor ½ makes the feature part of the Wasserstein gradient at particle :math:`x_i`
    equal to :math:`x_i - T(x_i)` (exact OT; the barycentric projection for entropic OT), so a
    unit Euler step moves particles onto their transport targets.

    Args:
        target: the target :class:`LabeledDataset`.
        **options: any option of :func:`~datasetflow.distances.otdd.otdd` (``inner``, ``outer``,
            ``reg``, ``debiased``, ``feature_weight``, ``label_weight``, ...).

    Under jd-vl dynamics every particle carries its own Gaussian; the label cost then must be
    Gaussian (diagonal when the particles' covariances are diagonal).

    With the default debiased Sinkhorn outer problem, the regularisation is fixed at its value
    on the first evaluation (relative to the initial cost scale unless ``reg`` is given), and
    the target's statistics, label distances and self-transport value are computed once and
    reused: the target does not move.
    """

    name = "otdd"

    def __init__(self, target: LabeledDataset, **options: Any) -> None:
        if not isinstance(target, LabeledDataset):
            raise InvalidArgumentError(f"target must be a LabeledDataset, got {type(target).__name__}.")
        self.target, self.options = target, options
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"otdd_to(target={self.target.name or 'dataset'!r}{', ' + opts if opts else ''})"

    def value(self, state) -> torch.Tensor:  # noqa: D102
        source, stats = state.label_view()
        options = dict(self.options)
        if stats is not None and stats.variances is not None and stats.factors is None:
            inner = options.get("inner", "gaussian")
            if inner == "gaussian":
                options["inner"] = GaussianLabelCost(diagonal=True)
        target = self.target
        if target.x.device != source.x.device or target.x.dtype != source.x.dtype:
            target = self.target = target.to(device=source.x.device, dtype=source.x.dtype)
            self._cache.clear()
        cache = self._cache
        cacheable = options.get("outer", "sinkhorn") == "sinkhorn" and options.get("debiased", True)
        if cacheable and "reg" in cache:
            # the target is fixed: reuse its statistics, its label distances and OT_eps(target, target)
            options["reg"] = cache["reg"]
            result = otdd(
                source,
                target,
                source_stats=stats,
                target_stats=cache.get("stats"),
                target_self=cache["target_self"],
                **options,
            )
        else:
            if cacheable and isinstance(options.get("inner", "gaussian"), (str, GaussianLabelCost)):
                inner = options.get("inner", "gaussian")
                uses_stats = inner == "gaussian" or isinstance(inner, GaussianLabelCost)
                cache["stats"] = target.class_stats() if uses_stats else None
            result = otdd(source, target, source_stats=stats, target_stats=cache.get("stats"), **options)
            if cacheable and result.self_label_distances is not None:
                # the regularisation is fixed at its first (relative-default) value for the whole flow
                cache["reg"] = result.config["reg"]
                cache["target_self"] = (result.self_label_distances[1].detach(), result.ot.self_values[1])
        return 0.5 * result.distance_squared


def otdd_to(target: LabeledDataset, **options: Any) -> OTDDToTarget:
    """Shorthand for :class:`OTDDToTarget`."""
    return OTDDToTarget(target, **options)
