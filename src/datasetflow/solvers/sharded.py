r"""Row-sharded log-domain Sinkhorn: the rows (source particles) of an entropic OT problem spread over ranks.

Every rank holds the rows ``i`` of its shard of the source and all the columns ``j`` (the target, replicated).
One sweep of the alternating updates of :mod:`~datasetflow.solvers.sinkhorn` becomes

.. math::
    f_i = -\varepsilon \log \sum_j b_j e^{(g_j - C_{ij})/\varepsilon} \quad (i \text{ on this rank, local}),

    \ell_j^{(r)} = \log \sum_{i \in \text{rank } r} a_i e^{(f_i - C_{ij})/\varepsilon}, \qquad
    M_j = \max_r \ell_j^{(r)}, \qquad
    g_j = -\varepsilon \Big(M_j + \log \sum_r e^{\ell_j^{(r)} - M_j}\Big),

i.e. the column log-sum-exp is an all-reduce MAX of the per-rank partial log-sum-exps followed by an
all-reduce SUM of the shifted exponentials (``2 m`` numbers per sweep and rank, independent of ``n``). The
column potentials ``g`` are then the same on every rank, and so are every decision the solver takes
(marginal error, Anderson extrapolation on ``g``, stopping): the iterates are those of the one-process solver
(:func:`~datasetflow.solvers.sinkhorn.sinkhorn`, same annealing schedule, Anderson memory and stopping rule)
up to the rounding of the reductions.

The dual value :math:`\sum_i a_i f_i + \sum_j b_j g_j` is all-reduced (its first sum). Its envelope gradient
with respect to the cost is the plan, :math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}`, whose row
``i`` needs only ``f_i`` and ``g``: the gradient of a particle is computed on its own rank, with no traffic.
The returned value is the same on every rank and carries the gradient of this rank's rows (the convention of
:func:`~datasetflow.distributed.all_reduce_sum`: each rank back-propagates the replicated objective and keeps
the gradient of its own shard; replicated inputs of the cost, such as a label-distance matrix, must go
through :func:`~datasetflow.distributed.mark_replicated`).

Debiasing. The source self-transport :math:`OT_\varepsilon(a, a)` has the sharded source on *both* sides. It is
solved by the symmetric averaged iteration on this rank's rows against all columns (the source features
gathered once per call, :math:`n d` numbers), the potential being all-gathered after every sweep (``n`` numbers).
For a symmetric cost the column half of its gradient equals the row half; the caller builds the
rows-against-all cost so that its row gradient counts both (see :func:`~datasetflow.distances.otdd.otdd`).
The target self-transport is replicated: every rank solves the same small problem (or reuses a known value).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..costs.ground import CostOperator
from ..distributed.comm import World, all_reduce_max, all_reduce_sum, gather_rows
from ..errors import ConvergenceWarning, InvalidArgumentError
from .envelope import attach_envelope
from .result import OTResult
from .sinkhorn import (
    LARGE_REG_RATIO,
    VALUE_PRECISION,
    _entropic_ot,
    _Kernel,
    _schedule,
    _solve_pair,
    _solve_symmetric,
    _worst_status,
    check_reg,
    precision_floor,
)

__all__ = ["sharded_sinkhorn", "global_logsumexp", "row_offset"]


def _plain_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    with torch.no_grad():
        return all_reduce_sum(tensor.detach(), world)


def global_logsumexp(partial: torch.Tensor, world: World) -> torch.Tensor:
    r"""Elementwise :math:`\log \sum_r e^{\ell^{(r)}}` of every rank's ``partial`` log-sum-exps (same shape everywhere).

    An all-reduce MAX, then an all-reduce SUM of the exponentials shifted by the maximum (no overflow).
    Not differentiable (solver iterations only).
    """
    if not world.distributed:
        return partial
    top = all_reduce_max(partial, world)
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return safe + _plain_sum(torch.exp(partial - safe), world).log()


def row_offset(rows: int, world: World, device: torch.device | str | None = None) -> int:
    """The first global row of this rank when every rank holds ``rows`` rows, stacked in rank order
    (``device``: where the collective runs, the data's device: NCCL needs CUDA tensors)."""
    if not world.distributed:
        return 0
    counts = torch.zeros(world.size, dtype=torch.float64, device=device)
    counts[world.rank] = rows
    return int(_plain_sum(counts, world)[: world.rank].sum())


class _RowShardedKernel(_Kernel):
    """The soft-min sweeps of :class:`~datasetflow.solvers.sinkhorn._Kernel` on this rank's rows, with the column
    log-sum-exp and the cost's extremes reduced over the ranks."""

    def __init__(self, cost, a, b, dense, dtype, world: World) -> None:
        super().__init__(cost, a, b, dense, dtype)
        self.world = world

    def sweep(self, g: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        shifted_b = g / eps + self.log_b
        f_parts, col_lse = [], None
        for start, stop, block in self._blocks():
            f_block = -eps * self._soft_lse(shifted_b, block, eps, dim=1)
            f_parts.append(f_block)
            shifted_a = f_block / eps + self.log_a[start:stop]
            part = self._soft_lse(shifted_a[:, None], block, eps, dim=0)
            col_lse = part if col_lse is None else torch.logaddexp(col_lse, part)
        return torch.cat(f_parts), -eps * global_logsumexp(col_lse, self.world)

    def plan_stats(self, f, g, eps) -> tuple[torch.Tensor | None, torch.Tensor, float]:  # noqa: D102
        """This rank's plan rows (dense backend), the global ``<P, C>`` and the global L1 marginal error."""
        shifted_a, shifted_b = f / eps + self.log_a, g / eps + self.log_b
        linear = torch.zeros((), dtype=self.dtype, device=f.device)
        rows, cols = [], torch.zeros_like(shifted_b)
        plan = None if self.dense is None else torch.empty_like(self.dense)
        for start, stop, raw in self._blocks():
            block = torch.exp(torch.sub(shifted_a[start:stop, None] + shifted_b, raw, alpha=1.0 / eps))
            linear = linear + torch.dot(block.flatten(), raw.flatten())
            rows.append(block.sum(1))
            cols = cols + block.sum(0)
            if plan is not None:
                plan[start:stop] = block
        row_error = (torch.cat(rows) - self.log_a.exp()).abs().sum()
        totals = _plain_sum(torch.stack([linear, row_error]), self.world)
        cols = _plain_sum(cols, self.world)
        return plan, totals[0], float(totals[1] + (cols - self.log_b.exp()).abs().sum())

    def extremes(self) -> tuple[float, float]:  # noqa: D102
        low, high = super().extremes()
        both = torch.tensor([-low, high], dtype=torch.float64, device=self.log_a.device)
        both = all_reduce_max(both, self.world)
        return -float(both[0]), float(both[1])


class _SelfRowsKernel(_RowShardedKernel):
    """This rank's rows of a symmetric (self-transport) problem against all its columns: ``log_a`` holds this
    rank's row weights, ``log_b`` all the column weights; :meth:`symmetric` returns the whole potential."""

    def symmetric(self, f: torch.Tensor, eps: float) -> torch.Tensor:  # noqa: D102
        shifted = f / eps + self.log_b
        local = torch.cat([-eps * self._soft_lse(shifted, block, eps, dim=1) for _, _, block in self._blocks()])
        return gather_rows(local[:, None], self.world)[0][:, 0]


def _check_options(grad: str, backend: str) -> None:
    if grad not in ("envelope", "detach"):
        raise InvalidArgumentError(
            f"sharded Sinkhorn takes grad='envelope' or 'detach' (autodiff through iterations that span ranks is not "
            f"supported), got {grad!r}."
        )
    if backend not in ("dense", "chunked"):
        raise InvalidArgumentError(f"backend must be 'dense' or 'chunked' here, got {backend!r}.")


def _sharded_entropic(
    cost: CostOperator,
    a_rows: torch.Tensor,
    b_cols: torch.Tensor,
    eps: float,
    world: World,
    *,
    symmetric: bool,
    init: torch.Tensor | None,
    offset: int,
    max_iter: int,
    tol: float,
    eps_scaling: Any,
    grad: str,
    backend: str,
    scale: float,
    anderson: int,
) -> OTResult:
    """One entropic problem on this rank's rows (``symmetric``: a self-transport problem whose columns are all the
    rows of every rank, ``offset`` the first global row of this rank). Mirrors ``sinkhorn._entropic_ot``."""
    use_dense = backend == "dense"
    dense_cost = cost.dense() if use_dense else None
    kernel_type = _SelfRowsKernel if symmetric else _RowShardedKernel
    probe = kernel_type(cost, a_rows, b_cols, None if dense_cost is None else dense_cost.detach(), None, world)
    low, high = probe.extremes()
    spread = max(high - low, 0.0)
    if spread <= LARGE_REG_RATIO * eps:
        raise InvalidArgumentError(
            f"reg={eps:.4g} is more than {1 / LARGE_REG_RATIO:g} times the cost's spread {spread:.4g}: the sharded "
            "solver has no large-reg expansion; use a smaller reg (the coupling is then the independent one anyway)."
        )
    working = torch.finfo(cost.dtype)
    wide = eps * working.eps > VALUE_PRECISION * max(spread, working.tiny)
    compute_dtype = torch.float64 if wide else cost.dtype
    floor = precision_floor(max(abs(low), abs(high)), eps, compute_dtype)
    schedule = _schedule(eps, max(spread, eps), eps_scaling, scale)
    a_k, b_k = a_rows.detach().to(compute_dtype), b_cols.detach().to(compute_dtype)
    with torch.no_grad():
        kernel = kernel_type(
            cost,
            a_rows.detach(),
            b_cols.detach(),
            None if dense_cost is None else dense_cost.detach(),
            compute_dtype,
            world,
        )
        if symmetric:
            f_all, g_all, n_iter, status, errors = _solve_symmetric(
                kernel, b_k, eps, schedule, max_iter, tol, init, anderson, floor
            )
            rows = slice(offset, offset + a_rows.shape[0])
            f, g = f_all[rows], g_all
            dual = ((f_all + g_all) * b_k).sum()  # replicated: both potentials are whole on every rank
        else:
            f, g, n_iter, status, errors = _solve_pair(
                kernel, a_k, b_k, eps, schedule, max_iter, tol, None if init is None else (None, init), anderson, floor
            )
            dual = _plain_sum((f * a_k).sum(), world) + (g * b_k).sum()
        plan, linear, error = kernel.plan_stats(f, g, eps)
        plan = None if plan is None else plan.to(cost.dtype)
    value = dual.to(cost.dtype)
    if grad == "envelope":
        fk, gk = f.detach(), g.detach()
        value = attach_envelope(
            value,
            cost,
            a_rows,
            b_cols,
            fk.to(cost.dtype),
            gk.to(cost.dtype),
            plan=plan,
            dense_cost=dense_cost,
            plan_block=None if use_dense else (lambda s, e, blk: kernel.plan_block(s, e, blk, fk, gk, eps)),
        )
    converged = status == "converged"
    last = errors[-1] if errors else float("nan")
    if not converged:
        warnings.warn(
            f"sharded Sinkhorn stopped ({status}) after {n_iter} sweeps with marginal error {last:.3g} > tol={tol:g} "
            f"(reg={eps:.4g}, precision floor {floor:.1g}); use float64, a larger reg or max_iter, or a looser tol.",
            ConvergenceWarning,
            stacklevel=4,
        )
    return OTResult(
        value=value,
        value_linear=linear.detach().to(cost.dtype),
        plan=plan,
        potentials=(f.detach().to(cost.dtype), g.detach().to(cost.dtype)),
        n_iter=n_iter,
        converged=converged,
        marginal_error=error,
        reg=eps,
        method="sinkhorn",
        backend=backend,
        errors=tuple(errors),
        config={
            "status": status,
            "precision_floor": floor,
            "compute_dtype": str(compute_dtype).replace("torch.", ""),
            "world_size": world.size,
        },
    )


def sharded_sinkhorn(
    cost: CostOperator,
    a: torch.Tensor,
    b: torch.Tensor,
    reg: float,
    world: World,
    *,
    max_iter: int = 1000,
    tol: float = 1e-5,
    eps_scaling: float | str | None = "auto",
    grad: str = "envelope",
    backend: str = "dense",
    debiased: bool = False,
    self_costs: tuple[CostOperator, CostOperator] | None = None,
    all_weights: torch.Tensor | None = None,
    potentials_init: tuple[torch.Tensor | None, torch.Tensor] | None = None,
    known_self_values: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    anderson: int = 5,
) -> OTResult:
    r"""Entropic OT (or the debiased Sinkhorn divergence) with the rows sharded over the ranks of ``world``.

    The same problem, defaults and result as :func:`~datasetflow.solvers.sinkhorn.sinkhorn` with ``cost`` the
    ``(n, m)`` matrix whose rows are stacked in rank order; see the module docstring for the collectives.

    Args:
        cost: this rank's rows, ``(n_r, m)`` (every column on every rank).
        a: ``(n_r,)`` this rank's row weights (global: the row weights of all ranks sum to the mass of ``b``).
        b: ``(m,)`` column weights, the same on every rank.
        reg: :math:`\varepsilon > 0`, the same on every rank.
        world: the ranks (:class:`~datasetflow.distributed.World`).
        max_iter, tol, eps_scaling, anderson: as in :func:`~datasetflow.solvers.sinkhorn.sinkhorn`.
        grad: ``"envelope"`` (default) or ``"detach"``.
        backend: ``"dense"`` (this rank's ``(n_r, m)`` block cached) or ``"chunked"``.
        debiased: return :math:`S_\varepsilon = OT_\varepsilon(a, b) - \tfrac12 OT_\varepsilon(a, a)
            - \tfrac12 OT_\varepsilon(b, b)`; needs ``self_costs`` and ``all_weights``.
        self_costs: ``(rows, target)``: this rank's rows of the source self-cost against *all* source points
            ``(n_r, n)``, whose row gradient must count the symmetric column half too, and the target's
            self-cost ``(m, m)`` (replicated; not solved when its value is known).
        all_weights: ``(n,)`` the row weights of every rank in rank order (the self problem's columns).
        potentials_init: warm start ``(f, g)``; only the replicated ``g`` is used.
        known_self_values: ``(None, OT_eps(b, b))`` when the target's self value is known (the source's is
            always solved: it moves).

    Returns:
        An :class:`~datasetflow.solvers.result.OTResult` whose ``value`` is the same on every rank (with the
        gradient of this rank's rows), ``potentials`` this rank's ``f`` rows and the replicated ``g``, and
        ``plan`` this rank's rows (dense backend) or None.
    """
    _check_options(grad, backend)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise InvalidArgumentError(f"max_iter must be a positive int, got {max_iter!r}.")
    if not tol > 0:
        raise InvalidArgumentError(f"tol must be positive, got {tol!r}.")
    mean = torch.tensor([cost.weighted_mean(a.detach(), b.detach())], dtype=torch.float64, device=a.device)
    scale = float(_plain_sum(mean, world))
    eps = check_reg(reg, scale, cost.dtype)
    offset = row_offset(a.shape[0], world, a.device)
    options = dict(
        max_iter=max_iter,
        tol=tol,
        eps_scaling=eps_scaling,
        grad=grad,
        backend=backend,
        scale=max(scale, eps),
        anderson=anderson,
    )
    init = None if potentials_init is None else potentials_init[1]
    cross = _sharded_entropic(cost, a, b, eps, world, symmetric=False, init=init, offset=offset, **options)
    config = {"reg": eps, "max_iter": max_iter, "tol": tol, "eps_scaling": eps_scaling, "grad": grad}
    config.update({"backend": backend, "debiased": debiased, "anderson": anderson, "world_size": world.size})
    if not debiased:
        return _replace(cross, config={**cross.config, **config, "sweeps": {"cross": cross.n_iter}})
    if self_costs is None or all_weights is None:
        raise InvalidArgumentError("debiased sharded Sinkhorn needs self_costs and all_weights.")
    rows_cost, target_cost = self_costs
    f_all = gather_rows(cross.potentials[0][:, None], world)[0][:, 0]  # warm start of the source self problem
    self_a = _sharded_entropic(
        rows_cost, a, all_weights, eps, world, symmetric=True, init=f_all, offset=offset, **options
    )
    known_b = None if known_self_values is None else known_self_values[1]
    self_b = None
    if known_b is None:
        self_b = _entropic_ot(target_cost, b, b, eps, symmetric=True, init=cross.potentials[1], **options)
        known_b = self_b.value
    value_b = known_b.to(cross.value)
    solved = [res for res in (self_a, self_b) if res is not None]
    return _replace(
        cross,
        value=cross.value - 0.5 * (self_a.value + value_b),
        self_values=(self_a.value.detach(), value_b.detach()),
        converged=all(res.converged for res in (cross, *solved)),
        n_iter=cross.n_iter + sum(res.n_iter for res in solved),
        config={
            **cross.config,
            **config,
            "status": _worst_status([cross, *solved]),
            "sweeps": {"cross": cross.n_iter, "source_self": self_a.n_iter},
        },
    )


def _replace(result: OTResult, **changes) -> OTResult:
    from dataclasses import replace

    return replace(result, **changes)
