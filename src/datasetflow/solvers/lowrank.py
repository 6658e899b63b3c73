r"""Low-rank optimal transport (Scetbon, Cuturi & Peyré, ICML 2021, "Low-rank Sinkhorn factorization").

The coupling is restricted to rank ``r``:

.. math::
    LR_r(a, b) = \min_{Q, R, g} \langle C, Q\,\mathrm{diag}(1/g)\,R^\top\rangle, \qquad
    Q \in \Pi(a, g),\; R \in \Pi(b, g),\; g \in \Delta_r,

so :math:`P = Q\,\mathrm{diag}(1/g)\,R^\top` is a mixture of ``r`` product measures
:math:`Q_{:k} R_{:k}^\top / g_k`. Every such ``P`` has marginals ``a`` and ``b``, so

.. math:: LR_r(a, b) \;\ge\; OT(a, b) \quad\text{(an upper bound of exact OT; equal at } r \ge \min(n, m)
          \text{ at a global optimum)}.

**Bias.** The gap :math:`LR_r - OT \ge 0` shrinks as ``r`` grows; the problem is non-convex, so
mirror descent finds a stationary point and the gap does not vanish exactly even at full rank.
For OTDD, whose label term separates classes, a rank below the number of classes forces each
of some components to carry several classes (a product measure mixes them), and the value is
then biased up by label costs: :func:`lowrank_ot` warns. The default rank is
:func:`default_rank` (four components per class).

**Algorithm** (the paper's Alg. 3 without entropy): mirror descent in the KL geometry,

.. math::
    \xi_Q = Q \odot e^{-\gamma\, C R\,\mathrm{diag}(1/g)},\quad
    \xi_R = R \odot e^{-\gamma\, C^\top Q\,\mathrm{diag}(1/g)},\quad
    \xi_g = g \odot e^{\gamma\, \omega / g^2},\;\; \omega = \mathrm{diag}(Q^\top C R),

followed by the KL projection of :math:`(\xi_Q, \xi_R, \xi_g)` onto the constraints, computed by
alternating Bregman projections onto the two affine sets :math:`\{Q 1 = a, R 1 = b\}` and
:math:`\{Q^\top 1 = R^\top 1 = g\}` (the latter in closed form, :math:`g = (\xi_g\, Q^\top 1\, R^\top 1)^{1/3}`),
all in the log domain. The step is :math:`\gamma = \gamma_0 / \text{spread}`, the spread of the
three gradients (whose entries are averages of ``C``), so ``gamma`` is dimensionless.

A cost that factorises, :math:`C = A B^\top` with ``k`` columns (the OTDD cost, ``k = d + 2 + C2``,
:meth:`~datasetflow.costs.ground.OTDDCost.factors`), is applied as ``A (B^T R)``: one iteration
costs :math:`O((n + m)\, k\, r)` and no ``n x m`` matrix is formed. Other costs are multiplied by
row blocks. Gradients follow the envelope theorem: :math:`\partial LR / \partial C = P`, applied
through the factors as ``P B`` and ``P^T A`` (no gradient with respect to ``a`` and ``b``).
"""

from __future__ import annotations

import math
import warnings

import torch

from ..costs.ground import CostOperator, DenseCost
from ..errors import ConvergenceWarning, DatasetflowWarning, InvalidArgumentError
from .envelope import attach_envelope, attach_envelope_factored
from .result import OTResult

__all__ = ["lowrank_ot", "default_rank", "RANK_PER_CLASS"]

#: Components per class in :func:`default_rank`.
RANK_PER_CLASS = 4

#: Iteration limit of the final, tight projection onto the marginal constraints.
FINAL_PROJECTION_ITER = 100

#: Iterations before the stopping test (mirror descent leaves its random, nearly independent start slowly).
MIN_ITER = 30
#: The stopping test compares values ``WINDOW`` iterations apart (mean relative change per iteration below ``tol``).
WINDOW = 10

#: Smallest default rank (costs without classes, or with very few).
MIN_DEFAULT_RANK = 10


def default_rank(n: int, m: int, num_classes: int = 0) -> int:
    r"""``min(n, m, max(MIN_DEFAULT_RANK, RANK_PER_CLASS * num_classes))``: four components per class,
    so every class can keep its own components (a rank below the number of classes mixes classes)."""
    return max(1, min(n, m, max(MIN_DEFAULT_RANK, RANK_PER_CLASS * num_classes)))


class _Products:
    """``C @ R`` and ``C^T @ Q`` for a cost operator: through its factors, a dense matrix or row blocks."""

    def __init__(self, cost: CostOperator, dtype: torch.dtype) -> None:
        self.cost, self.dtype = cost, dtype
        with torch.no_grad():
            factors = cost.factors()
            self.factors = None if factors is None else (factors[0].detach().to(dtype), factors[1].detach().to(dtype))
            self.matrix = cost.matrix.detach().to(dtype) if isinstance(cost, DenseCost) else None

    def right(self, r: torch.Tensor) -> torch.Tensor:
        """``C @ r``, ``(n, k)``."""
        if self.factors is not None:
            return self.factors[0] @ (self.factors[1].mT @ r)
        if self.matrix is not None:
            return self.matrix @ r
        return torch.cat([self.cost.block(s, e).detach().to(self.dtype) @ r for s, e in self.cost.row_blocks()])

    def left(self, q: torch.Tensor) -> torch.Tensor:
        """``C^T @ q``, ``(m, k)``."""
        if self.factors is not None:
            return self.factors[1] @ (self.factors[0].mT @ q)
        if self.matrix is not None:
            return self.matrix.mT @ q
        out = None
        for s, e in self.cost.row_blocks():
            part = self.cost.block(s, e).detach().to(self.dtype).mT @ q[s:e]
            out = part if out is None else out + part
        return out


def _kernel(log_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(log_m - rowmax)`` and the row maxima (rows of mass 0 stay 0)."""
    top = log_m.max(1, keepdim=True).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return (log_m - top).exp(), top


def _log(m: torch.Tensor) -> torch.Tensor:
    return m.clamp_min(torch.finfo(m.dtype).tiny).log()


def _project(lq, lr, lg, log_a, log_b, *, max_iter: int, tol: float, floor: float):
    """KL projection of ``(exp lq, exp lr, exp lg)`` onto ``{Q 1 = a, R 1 = b, Q^T 1 = R^T 1 = g}`` by
    alternating Bregman projections (both sets are affine, so no Dykstra corrections are needed), as
    scalings ``Q = diag(u_1) K_Q diag(v_1)`` of the row-stabilised kernels (matrix-vector products only).
    Returns ``(lq, lr, lg, error)`` with exact column sums ``g`` and L1 row-marginal error ``error``."""
    a, b = log_a.exp(), log_b.exp()
    kq, _ = _kernel(lq)
    kr, _ = _kernel(lr)
    g = lg.exp()
    v1, v2 = torch.ones_like(g), torch.ones_like(g)
    tiny = torch.finfo(g.dtype).tiny
    error = math.inf
    for it in range(max_iter):
        u1 = a / (kq @ v1).clamp_min(tiny)
        u2 = b / (kr @ v2).clamp_min(tiny)
        s1, s2 = v1 * (kq.mT @ u1), v2 * (kr.mT @ u2)
        g = (g * s1 * s2).clamp_min(tiny).pow(1.0 / 3.0).clamp_min(math.exp(floor))
        v1, v2 = v1 * g / s1.clamp_min(tiny), v2 * g / s2.clamp_min(tiny)
        if it % 5 == 4 or it == max_iter - 1:
            error = float((u1 * (kq @ v1) - a).abs().sum() + (u2 * (kr @ v2) - b).abs().sum())
            if error < tol:
                break
    lq = _log(u1[:, None] * kq * v1[None, :])
    lr = _log(u2[:, None] * kr * v2[None, :])
    return lq, lr, _log(g), error


def _finalise(lq, lr, log_a, log_b, *, max_iter: int, tol: float):
    """Make the plan exactly feasible: ``Q 1 = a`` and ``g = Q^T 1`` exactly, then a few Sinkhorn sweeps of
    ``R`` towards ``Pi(b, g)`` and the rounding of Altschuler, Weed & Rigollet (2017, Alg. 2), which puts ``R``
    exactly in ``Pi(b, g)`` without changing its rank. Then ``P 1 = a`` and ``P^T 1 = b`` up to round-off, so
    ``<C, P>`` is the value of a feasible coupling. Returns ``(lq, lr, lg, remaining L1 error of R)``."""
    a, b = log_a.exp(), log_b.exp()
    kq, _ = _kernel(lq)
    q = kq * (a / kq.sum(1).clamp_min(torch.finfo(kq.dtype).tiny))[:, None]
    g = q.sum(0)
    kr, _ = _kernel(lr)
    tiny = torch.finfo(g.dtype).tiny
    v = torch.ones_like(g)
    for it in range(max_iter):
        u = b / (kr @ v).clamp_min(tiny)
        v = g / (kr.mT @ u).clamp_min(tiny)
        if it % 5 == 4 and float((u * (kr @ v) - b).abs().sum()) < tol:
            break
    r = u[:, None] * kr * v[None, :]
    r = r * (b / r.sum(1).clamp_min(tiny)).clamp(max=1.0)[:, None]
    deficit_rows, deficit_cols = (b - r.sum(1)).clamp_min(0), (g - r.sum(0)).clamp_min(0)
    total = deficit_cols.sum()
    if float(total) > 0:
        r = r + deficit_rows[:, None] * deficit_cols[None, :] / total
    error = float((r.sum(1) - b).abs().sum() + (r.sum(0) - g).abs().sum())
    return _log(q), _log(r), _log(g), error


def _spread(t: torch.Tensor) -> float:
    return float(t.max() - t.min())


def lowrank_ot(
    cost: CostOperator,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    rank: int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-5,
    gamma: float = 10.0,
    inner_max_iter: int = 50,
    inner_tol: float | None = None,
    seed: int = 0,
    grad: str = "envelope",
) -> OTResult:
    r"""Low-rank OT by mirror descent (see the module docstring for the problem, bias and algorithm).

    Args:
        cost: ``(n, m)`` cost operator; one that :meth:`~datasetflow.costs.ground.CostOperator.factors`
            (OTDD) is never materialised.
        a, b: marginals ``(n,)``, ``(m,)`` with equal mass.
        rank: ``r`` with ``1 <= r <= min(n, m)``; default :func:`default_rank` (four per class).
        max_iter: mirror-descent iterations (each: two products with ``C`` and one projection).
        tol: stop (after ``MIN_ITER`` iterations) when the value's mean relative change per iteration over the
            last ``WINDOW`` iterations is below ``tol``.
        gamma: dimensionless mirror-descent step :math:`\gamma_0` (divided by the gradients' spread).
        inner_max_iter, inner_tol: limits of the projection after each step (L1 marginal error, default
            ``1e-4``); the final plan is projected to ``1e-10`` (float64) or ``1e-6`` (float32).
        seed: seed of the random initial factors (a ``torch.Generator`` on the cost's device).
        grad: ``"envelope"`` (default; ``autodiff`` is the same here) or ``"detach"``.

    Returns:
        :class:`OTResult` with ``value`` :math:`\langle C, Q\,\mathrm{diag}(1/g)\,R^\top\rangle`,
        ``plan_factors = (Q, g, R)``, ``plan`` None, ``potentials`` None, ``method="lowrank"``.

    Raises:
        InvalidArgumentError: ``rank`` not an int in ``[1, min(n, m)]``, or bad ``gamma`` / ``max_iter``.

    Warns:
        DatasetflowWarning: ``rank`` below the number of classes of the cost.
        ConvergenceWarning: ``max_iter`` reached before the value settled.
    """
    n, m = cost.shape
    classes = cost.num_classes()
    if rank is None:
        rank = default_rank(n, m, classes)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(n, m):
        raise InvalidArgumentError(
            f"rank must be an int in [1, min(n, m)] = [1, {min(n, m)}] for a cost of shape ({n}, {m}), got {rank!r}."
        )
    if classes and rank < classes:
        warnings.warn(
            f"rank={rank} is below the number of classes ({classes}): each of the {rank} components of a low-rank "
            "coupling is a product measure, so some components must carry several classes and move mass between "
            "classes; the value is then biased up by label costs (an upper bound far from OTDD). "
            f"Use rank >= {classes} (default {default_rank(n, m, classes)}).",
            DatasetflowWarning,
            stacklevel=3,
        )
    if not (isinstance(gamma, (int, float)) and gamma > 0):
        raise InvalidArgumentError(f"gamma must be a positive float, got {gamma!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise InvalidArgumentError(f"max_iter must be a positive int, got {max_iter!r}.")
    dtype, device = cost.dtype, cost.device
    if inner_tol is None:
        inner_tol = 1e-4
    final_tol = 1e-10 if dtype == torch.float64 else 1e-6
    floor = math.log(torch.finfo(dtype).tiny) + 20.0
    products = _Products(cost, dtype)
    with torch.no_grad():
        log_a, log_b = a.detach().to(dtype).log(), b.detach().to(dtype).log()
        generator = torch.Generator(device=device).manual_seed(int(seed))
        noise_q = torch.rand((n, rank), generator=generator, device=device, dtype=dtype)
        noise_r = torch.rand((m, rank), generator=generator, device=device, dtype=dtype)
        lg = torch.full((rank,), -math.log(rank), dtype=dtype, device=device)
        lq = log_a[:, None] + lg[None, :] + (0.5 + noise_q).log()
        lr = log_b[:, None] + lg[None, :] + (0.5 + noise_r).log()
        lq, lr, lg, error = _project(lq, lr, lg, log_a, log_b, max_iter=inner_max_iter, tol=inner_tol, floor=floor)
        values: list[float] = []
        converged = False
        n_iter = 0
        for sweep in range(1, max_iter + 1):
            n_iter = sweep
            q, r, g = lq.exp(), lr.exp(), lg.exp()
            cr, ctq = products.right(r), products.left(q)
            omega = (q * cr).sum(0)
            values.append(float((omega / g).sum()))
            if len(values) > max(MIN_ITER, WINDOW) and (
                abs(values[-1 - WINDOW] - values[-1]) <= WINDOW * tol * max(abs(values[-1]), 1e-30)
            ):
                converged = True
                break
            grad_q, grad_r, grad_g = cr / g, ctq / g, -omega / (g * g)
            step = gamma / max(_spread(grad_q), _spread(grad_r), _spread(grad_g), torch.finfo(dtype).tiny)
            lq, lr, lg, error = _project(
                lq - step * grad_q,
                lr - step * grad_r,
                lg - step * grad_g,
                log_a,
                log_b,
                max_iter=inner_max_iter,
                tol=inner_tol,
                floor=floor,
            )
        # a tight final projection: the plan's marginals are then a and b up to final_tol, so that the value is
        # an upper bound of exact OT up to final_tol * max|C|
        lq, lr, lg, error = _finalise(lq, lr, log_a, log_b, max_iter=FINAL_PROJECTION_ITER, tol=final_tol)
        q, r, g = lq.exp(), lr.exp(), lg.exp()
        left = q / g
        value64 = float((left * products.right(r)).sum())
    if not converged:
        warnings.warn(
            f"low-rank OT stopped at max_iter={max_iter} with a relative value change above tol={tol:g} "
            f"(rank {rank}); increase max_iter or gamma.",
            ConvergenceWarning,
            stacklevel=3,
        )
    value = torch.tensor(value64, dtype=dtype, device=device)
    if grad != "detach":
        factors = cost.factors()
        if factors is not None:
            value = attach_envelope_factored(value, factors, left, r)
        else:
            zero_f, zero_g = a.new_zeros(n), b.new_zeros(m)
            value = attach_envelope(
                value, cost, a.detach(), b.detach(), zero_f, zero_g, plan_block=lambda s, e, _blk: left[s:e] @ r.mT
            )
    return OTResult(
        value=value,
        value_linear=value.detach(),
        plan=None,
        potentials=None,
        n_iter=n_iter,
        converged=converged,
        marginal_error=error,
        reg=None,
        method="lowrank",
        backend="factored" if products.factors is not None else "dense" if products.matrix is not None else "chunked",
        errors=tuple(values),
        plan_factors=(q, g, r),
        config={"rank": rank, "gamma": gamma, "max_iter": max_iter, "tol": tol, "seed": seed, "grad": grad},
    )
