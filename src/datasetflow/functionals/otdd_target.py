r"""Distance to a target dataset: :math:`\mathcal{T}_\beta(\rho) = \tfrac12 \mathrm{OTDD}^2(\rho, \beta)`."""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import LabeledDataset
from ..data.sharding import gather_dataset
from ..distances.otdd import DEFAULT_INNER, DEFAULT_OUTER, otdd
from ..distributed.comm import all_reduce_sum
from ..errors import DivergenceError, InvalidArgumentError, RegularizationError
from ..labels.costs import LabelCost, get_label_cost
from ..solvers.api import DEFAULT_RELATIVE_REG
from ..solvers.minibatch import DEFAULT_BATCH_SIZE, draw_minibatch
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
            tol, grad, backend, eps_scaling, rank, batch_size, n_batches: as in
            :func:`~datasetflow.distances.otdd.otdd` (the same defaults). ``outer="lowrank"`` and
            ``outer="minibatch"`` never form the ``n x m`` cost: flows of 10^5 particles.
        target_batch: **stochastic flow**: if set, every evaluation uses a fresh class-stratified minibatch
            of ``min(target_batch, m)`` target points (class quotas proportional to the class masses,
            weights renormalised per class) for the outer problem; the label distances stay those of the
            whole target (summarised once).
        particle_batch: if set, every evaluation also draws ``min(particle_batch, n)`` particles (stratified
            the same way); only they move at that step, each by its own Wasserstein gradient against the
            step's target points (the gradient is scaled by ``particle_batch / n`` so that the flow's mass
            rescaling gives each drawn particle its own displacement), and the value is the drawn
            particles' OTDD term.
        batch_size, n_batches: with ``outer="minibatch"``, the flow draws ``n_batches`` *disjoint* particle
            minibatches (default ``n // batch_size``: every particle moves once per step, by its own
            displacement towards its minibatch's target points) and a fresh target minibatch for each.
        seed: seed of the minibatch draws (``target_batch``, ``particle_batch``, ``outer="minibatch"``) and of
            the low-rank initial factors; the draws come from one ``torch.Generator`` on the particles'
            device whose state is saved in the flow's checkpoints, so a resumed flow draws the same
            minibatches and is bit-identical to an uninterrupted one.

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
        rank: int | None = None,
        batch_size: int | None = None,
        n_batches: int | None = None,
        target_batch: int | None = None,
        particle_batch: int | None = None,
        seed: int = 0,
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
        if outer == "lowrank":
            self.options.update(rank=rank, seed=seed)
        elif outer == "minibatch":
            self.options.update(batch_size=batch_size, n_batches=n_batches)
        elif rank is not None or batch_size is not None or n_batches is not None:
            raise InvalidArgumentError(
                f"rank applies to outer='lowrank', batch_size and n_batches to outer='minibatch', not {outer!r}."
            )
        for label, value in (("target_batch", target_batch), ("particle_batch", particle_batch)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidArgumentError(f"{label} must be a positive int or None, got {value!r}.")
        self.target_batch, self.particle_batch, self.seed = target_batch, particle_batch, int(seed)
        self._cache: dict[str, Any] = {}
        self._generator: torch.Generator | None = None
        self._pending_generator: torch.Tensor | None = None

    def __repr__(self) -> str:
        defaults = OTDDToTarget.__init__.__kwdefaults__
        extra = {"target_batch": self.target_batch, "particle_batch": self.particle_batch}
        opts = "".join(f", {k}={v!r}" for k, v in {**self.options, **extra}.items() if defaults.get(k) != v)
        return f"otdd_to(target={self.target.name or 'dataset'!r}, inner={self.label_cost!r}{opts})"

    @property
    def stochastic(self) -> bool:
        """Whether evaluations draw random minibatches (target, particles or the minibatch outer solver)."""
        return self.target_batch is not None or self.particle_batch is not None or self.options["outer"] == "minibatch"

    def reset(self) -> None:  # noqa: D102
        self._cache = {}
        self._generator = None
        self._pending_generator = None

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        state = {k: v for k, v in self._cache.items() if k != "summary"}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        elif self._pending_generator is not None:
            state["generator"] = self._pending_generator
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        state = dict(state)
        self._generator = None
        self._pending_generator = state.pop("generator", None)
        self._cache = state

    def _rng(self, like: torch.Tensor) -> torch.Generator:
        """The minibatch generator on the particles' device (restored from a checkpoint if one was loaded)."""
        if self._generator is None or self._generator.device != like.device:
            self._generator = torch.Generator(device=like.device).manual_seed(self.seed)
            if self._pending_generator is not None:
                self._generator.set_state(self._pending_generator)
            self._pending_generator = None
        return self._generator

    def _draw(self, data: LabeledDataset, size: int, generator: torch.Generator) -> LabeledDataset:
        if size >= len(data):
            return data
        index, weights = draw_minibatch(data.weights, size, generator, data.y)
        return data.take(index, weights=weights)

    def value(self, state: Particles) -> torch.Tensor:  # noqa: D102
        source, stats = state.label_view()
        world = state.world
        if world is not None and world.distributed and self.options["outer"] in ("lowrank", "minibatch"):
            if stats is not None:
                raise InvalidArgumentError(
                    f"otdd_to(outer={self.options['outer']!r}) on sharded particles gathers them and cannot use "
                    "per-rank label parameters (joint dynamics); use outer='sinkhorn' (row-sharded)."
                )
            if self.options["outer"] == "lowrank":
                # replicated solve on the gathered particles, identical on every rank (see otdd's world argument)
                source, world = gather_dataset(source, world), None
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
        scale = 1.0
        if self.stochastic:
            generator = self._rng(source.x)
            if options["outer"] == "minibatch":
                options["generator"] = generator
                options["disjoint"] = True
            if self.particle_batch is not None and world is not None and world.distributed:
                raise InvalidArgumentError(
                    f"otdd_to(particle_batch={self.particle_batch}) draws particles from one process's shard; it is "
                    "not supported on particles sharded over ranks (target_batch= is: every rank draws the same "
                    "target minibatch)."
                )
            if self.particle_batch is not None and self.particle_batch < len(source):
                full = len(source)
                source = self._draw(source, self.particle_batch, generator)
                scale = len(source) / full
            if self.target_batch is not None:
                target = self._draw(target, self.target_batch, generator)
            if options["outer"] == "minibatch":
                # sharded particles: otdd gathers them and splits the pairs over the ranks; n is the global count
                n = len(source)
                if world is not None and world.distributed:
                    count = torch.tensor([float(n)], dtype=torch.float64, device=source.x.device)
                    n = int(all_reduce_sum(count, world))
                size = options["batch_size"] or min(n, len(target), DEFAULT_BATCH_SIZE)
                options["batch_size"] = size
                options["n_batches"] = options["n_batches"] or max(1, n // size)
        fixed_target = self.target_batch is None
        warm = not self.stochastic and cache.get("f") is not None and cache["f"].shape[0] == source.x.shape[0]
        try:
            result = otdd(
                source,
                target,
                inner=self.label_cost,
                source_stats=stats,
                target_summary=cache.get("summary"),
                target_self=(
                    (cache["target_labels"], cache["target_value"]) if debiased and fixed_reg and fixed_target else None
                ),
                potentials_init=(cache["f"], cache["g"]) if sinkhorn and warm else None,
                world=world,
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
        if sinkhorn and result.ot.potentials is not None and not self.stochastic:
            cache["f"], cache["g"] = result.ot.potentials
        # the raw OT value, not the distance clamped at 0: near the target a debiased value can dip
        # below 0 by round-off, and the clamp would zero the gradient there
        value = 0.5 * result.ot.value
        if scale != 1.0:  # the value of the drawn particles, with gradients scaled by particle_batch / n
            value = value.detach() + scale * (value - value.detach())
        return value


def otdd_to(target: LabeledDataset, **options: Any) -> OTDDToTarget:
    """Shorthand for :class:`OTDDToTarget` (the same keyword options)."""
    return OTDDToTarget(target, **options)
