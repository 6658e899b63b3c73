r"""The Optimal Transport Dataset Distance (OTDD).

Alvarez-Melis & Fusi (2020); used as the flow objective in "Dataset Dynamics via Gradient
Flows in Probability Space" (§3.3, eq. 6). With the ground cost on feature-label pairs

.. math:: c\big((x, y), (x', y')\big) = \lambda_x \|x - x'\|^2 + \lambda_y W_2^2(\alpha_y, \alpha'_{y'}),

where :math:`\alpha_y` is the distribution of the features of class :math:`y`,

.. math:: \mathrm{OTDD}^2(D, D') = \min_{\pi \in \Pi(\rho, \rho')} \int c \, d\pi, \qquad
          \mathrm{OTDD} = \sqrt{\mathrm{OTDD}^2}.

``distance_squared`` is the optimal value (exact OT), the entropic value
:math:`OT_\varepsilon`, or the debiased Sinkhorn divergence; ``distance`` is its square root.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..costs.ground import DenseCost, OTDDCost
from ..costs.linalg import safe_sqrt
from ..data.dataset import ClassStats, LabeledDataset, json_name
from ..data.sharding import gather_dataset, sharded_class_stats
from ..distributed.comm import World, all_reduce_sum, gather_rows, get_world, mark_replicated
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..labels.costs import LabelCost, get_label_cost
from ..solvers.api import DEFAULT_RELATIVE_REG, METHODS, choose_backend, relative_reg, solve
from ..solvers.result import OTResult
from ..solvers.sharded import sharded_sinkhorn

__all__ = ["otdd", "OTDDResult", "DEFAULT_INNER", "DEFAULT_OUTER"]

#: The label cost and outer solver :func:`otdd` uses by default (flow functionals read them from here).
DEFAULT_INNER = "gaussian"
DEFAULT_OUTER = "sinkhorn"


@dataclass(frozen=True)
class OTDDResult:
    """Result of :func:`otdd`.

    Attributes:
        distance_squared: 0-d tensor, the OT value with the OTDD ground cost (differentiable), clamped at 0.
            The debiased Sinkhorn divergence is non-negative in exact arithmetic for the squared-Euclidean
            part of the cost, but its value near identical datasets is a difference of nearly equal terms and
            can come out around ``-1e-5`` relative in float32 (and a label cost that is not of negative type
            can make it genuinely negative): the raw, signed value is ``ot.value``.
        distance: 0-d tensor, its square root (the paper's OTDD); the gradient at 0 is 0.
        label_distances: ``(C1, C2)`` squared W2 between source and target classes.
        source_classes, target_classes: the class names, in the order of ``label_distances``.
        ot: the outer :class:`~datasetflow.solvers.result.OTResult` (plan or potentials,
            iterations, convergence, marginal error).
        self_label_distances: for debiased Sinkhorn, the source-source and target-target
            label distance matrices used by the self-transport terms.
        config: the settings that produced the result (inner, outer, reg, weights, ...).
    """

    distance_squared: torch.Tensor
    distance: torch.Tensor
    label_distances: torch.Tensor
    source_classes: tuple[Hashable, ...]
    target_classes: tuple[Hashable, ...]
    ot: OTResult
    self_label_distances: tuple[torch.Tensor, torch.Tensor] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def plan(self) -> torch.Tensor | None:
        """The ``(n, m)`` outer coupling (None on the chunked backend)."""
        return self.ot.plan

    @property
    def potentials(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The outer dual potentials ``(f, g)``."""
        return self.ot.potentials

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (no plan)."""

        return {
            "distance": float(self.distance.detach()),
            "distance_squared": float(self.distance_squared.detach()),
            "label_distances": self.label_distances.detach().cpu().double().tolist(),
            "source_classes": [json_name(c) for c in self.source_classes],
            "target_classes": [json_name(c) for c in self.target_classes],
            "solver": self.ot.diagnostics(),
            "config": dict(self.config),
        }


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"{name} must be a finite non-negative float, got {value!r}.")
    return float(value)


def otdd(
    source: LabeledDataset,
    target: LabeledDataset,
    *,
    inner: str | LabelCost = DEFAULT_INNER,
    outer: str = DEFAULT_OUTER,
    reg: float | None = None,
    debiased: bool = True,
    feature_weight: float = 1.0,
    label_weight: float = 1.0,
    source_stats: ClassStats | None = None,
    target_stats: ClassStats | None = None,
    relative_reg_fraction: float = DEFAULT_RELATIVE_REG,
    max_iter: int | None = None,
    tol: float | None = None,
    grad: str = "envelope",
    backend: str = "auto",
    eps_scaling: float | str | None = "auto",
    target_self: tuple[torch.Tensor, torch.Tensor] | None = None,
    target_summary: Any = None,
    potentials_init: tuple[torch.Tensor, torch.Tensor] | None = None,
    world: World | None = None,
    value_tol: float | str | None = "auto",
    rank: int | None = None,
    batch_size: int | None = None,
    n_batches: int | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    disjoint: bool = False,
) -> OTDDResult:
    r"""Optimal Transport Dataset Distance between two labeled datasets.

    Args:
        source: :class:`LabeledDataset` with ``n`` samples in ``d`` dimensions and ``C1`` classes.
        target: :class:`LabeledDataset` with ``m`` samples in the same ``d`` and ``C2`` classes
            (label sets may differ).
        inner: the label cost, a :class:`~datasetflow.labels.costs.LabelCost` or its name:
            ``"gaussian"`` (Bures closed form, default; alias ``"bures"``), ``"exact"`` (network
            simplex between class clouds), ``"sinkhorn"`` (entropic, debiased) or ``"sliced"``
            (:math:`\mathrm{SW}_2^2` between class clouds).
        outer: ``"sinkhorn"`` (default), ``"exact"``, ``"lowrank"`` or ``"minibatch"``. The last two never
            form the ``n x m`` cost (for 10^5 points per side):

            * ``"lowrank"`` (Scetbon, Cuturi & Peyré 2021) minimises over couplings of rank ``rank``
              (default four per class) on the exact factorisation ``C = A B^T`` of the OTDD cost
              (``d + 2 + C2`` columns); its value is an **upper bound** of the exact OTDD² (every rank-r
              coupling is feasible), with a bias that grows as the rank falls (large when within-class
              matchings matter, see ``docs/otdd.md``). No ``reg``.
            * ``"minibatch"`` (Fatras et al. 2020) is the mean over ``n_batches`` pairs of class-stratified
              minibatches of ``batch_size`` points of exact OT (or, with ``reg``, entropic OT, absolute);
              ``result.ot.stderr`` is its standard error. Its expectation is above OTDD² and its
              **self-distance is not 0** (equal to OTDD² only at ``batch_size = n = m``). Label
              distances are always those of the full datasets.

            ``debiased`` applies to ``"sinkhorn"`` only.
        reg: absolute entropic regularisation of the outer problem. Default (None):
            ``relative_reg_fraction * mean cost`` where the mean cost is
            :math:`\sum_{ij} a_i b_j C_{ij}`; an absolute 0.1 would be nearly unregularised for
            image data whose squared distances reach the thousands.
        debiased: for ``outer="sinkhorn"``, return the Sinkhorn divergence
            :math:`OT_\varepsilon(\rho,\rho') - \tfrac12 OT_\varepsilon(\rho,\rho)
            - \tfrac12 OT_\varepsilon(\rho',\rho')`,
            which is 0 for identical datasets (default True).
        feature_weight, label_weight: :math:`\lambda_x, \lambda_y \ge 0` in the ground cost.
        source_stats, target_stats: optional :class:`ClassStats` used instead of the
            statistics of the samples (e.g. means/covariances that are flow parameters);
            gradients flow into them. Only for label costs that use statistics (Gaussian).
        relative_reg_fraction: the fraction used for the default ``reg`` (0.05).
        max_iter, tol: outer solver limits (defaults of :func:`~datasetflow.solvers.api.solve`).
        grad: ``"envelope"`` (default), ``"autodiff"`` or ``"detach"``.
        backend: ``"auto"``, ``"dense"`` or ``"chunked"`` (Sinkhorn only).
        target_self: for a debiased Sinkhorn outer problem with an explicit ``reg``, the target's
            ``(label_distances among its classes, OT_eps(target, target))`` from an earlier call
            (``result.self_label_distances[1]``, ``result.ot.self_values[1]``): flows towards a
            fixed target reuse them instead of recomputing them at every step.
        target_summary: the target's ``label_cost.summarize(target)`` from an earlier call (flows
            towards a fixed target summarise it once); ignored when ``target_stats`` is given.
        potentials_init: warm start ``(f, g)`` of the outer Sinkhorn problem (e.g. the previous
            step's ``result.potentials`` in a flow).
        eps_scaling: Sinkhorn epsilon-annealing factor, None, or ``"auto"`` (default: anneal by 0.5
            only when ``reg`` is below 0.5 % of the cost scale; Anderson acceleration does better above).
        world: the ranks ``source`` is sharded over (:class:`~datasetflow.distributed.World`; default:
            single-process). With several ranks, ``source`` is this rank's shard (global weights, every
            class listed, :func:`~datasetflow.data.sharding.shard`) and ``target`` the same on every rank;
            the outer problem is solved by row-sharded Sinkhorn
            (:func:`~datasetflow.solvers.sharded.sharded_sinkhorn`), the label distances come from the
            all-reduced class statistics (:func:`~datasetflow.data.sharding.sharded_class_stats`, so
            ``inner`` must be a statistics-based label cost, the Gaussian one), and the result is the OTDD of
            all shards together, the same on every rank, differentiable in this rank's features
            (``potentials``: this rank's ``f`` rows and the whole ``g``). ``outer="sinkhorn"`` only.
        value_tol: Sinkhorn's value-based stop for annealed (small-``reg``) solves, see
            :func:`~datasetflow.solvers.sinkhorn.sinkhorn`; None iterates until ``tol`` or the precision floor.
        rank: ``outer="lowrank"``: the rank (see :func:`~datasetflow.solvers.api.solve`).
        batch_size, n_batches, seed, generator, disjoint: ``outer="minibatch"`` (``seed`` also seeds the
            low-rank initial factors); see :func:`~datasetflow.solvers.minibatch.minibatch_ot`.

    Returns:
        :class:`OTDDResult`; ``distance_squared`` is differentiable with respect to
        ``source.x`` (through both the feature and the label term) and to the tensors of
        ``source_stats`` / ``target_stats``.

    Raises:
        ShapeMismatchError: feature dimensions differ.
        InvalidArgumentError: unknown ``inner`` / ``outer``, negative ``reg`` or weights.
    """
    for label, ds in (("source", source), ("target", target)):
        if not isinstance(ds, LabeledDataset):
            raise InvalidArgumentError(f"{label} must be a LabeledDataset, got {type(ds).__name__}.")
    if source.dim != target.dim:
        raise ShapeMismatchError(
            f"source features have shape {tuple(source.x.shape)} and target features {tuple(target.x.shape)}: "
            f"the feature dimensions {source.dim} and {target.dim} differ (resize or project one of them)."
        )
    if outer not in METHODS:
        raise InvalidArgumentError(f"outer must be one of {METHODS}, got {outer!r}.")
    if reg is not None and (isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0):
        raise InvalidArgumentError(f"reg must be a positive float or None (relative default), got {reg!r}.")
    if outer in ("exact", "lowrank") and reg is not None:
        raise InvalidArgumentError(f"outer={outer!r} takes no reg (got reg={reg!r}); use outer='sinkhorn'.")
    feature_weight = _check_weight("feature_weight", feature_weight)
    label_weight = _check_weight("label_weight", label_weight)
    label_cost = get_label_cost(inner)
    if target.x.device != source.x.device or target.x.dtype != source.x.dtype:
        target = target.to(device=source.x.device, dtype=source.x.dtype)
    world = World() if world is None else get_world(world)
    split_world = None
    if world.distributed and outer in ("lowrank", "minibatch"):
        if source_stats is not None:
            raise InvalidArgumentError(
                f"outer={outer!r} on sharded particles gathers the source and cannot take this rank's source_stats; "
                "use outer='sinkhorn' (row-sharded) or joint dynamics without sharding."
            )
        # the all-gathered source (this rank's rows keep their graph); the minibatch draws and the low-rank start
        # come from the same seed or generator on every rank. Low-rank: the same problem solved on every rank
        # (correct, not split). Minibatch: rank r solves the pairs k % size == r and the values are all-reduced;
        # the gathered features are marked replicated, so the gradients of every rank's pairs (and of the label
        # matrix) are summed over the ranks before reaching each rank's own rows (docs/distributed.md)
        source = gather_dataset(source, world)
        if outer == "minibatch":
            source = source.with_features(mark_replicated(source.x, world))
            split_world = world
        world = World()
    if world.distributed:
        return _sharded_otdd(
            source,
            target,
            world,
            label_cost,
            reg=reg,
            debiased=debiased,
            feature_weight=feature_weight,
            label_weight=label_weight,
            stats_given=source_stats is not None or target_stats is not None,
            relative_reg_fraction=relative_reg_fraction,
            solver={"max_iter": max_iter or 1000, "tol": 1e-5 if tol is None else tol, "grad": grad},
            backend=backend,
            eps_scaling=eps_scaling,
            target_self=target_self,
            target_summary=target_summary,
            potentials_init=potentials_init,
            outer=outer,
        )

    same = source is target and source_stats is target_stats
    label_matrix = self_matrices = shared = None
    weights_of_cost = {"feature_weight": feature_weight, "label_weight": label_weight}
    if label_weight > 0:
        first = label_cost.summarize(source, stats=source_stats)
        fresh_second = None
        if same:
            second = first
        elif target_stats is not None or target_summary is None:
            second = fresh_second = label_cost.summarize(target, stats=target_stats)
        else:
            second = target_summary
        if (
            outer == "sinkhorn"
            and not same
            and source_stats is None
            and target_stats is None
            and choose_backend(backend, (len(source), len(target)), source.x.dtype) == "dense"
        ):
            shared = _shared_dense_costs(
                label_cost, source, target, first, fresh_second, debiased, target_self, weights_of_cost
            )
        if shared is not None:
            label_matrix, self_matrices = shared[0], shared[1]
        else:
            # one symmetric computation with an exactly zero diagonal when both sides are the same
            label_matrix = label_cost.pairwise(first) if same else label_cost.pairwise(first, second)
        if shared is None and outer == "sinkhorn" and debiased:
            if target_self is not None:
                target_labels = target_self[0]
            elif same:
                target_labels = label_matrix
            else:
                target_labels = label_cost.pairwise(second)
            self_matrices = (label_matrix if same else label_cost.pairwise(first), target_labels)
    cost = OTDDCost(
        source.x, target.x, source.y, target.y, label_matrix, self_label_matrices=self_matrices, **weights_of_cost
    )
    a, b = source.weights, target.weights
    if target_self is not None and (outer != "sinkhorn" or not debiased or reg is None):
        raise InvalidArgumentError("target_self needs outer='sinkhorn', debiased=True and an explicit reg.")
    eps = reg if outer == "minibatch" else None
    if outer == "sinkhorn":
        eps = reg if reg is not None else relative_reg(None, cost.weighted_mean(a, b), relative_reg_fraction)
    if shared is not None:  # the same cost, its matrices already formed from the shared class-pair Gram
        cost = shared[2]
    options: dict[str, Any] = {}
    if outer == "lowrank":
        options = {"rank": rank, "seed": seed}
    elif outer == "minibatch":
        options = {
            "batch_size": batch_size,
            "n_batches": n_batches,
            "seed": seed,
            "generator": generator,
            "disjoint": disjoint,
        }
        if split_world is not None:
            options["world"] = split_world
    result = solve(
        cost,
        a,
        b,
        reg=eps,
        method=outer,
        max_iter=max_iter,
        tol=tol,
        grad=grad,
        debiased=debiased and outer == "sinkhorn",
        backend=backend,
        eps_scaling=eps_scaling,
        known_self_values=None if target_self is None else (None, target_self[1]),
        potentials_init=potentials_init if outer == "sinkhorn" else None,
        value_tol=value_tol,
        **options,
    )
    weights = (feature_weight, label_weight)
    if label_matrix is None:
        label_matrix = label_cost.between(source, target, source_stats=source_stats, target_stats=target_stats)
    return _result(
        source,
        target,
        result,
        label_cost,
        label_matrix,
        self_matrices,
        outer,
        eps,
        reg,
        debiased,
        weights,
        None,
        options,
    )


def _shared_dense_costs(label_cost, source, target, first, second, debiased, target_self, weights):
    """``(label_matrix, self_matrices, DenseCost)`` of the default dense Sinkhorn path when ``label_cost`` forms
    the label matrices and the dense ground costs together (:meth:`LabelCost.dense_ground_cost`), else None.

    With ``debiased`` the cost carries the two self-costs (the target's an :class:`OTDDCost` on the known label
    matrix when ``target_self`` gives its value: never evaluated)."""
    cross = label_cost.dense_ground_cost(source, target, first, second, **weights)
    if cross is None:
        return None
    label_matrix, matrix = cross
    if not debiased:
        return label_matrix, None, DenseCost(matrix)
    source_labels, source_matrix = label_cost.dense_ground_cost(source, source, first, first, **weights)
    if target_self is not None:
        target_labels = target_self[0]
        target_cost = OTDDCost(target.x, target.x, target.y, target.y, target_labels, **weights)
    else:
        target_labels, target_matrix = label_cost.dense_ground_cost(target, target, second, second, **weights)
        target_cost = DenseCost(target_matrix)
    costs = (DenseCost(source_matrix), target_cost)
    return label_matrix, (source_labels, target_labels), DenseCost(matrix, self_costs=costs)


def _result(
    source,
    target,
    result,
    label_cost,
    label_matrix,
    self_matrices,
    outer,
    eps,
    reg,
    debiased,
    weights,
    n_source=None,
    options=None,
):
    """The :class:`OTDDResult` of a solved outer problem (``weights``: the feature and label weights;
    ``options``: the low-rank or minibatch solver's settings, recorded in ``config``)."""
    feature_weight, label_weight = weights
    # the debiased divergence can come out slightly below 0 (round-off near identical datasets): report 0,
    # keep the raw value (and its gradient) in result.ot.value
    distance_squared = result.value.clamp_min(0)
    config = {
        "inner": label_cost.name,
        "label_cost": repr(label_cost),
        "outer": outer,
        "reg": eps,
        "reg_is_default": reg is None and outer == "sinkhorn",
        "debiased": bool(debiased and outer == "sinkhorn"),
        "feature_weight": feature_weight,
        "label_weight": label_weight,
        "n_source": len(source) if n_source is None else n_source,
        "n_target": len(target),
        "dim": source.dim,
        **{k: v for k, v in (options or {}).items() if k not in ("generator", "world")},
    }
    return OTDDResult(
        distance_squared=distance_squared,
        distance=safe_sqrt(distance_squared),
        label_distances=label_matrix,
        source_classes=source.classes,
        target_classes=target.classes,
        ot=result,
        self_label_distances=self_matrices,
        config=config,
    )


def _sharded_otdd(
    source: LabeledDataset,
    target: LabeledDataset,
    world: World,
    label_cost: LabelCost,
    *,
    reg,
    debiased,
    feature_weight,
    label_weight,
    stats_given,
    relative_reg_fraction,
    solver,
    backend,
    eps_scaling,
    target_self,
    target_summary,
    potentials_init,
    outer,
) -> OTDDResult:
    """:func:`otdd` with ``source`` sharded over ``world`` (see its ``world`` argument)."""
    if outer != "sinkhorn":
        raise InvalidArgumentError(
            f"a sharded OTDD needs outer='sinkhorn' (row-sharded Sinkhorn), got outer={outer!r}: "
            + "the network simplex does not split over ranks."
        )
    if stats_given:
        raise InvalidArgumentError(
            "source_stats/target_stats are not supported with sharded particles (the statistics are all-reduced)."
        )
    if label_weight > 0 and not label_cost.uses_stats:
        raise InvalidArgumentError(
            f"a sharded OTDD computes label distances from all-reduced class statistics, so inner must be a "
            f"statistics-based label cost ('gaussian'); got {label_cost!r}."
        )
    debiased = bool(debiased)
    label_matrix = source_labels = target_labels = None
    if label_cost.uses_stats:
        # the class statistics of all shards together, then label distances that are the same on every rank
        first = label_cost.summarize(stats=sharded_class_stats(source, world, unbiased=label_cost.unbiased))
        second = target_summary if target_summary is not None else label_cost.summarize(target)
        label_matrix = label_cost.pairwise(first, second)
        if debiased and label_weight > 0:
            source_labels = label_cost.pairwise(first)
            target_labels = target_self[0] if target_self is not None else label_cost.pairwise(second)
    options = {"feature_weight": feature_weight, "label_weight": label_weight}

    def replicated(matrix):  # consumed by this rank's rows only: its gradient is summed over the ranks
        return None if matrix is None else mark_replicated(matrix, world)

    used = label_matrix if label_weight > 0 else None
    cost = OTDDCost(source.x, target.x, source.y, target.y, replicated(used), **options)
    a, b = source.weights, target.weights
    self_costs = all_weights = None
    if debiased:
        x_all, _ = gather_rows(source.x.detach(), world)
        y_all, _ = gather_rows(source.y, world)
        all_weights, _ = gather_rows(a.detach(), world)
        # rows of the symmetric self-cost against every source point (constants): the gradient of
        # OT(rho, rho) at x_k is twice its row part, so the rows enter as x + (x - x.detach()) (the same
        # value, twice the feature gradient); the label matrix keeps its single gradient
        rows = source.x + (source.x - source.x.detach())
        self_costs = (
            OTDDCost(rows, x_all, source.y, y_all, replicated(source_labels), **options),
            OTDDCost(target.x, target.x, target.y, target.y, target_labels, **options),
        )
    if reg is None:
        mean = torch.tensor([cost.weighted_mean(a.detach(), b.detach())], dtype=torch.float64, device=a.device)
        eps = relative_reg(None, float(all_reduce_sum(mean, world)), relative_reg_fraction)
    else:
        eps = reg
    result = sharded_sinkhorn(
        cost,
        a,
        b,
        eps,
        world,
        **solver,
        eps_scaling=eps_scaling,
        backend=choose_backend(backend, cost.shape, cost.dtype),
        debiased=debiased,
        self_costs=self_costs,
        all_weights=all_weights,
        potentials_init=potentials_init,
        known_self_values=None if target_self is None else (None, target_self[1]),
    )
    if label_matrix is None:  # label_weight = 0 with a cost that compares class samples: no label distances
        label_matrix = torch.full(
            (source.num_classes, target.num_classes), float("nan"), dtype=source.x.dtype, device=source.x.device
        )
    self_matrices = (source_labels, target_labels) if debiased and label_weight > 0 else None
    total = int(all_reduce_sum(torch.tensor([float(len(source))], dtype=torch.float64, device=a.device), world))
    weights = (feature_weight, label_weight)
    return _result(
        source,
        target,
        result,
        label_cost,
        label_matrix,
        self_matrices,
        outer,
        eps,
        reg,
        debiased,
        weights,
        n_source=total,
    )
