r"""Distance to a target dataset: :math:`\mathcal{T}_\beta(\rho) = \tfrac12 \mathrm{OTDD}^2(\rho, \beta)`."""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import LabeledDataset
from ..distances.otdd import DEFAULT_INNER, DEFAULT_OUTER, otdd
from ..errors import DivergenceError, InvalidArgumentError, RegularizationError
from ..labels.costs import LabelCost, get_label_cost
from ..solvers.api import DEFAULT_RELATIVE_REG
from .base import Functional, Particles

__all__ = ["OTDDToTarget", "otdd_to"]


class OTDDToTarget(Functional):
    r"""Half the squared OTDD to a fixed target dataset,
    :math:`\tfrac12 \mathrm{OTDD}^2(\rho, \beta)` (paper §5, :math:`\mathcal{T}_\beta`).

    The factor ½ makes the feature part of the Wasserstein gradient at particle :math:`x_i`
    equal to :math:`x_i - T(x_i)` (exact OT; the barycentric projection for entropic OT), so a
    unit Euler step moves particles onto their transport targets.

    Args:
        target: the target :class:`LabeledDataset`.
        inner, outer, reg, debiased, feature_weight, label_weight, relative_reg_fraction, max_iter,
            tol, grad, backend, eps_scaling: as in :func:`~datasetflow.distances.otdd.otdd`
            (the same defaults).

    The label view comes from the particles (:class:`~datasetflow.functionals.base.Particles`):
    under joint dynamics it carries label statistics of its own, which the label cost must be able
    to use (the Gaussian one; it takes the diagonal formula when only variances are given).

    The target is fixed, so its label-cost summary is computed once. With a Sinkhorn outer problem
    the regularisation is fixed at its value on the first evaluation (relative to the initial cost
    scale unless ``reg`` is given); debiased, the target's self-transport value and label distances
    are computed once too. Each evaluation warm-starts Sinkhorn from the previous one's potentials.
    This memory is reset by :func:`~datasetflow.flows.loop.run_flow` at the start of a flow and saved
    in its checkpoints. If the particles move so far that the fixed regularisation underflows, the
    evaluation raises :class:`~datasetflow.errors.DivergenceError` (the flow is diverging).
    """

    name = "otdd"
    #: sharded particles: row-sharded Sinkhorn, label distances from all-reduced class statistics (``otdd(world=)``)
    supports_sharding = True

    def __init__(
        self,
        target: LabeledDataset,
        *,
        inner: str | LabelCost = DEFAULT_INNER,
        outer: str = DEFAULT_OUTER,
        reg: float | None = None,
        debiased: bool = True,
        feature_weight: float = 1.0,
        label_weight: float = 1.0,
        relative_reg_fraction: float = DEFAULT_RELATIVE_REG,
        max_iter: int | None = None,
        tol: float | None = None,
        grad: str = "envelope",
        backend: str = "auto",
        eps_scaling: float | str | None = "auto",
    ) -> None:
        if not isinstance(target, LabeledDataset):
            raise InvalidArgumentError(f"target must be a LabeledDataset, got {type(target).__name__}.")
        self.target = target
        self.label_cost = get_label_cost(inner)
        self.options: dict[str, Any] = {
            "outer": outer,
            "reg": reg,
            "debiased": debiased,
            "feature_weight": feature_weight,
            "label_weight": label_weight,
            "relative_reg_fraction": relative_reg_fraction,
            "max_iter": max_iter,
            "tol": tol,
            "grad": grad,
            "backend": backend,
            "eps_scaling": eps_scaling,
        }
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        defaults = OTDDToTarget.__init__.__kwdefaults__
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items() if defaults.get(k) != v)
        return f"otdd_to(target={self.target.name or 'dataset'!r}, inner={self.label_cost!r}{opts})"

    def reset(self) -> None:  # noqa: D102
        self._cache = {}

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {k: v for k, v in self._cache.items() if k != "summary"}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self._cache = dict(state)

    def value(self, state: Particles) -> torch.Tensor:  # noqa: D102
        source, stats = state.label_view()
        target = self.target
        if target.x.device != source.x.device or target.x.dtype != source.x.dtype:
            target = self.target = target.to(device=source.x.device, dtype=source.x.dtype)
            self._cache.pop("summary", None)
        cache = self._cache
        options = dict(self.options)
        sinkhorn = options["outer"] == "sinkhorn"
        debiased = sinkhorn and options["debiased"]
        if "summary" not in cache and options["label_weight"] > 0:
            cache["summary"] = self.label_cost.summarize(target)
        fixed_reg = "reg" in cache
        if fixed_reg:
            options["reg"] = cache["reg"]
        warm = cache.get("f") is not None and cache["f"].shape[0] == source.x.shape[0]
        try:
            result = otdd(
                source,
                target,
                inner=self.label_cost,
                source_stats=stats,
                target_summary=cache.get("summary"),
                target_self=(cache["target_labels"], cache["target_value"]) if debiased and fixed_reg else None,
                potentials_init=(cache["f"], cache["g"]) if sinkhorn and warm else None,
                world=state.world,
                **options,
            )
        except RegularizationError as exc:
            if not fixed_reg:
                raise
            raise DivergenceError(
                f"the particles' costs grew too large for the regularisation reg={cache['reg']:.4g} fixed at the "
                f"first step ({exc}); the flow is diverging, try a smaller step size."
            ) from None
        if sinkhorn and not fixed_reg:
            # the regularisation is fixed at its first (relative-default) value for the whole flow
            cache["reg"] = result.config["reg"]
            if debiased and result.self_label_distances is not None:
                cache["target_labels"] = result.self_label_distances[1].detach()
                cache["target_value"] = result.ot.self_values[1]
            elif debiased:  # label_weight = 0: no label matrices, the self value still applies
                cache["target_labels"] = None
                cache["target_value"] = result.ot.self_values[1]
        if sinkhorn and result.ot.potentials is not None:
            cache["f"], cache["g"] = result.ot.potentials
        # the raw OT value, not the distance clamped at 0: near the target a debiased value can dip
        # below 0 by round-off, and the clamp would zero the gradient there
        return 0.5 * result.ot.value


def otdd_to(target: LabeledDataset, **options: Any) -> OTDDToTarget:
    """Shorthand for :class:`OTDDToTarget` (the same keyword options)."""
    return OTDDToTarget(target, **options)
