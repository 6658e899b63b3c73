r"""The WoW flow objective: :math:`F(P) = \tfrac12 \mathrm{MMD}_K^2(P, Q)` with a sliced-Wasserstein kernel.

The particles of class :math:`c` form :math:`\mu_c`; the flowed dataset is
:math:`P = \sum_c p_c \delta_{\mu_c}` and the target :math:`Q` is fixed (see
:mod:`datasetflow.distances.mmd`). The flow loop divides each particle gradient by the particle's
mass :math:`w_i = p_c / n_c`, which is the WoW gradient :math:`(n_c/p_c)\,\nabla_{x_i} F` of
Bonet, Vauthier & Korba (2025): the same single rescaling as for Wasserstein flows. The term
adds to the OTDD, potential and interaction terms of the same flow.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import LabeledDataset
from ..data.sharding import sharded_class_stats
from ..distances.mmd import class_masses, kernel_label_cost, mmd_from_summaries
from ..distributed.comm import World, all_reduce_sum
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..labels.costs import ClassQuantiles, LabelCost, SlicedLabelCost
from ..labels.kernels import SWKernel, get_kernel
from ..solvers.sliced import check_n_projections, draw_directions, sketch_class_quantiles
from .base import Functional, Particles

__all__ = ["MMDSWToTarget", "mmd_sw_to"]


class MMDSWToTarget(Functional):
    r"""Half the squared MMD with an SW kernel to a fixed target dataset, as a flow functional.

    Args:
        target: the target :class:`LabeledDataset` (class masses from its weights, uniform
            inside each class).
        kernel: ``"riesz"`` (default, :math:`-\mathrm{SW}_2`), ``"gaussian"``, ``"riesz-r"``,
            ``"laplace"``, ``"imq"`` or an :class:`~datasetflow.labels.kernels.SWKernel`.
        bandwidth: :math:`h > 0` (None: median heuristic at the first step, then fixed).
        exponent: :math:`r` of ``riesz-r``.
        inner: the class-to-class cost the kernel is a function of (default ``"sliced"``, the WoW
            flow's; any other label cost of order 2 gives a deterministic objective).
        n_projections: the number ``L`` of directions (default 500).
        projections: explicit ``(L, d)`` directions, used at every step.
        resample: draw fresh directions at every step (default, as in the paper); False keeps
            the first draw (a deterministic objective).
        target_batch: if set, a minibatch of ``min(target_batch, smallest target class)`` points of
            every target class is drawn at every step (the same number per class: equal class
            sizes keep the sliced distances on their fast path).
        seed: seed of the directions and minibatches (their generator is checkpointed).
        quantiles: if set (``Q``, e.g. 256), the particles' classes are summarised by mergeable quantile
            sketches on ``Q`` bins (:func:`~datasetflow.solvers.sliced.sketch_class_quantiles`): sharded
            particles then exchange :math:`O(C L Q)` numbers per step instead of :math:`O(n L)`. Each class's
            :math:`\mathrm{SW}_2` moves by at most :math:`\delta_c`, so for the Riesz kernel the value moves by at
            most :math:`2\sum_c p_c \delta_c`, recorded in :attr:`last_error_bound` after every evaluation (other
            kernels: times their Lipschitz constant in :math:`\mathrm{SW}_2`). Sliced label cost only.

    The target-target term :math:`\sum q q' K(\nu, \nu')` does not depend on the particles.
    With fixed directions (``projections`` given or ``resample=False``) and no minibatch it is
    computed once, with the target's sorted projections, and reused at every step. With fresh
    directions (or a target minibatch) it is recomputed from the same step's sorted target
    projections, which that step needs anyway (one extra ``C' x C'`` block of the Gram product),
    so that the logged value is the exact MMD for that step's directions and never negative.

    Sharded particles (``state.world.size > 1``): the directions and target minibatches are drawn from the
    same seed on every rank; the ``(n_r, L)`` projections of every shard are all-gathered (padded), so every
    rank sorts all classes and computes the same value, with the gradient of its own particles. A statistics
    label cost (``inner="gaussian"``) uses all-reduced class statistics instead. See ``docs/distributed.md``.
    """

    name = "mmd_sw"
    #: sharded particles (exact mode): every rank's sorted class projections are all-gathered, ``O(n L)`` numbers
    supports_sharding = True

    def __init__(
        self,
        target: LabeledDataset,
        *,
        kernel: str | SWKernel = "riesz",
        bandwidth: float | None = None,
        exponent: float = 1.0,
        inner: str | LabelCost = "sliced",
        n_projections: int | None = None,
        projections: Any = None,
        resample: bool = True,
        target_batch: int | None = None,
        seed: int = 0,
        quantiles: int | None = None,
    ) -> None:
        if not isinstance(target, LabeledDataset):
            raise InvalidArgumentError(f"target must be a LabeledDataset, got {type(target).__name__}.")
        self.kernel = get_kernel(kernel, bandwidth=bandwidth, exponent=exponent)
        self._bandwidth_given = self.kernel.bandwidth
        self.target = target
        self.target_masses = class_masses(target, argument="target")
        # validated here so that a bad L or a mismatched cost fails before the flow starts
        self.label_cost = kernel_label_cost(
            self.kernel, inner, n_projections=n_projections, projections=projections, seed=seed
        )
        self.sliced = isinstance(self.label_cost, SlicedLabelCost)
        if self.sliced and projections is not None:
            self.label_cost.directions(target.dim, target.x)  # checks the shape against the target
        if target_batch is not None and (
            isinstance(target_batch, bool) or not isinstance(target_batch, int) or target_batch < 1
        ):
            raise InvalidArgumentError(f"target_batch must be a positive int or None, got {target_batch!r}.")
        if quantiles is not None and not self.sliced:
            raise InvalidArgumentError("quantiles (sketched class summaries) apply to the sliced label cost only.")
        self.quantiles = None if quantiles is None else check_n_projections(quantiles)
        #: with ``quantiles``: the bound on the change of the value the sketches make (Riesz kernel), or None
        self.last_error_bound: float | None = None
        self.projections = projections
        self.resample, self.target_batch, self.seed = bool(resample), target_batch, int(seed)
        self.reset()

    def __repr__(self) -> str:
        return (
            f"mmd_sw_to(target={self.target.name or 'dataset'!r}, kernel={self.kernel!r}, inner={self.label_cost!r}, "
            f"resample={self.resample}, target_batch={self.target_batch})"
        )

    # ------------------------------------------------------------------ memory
    def reset(self) -> None:  # noqa: D102
        self._generator: torch.Generator | None = None
        self._target_term: torch.Tensor | None = None
        self._fixed_theta: torch.Tensor | None = None
        self._target_cache: tuple | None = None
        self._pending: dict[str, Any] | None = None
        self.kernel.bandwidth = self._bandwidth_given

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        state: dict[str, Any] = {"bandwidth": self.kernel.bandwidth}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        if self._target_term is not None:
            state["target_term"] = self._target_term.detach().cpu()
        if self._fixed_theta is not None:
            state["theta"] = self._fixed_theta.detach().cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.reset()
        self.kernel.bandwidth = state.get("bandwidth", self._bandwidth_given)
        self._pending = state

    # ------------------------------------------------------------------ evaluation
    def _prepare(self, like: torch.Tensor) -> None:
        """Create the generator (and restore saved memory) on the particles' device."""
        if self._generator is not None:
            return
        self._generator = torch.Generator(device=like.device).manual_seed(self.seed)
        pending = self._pending
        if pending:
            if "generator" in pending:
                self._generator.set_state(pending["generator"])
            if "target_term" in pending:
                self._target_term = pending["target_term"].to(device=like.device, dtype=like.dtype)
            if "theta" in pending:
                self._fixed_theta = pending["theta"].to(device=like.device, dtype=like.dtype)
        self._pending = None

    def _directions(self, like: torch.Tensor) -> torch.Tensor | None:
        """This step's directions: None for a non-sliced label cost, fixed ones, or a fresh draw."""
        if not self.sliced:
            return None
        if self.projections is not None:
            return self.label_cost.directions(like.shape[1], like)
        if self.resample:
            return draw_directions(
                self.label_cost.n_projections,
                like.shape[1],
                generator=self._generator,
                dtype=like.dtype,
                device=like.device,
            )
        if self._fixed_theta is None:
            self._fixed_theta = draw_directions(
                self.label_cost.n_projections,
                like.shape[1],
                generator=self._generator,
                dtype=like.dtype,
                device=like.device,
            )
        return self._fixed_theta

    def _target_batch(self, target: LabeledDataset) -> LabeledDataset:
        """This step's target minibatch (or the whole target)."""
        if self.target_batch is None:
            return target
        keys = torch.rand(len(target), generator=self._generator, device=target.x.device, dtype=target.x.dtype)
        order = torch.argsort(keys)
        order = order[torch.argsort(target.y[order], stable=True)]  # random order inside each class
        counts = target.class_counts()
        starts = torch.cumsum(counts, 0) - counts
        # the same number per class (at most the smallest class): equal sizes keep the sliced
        # distances on the fast path (one quantile grid, no merging of levels)
        take = torch.full_like(counts, min(self.target_batch, int(counts.min())))
        picked = torch.cat([order[s : s + t] for s, t in zip(starts.tolist(), take.tolist(), strict=True)])
        return target.take(picked)

    def _summary(self, dataset: LabeledDataset, directions: torch.Tensor | None, world: World | None = None) -> Any:
        if world is not None and self.quantiles is not None:
            sketch = sketch_class_quantiles(
                dataset.x, dataset.y, dataset.num_classes, directions, world, bins=self.quantiles, p=self.kernel.order
            )
            self._class_error = sketch.class_error
            return ClassQuantiles(sketch.sorted, directions)
        if world is not None and world.distributed:
            if self.sliced:
                return self.label_cost.summarize(dataset, directions=directions, world=world)
            if self.label_cost.uses_stats:
                return self.label_cost.summarize(stats=sharded_class_stats(dataset, world))
            raise InvalidArgumentError(
                f"sharded particles need the sliced or a statistics-based label cost, got {self.label_cost!r}."
            )
        return (
            self.label_cost.summarize(dataset, directions=directions)
            if self.sliced
            else self.label_cost.summarize(dataset)
        )

    def value(self, state: Particles) -> torch.Tensor:  # noqa: D102
        data = state.dataset()
        x = data.x
        if x.shape[1] != self.target.dim:
            raise ShapeMismatchError(f"the particles have dimension {x.shape[1]} but the target has {self.target.dim}.")
        if self.target.x.device != x.device or self.target.x.dtype != x.dtype:
            self.target = self.target.to(device=x.device, dtype=x.dtype)
            self.target_masses = self.target_masses.to(device=x.device, dtype=x.dtype)
            self._target_cache = None
        self._prepare(x)
        masses = class_masses(data, argument="the flowed dataset")
        if state.world.distributed:
            masses = all_reduce_sum(masses.detach(), state.world)
        theta = self._directions(x)
        source_summary = self._summary(data, theta, state.world)
        fixed_target = self.target_batch is None and (
            not self.sliced or self.projections is not None or not self.resample
        )
        if fixed_target and self._target_cache is not None:
            target_summary = self._target_cache
        else:
            with torch.no_grad():
                target_summary = self._summary(self._target_batch(self.target), theta)
            if fixed_target:
                self._target_cache = target_summary
        value, target_term = mmd_from_summaries(
            self.kernel,
            self.label_cost,
            source_summary,
            masses,
            target_summary,
            self.target_masses,
            target_term=self._target_term if fixed_target else None,
        )
        if fixed_target:
            self._target_term = target_term.detach()
        if self.quantiles is not None:
            bound = 2.0 * float(masses.detach().double() @ self._class_error.to(masses.device))
            self.last_error_bound = bound if self.kernel.name == "riesz" else None
        return value


def mmd_sw_to(target: LabeledDataset, **options: Any) -> MMDSWToTarget:
    """Shorthand for :class:`MMDSWToTarget`."""
    return MMDSWToTarget(target, **options)
