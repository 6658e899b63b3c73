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
    reused: the target does not move. Each evaluation warm-starts Sinkhorn from the previous
    one's potentials. This memory is reset by :func:`~datasetflow.flows.loop.run_flow` at the
    start of a flow and saved in its checkpoints.
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

    @staticmethod
    def _target_stats(target: LabeledDataset, options: dict[str, Any]):
        """The target's class statistics when the label cost uses them (Gaussian), else None."""
        inner = options.get("inner", "gaussian")
        return target.class_stats() if inner == "gaussian" or isinstance(inner, GaussianLabelCost) else None

    def reset(self) -> None:  # noqa: D102
        self._cache = {}

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {k: v for k, v in self._cache.items() if k != "stats"}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self._cache = dict(state)

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
            # the target is fixed: reuse its statistics, label distances and OT_eps(target, target),
            # and warm-start Sinkhorn from the previous evaluation's potentials
            if "stats" not in cache:
                cache["stats"] = self._target_stats(target, options)
            options["reg"] = cache["reg"]
            warm = (cache["f"], cache["g"]) if "f" in cache and cache["f"].shape[0] == source.x.shape[0] else None
            result = otdd(
                source,
                target,
                source_stats=stats,
                target_stats=cache["stats"],
                target_self=(cache["target_labels"], cache["target_value"]),
                potentials_init=warm,
                **options,
            )
        else:
            cache["stats"] = self._target_stats(target, options) if cacheable else None
            result = otdd(source, target, source_stats=stats, target_stats=cache["stats"], **options)
            if cacheable and result.self_label_distances is not None:
                # the regularisation is fixed at its first (relative-default) value for the whole flow
                cache["reg"] = result.config["reg"]
                cache["target_labels"] = result.self_label_distances[1].detach()
                cache["target_value"] = result.ot.self_values[1]
        if cacheable and result.ot.potentials is not None:
            cache["f"], cache["g"] = result.ot.potentials
        return 0.5 * result.distance_squared


def otdd_to(target: LabeledDataset, **options: Any) -> OTDDToTarget:
    """Shorthand for :class:`OTDDToTarget`."""
    return OTDDToTarget(target, **options)
