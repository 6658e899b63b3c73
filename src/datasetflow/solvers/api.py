"""The single front door to the OT solvers, in POT's vocabulary."""

from __future__ import annotations

from typing import Any

import torch

from ..costs.ground import CostOperator, DenseCost
from ..errors import InvalidArgumentError, NonFiniteError, ShapeMismatchError
from .exact import exact_ot
from .lowrank import lowrank_ot
from .minibatch import minibatch_ot
from .result import OTResult
from .sinkhorn import sinkhorn

__all__ = ["solve", "METHODS", "GRADS", "BACKENDS", "choose_backend", "DEFAULT_RELATIVE_REG", "relative_reg"]

METHODS = ("exact", "sinkhorn", "lowrank", "minibatch")
GRADS = ("envelope", "autodiff", "detach")
BACKENDS = ("auto", "dense", "chunked")

#: Default entropic regularisation, as a fraction of the mean ground cost :math:`\sum_{ij} a_i b_j C_{ij}`.
DEFAULT_RELATIVE_REG = 0.05


def relative_reg(reg: float | None, scale: float, fraction: float = DEFAULT_RELATIVE_REG) -> float:
    """``reg`` if given, else ``fraction * scale`` (the default relative to the cost scale)."""
    if reg is not None:
        return reg
    if not fraction > 0:
        raise InvalidArgumentError(f"the relative regularisation must be positive, got {fraction!r}.")
    return fraction * scale if scale > 0 else fraction


#: Largest dense cost (in bytes) the "auto" backend materialises; larger costs are chunked.
DENSE_BYTES_LIMIT = 1 << 30


def choose_backend(backend: str, shape: tuple[int, int], dtype: torch.dtype) -> str:
    """Resolve ``backend="auto"``: dense when the ``n x m`` cost fits in ``DENSE_BYTES_LIMIT``."""
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if backend != "auto":
        return backend
    itemsize = torch.finfo(dtype).bits // 8
    return "dense" if shape[0] * shape[1] * itemsize <= DENSE_BYTES_LIMIT else "chunked"


def _marginal(name: str, weights: Any, size: int, like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.full((size,), 1.0 / size, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    if w.shape != (size,):
        raise ShapeMismatchError(f"{name} must have shape ({size},) to match the cost, got {tuple(w.shape)}.")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise InvalidArgumentError(f"{name} must be finite and non-negative.")
    return w


def solve(
    M: torch.Tensor | CostOperator,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    reg: float | None = None,
    *,
    method: str | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    grad: str = "envelope",
    debiased: bool = False,
    backend: str = "auto",
    eps_scaling: float | str | None = "auto",
    potentials_init: tuple[torch.Tensor, torch.Tensor] | None = None,
    known_self_values: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    value_tol: float | str | None = "auto",
    rank: int | None = None,
    batch_size: int | None = None,
    n_batches: int | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    disjoint: bool = False,
    world: Any = None,
) -> OTResult:
    r"""Solve a discrete OT problem (POT's ``ot.solve`` vocabulary).

    .. math:: \min_{P \in \Pi(a, b)} \langle P, M\rangle + \mathrm{reg}\cdot \mathrm{KL}(P \,\|\, a b^\top)

    Args:
        M: ``(n, m)`` cost matrix, or a :class:`~datasetflow.costs.ground.CostOperator`
            (e.g. :class:`~datasetflow.costs.ground.OTDDCost`, defined implicitly by point clouds).
        a, b: marginals ``(n,)`` and ``(m,)``; uniform if None.
        reg: entropic regularisation (absolute, in cost units). None or 0 means exact OT.
        method: ``"exact"`` (network simplex, POT), ``"sinkhorn"`` (log-domain, torch), ``"lowrank"``
            (rank-``r`` couplings, :mod:`~datasetflow.solvers.lowrank`; an upper bound of exact OT; takes no
            ``reg``) or ``"minibatch"`` (mean of exact, or with ``reg`` entropic, OT over ``n_batches``
            pairs of minibatches, :mod:`~datasetflow.solvers.minibatch`; its self-distance is not 0).
            Default: ``"exact"`` if ``reg`` is None/0, else ``"sinkhorn"``. Neither of the last two forms
            an ``n x m`` matrix.
        max_iter: iteration limit (default 1e6 for exact, 1000 for Sinkhorn).
        tol: Sinkhorn stopping tolerance on the L1 marginal error (default 1e-5).
        grad: ``"envelope"`` (default; gradients from the plan and potentials, no backprop
            through iterations), ``"autodiff"`` (backprop through Sinkhorn iterations; for
            checks) or ``"detach"`` (no gradient).
        debiased: Sinkhorn divergence :math:`OT_\varepsilon(a,b) - \tfrac12 OT_\varepsilon(a,a) - \tfrac12
            OT_\varepsilon(b,b)`; needs a cost operator with self-costs.
        backend: ``"auto"`` (dense if the cost fits in 1 GiB, else chunked), ``"dense"`` or
            ``"chunked"`` (Sinkhorn only; memory ``O(n + m)`` per block).
        eps_scaling: Sinkhorn epsilon-annealing factor, None, or ``"auto"`` (default: anneal by 0.5
            only when ``reg`` is below 0.5 % of the cost scale; Anderson acceleration does better above).
        potentials_init: Sinkhorn warm start ``(f, g)``.
        known_self_values: with ``debiased``, self-transport values already known (see
            :func:`~datasetflow.solvers.sinkhorn.sinkhorn`).
        value_tol: Sinkhorn's value-based stop (see :func:`~datasetflow.solvers.sinkhorn.sinkhorn`;
            ``"auto"``: a relative 1e-4 for annealed, small-``reg`` solves only).
        rank: ``method="lowrank"``: the rank ``1 <= r <= min(n, m)`` (default four per class of the cost,
            :func:`~datasetflow.solvers.lowrank.default_rank`).
        batch_size, n_batches: ``method="minibatch"``: ``B <= min(n, m)`` (default ``min(n, m, 1000)``) and
            ``K`` (default 8).
        seed: ``"lowrank"`` initial factors, ``"minibatch"`` draws (unless ``generator`` is given).
        generator: ``"minibatch"``: a ``torch.Generator`` on the cost's device to draw from (flows pass
            their checkpointed one).
        disjoint: ``"minibatch"``: disjoint source minibatches (see
            :func:`~datasetflow.solvers.minibatch.minibatch_ot`).
        world: ``"minibatch"``: split the minibatch pairs over these ranks (see
            :func:`~datasetflow.solvers.minibatch.minibatch_ot`); refused for the other methods.

    Returns:
        :class:`OTResult` with ``value``, ``value_linear``, ``plan``, ``potentials``,
        ``n_iter``, ``converged`` and ``marginal_error``.

    Raises:
        InvalidArgumentError: unknown ``method`` / ``grad`` / ``backend``, negative ``reg``, ...
        ShapeMismatchError: marginals that do not match the cost.
    """
    cost = M if isinstance(M, CostOperator) else DenseCost(torch.as_tensor(M))
    if not cost.dtype.is_floating_point:
        raise InvalidArgumentError(f"the cost must be floating point, got {cost.dtype}.")
    if isinstance(cost, DenseCost) and not bool(torch.isfinite(cost.matrix).all()):
        raise NonFiniteError(f"cost matrix M of shape {cost.shape} holds NaN or Inf values.")
    n, m = cost.shape
    if n == 0 or m == 0:
        raise ShapeMismatchError(f"the cost must have at least one row and one column, got shape {cost.shape}.")
    like = cost.params()[0]
    a_t = _marginal("a", a, n, like)
    b_t = _marginal("b", b, m, like)
    if grad not in GRADS:
        raise InvalidArgumentError(f"grad must be one of {GRADS}, got {grad!r}.")
    if reg is not None and (not isinstance(reg, (int, float)) or isinstance(reg, bool) or reg < 0):
        raise InvalidArgumentError(f"reg must be None or a non-negative float, got {reg!r}.")
    if method is None:
        method = "exact" if not reg else "sinkhorn"
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {METHODS}, got {method!r}.")
    extra = {"rank": rank} if method != "lowrank" else {}
    extra.update({"batch_size": batch_size, "n_batches": n_batches} if method != "minibatch" else {})
    extra.update({"world": world} if method != "minibatch" and getattr(world, "distributed", False) else {})
    unused = [k for k, v in extra.items() if v is not None]
    if unused:
        raise InvalidArgumentError(f"{', '.join(unused)} do not apply to method={method!r}.")
    if method in ("lowrank", "minibatch"):
        if debiased:
            raise InvalidArgumentError(f"debiased=True applies to method='sinkhorn' only, not {method!r}.")
        if backend == "chunked":
            raise InvalidArgumentError(f"backend='chunked' is Sinkhorn-only; method={method!r} never forms n x m.")
    if method == "lowrank":
        if reg:
            raise InvalidArgumentError(f"method='lowrank' takes no reg (got reg={reg!r}); it is unregularised.")
        return lowrank_ot(
            cost, a_t, b_t, rank=rank, max_iter=max_iter or 1000, tol=1e-5 if tol is None else tol, seed=seed, grad=grad
        )
    if method == "minibatch":
        return minibatch_ot(
            cost,
            a_t,
            b_t,
            batch_size=batch_size,
            n_batches=n_batches,
            reg=float(reg) if reg else None,
            seed=seed,
            generator=generator,
            disjoint=disjoint,
            grad=grad,
            max_iter=max_iter,
            tol=tol,
            world=world,
        )
    if method == "exact":
        if reg:
            raise InvalidArgumentError(f"method='exact' takes no reg (got reg={reg!r}); use method='sinkhorn'.")
        if debiased:
            raise InvalidArgumentError("debiased=True applies to method='sinkhorn' only; exact OT(a, a) is 0 already.")
        if backend == "chunked":
            raise InvalidArgumentError("method='exact' needs the dense cost; backend='chunked' is Sinkhorn-only.")
        return exact_ot(cost, a_t, b_t, max_iter=max_iter or 1_000_000, grad=grad)
    if not reg:
        raise InvalidArgumentError("method='sinkhorn' needs a positive reg.")
    return sinkhorn(
        cost,
        a_t,
        b_t,
        float(reg),
        max_iter=max_iter or 1000,
        tol=1e-5 if tol is None else tol,
        eps_scaling=eps_scaling,
        grad=grad,
        backend=choose_backend(backend, cost.shape, cost.dtype),
        debiased=debiased,
        potentials_init=potentials_init,
        known_self_values=known_self_values,
        value_tol=value_tol,
    )
