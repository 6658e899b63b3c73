r"""Potential, interaction and internal (entropy) energies (paper §4.1 eqs. 9-11, §5).

* Potential :math:`\mathcal{V}(\rho) = \int V(x, y)\, d\rho = \sum_i w_i V(x_i, y_i)`.
* Interaction :math:`\mathcal{W}(\rho) = \tfrac12 \iint W(z, z')\, d\rho\, d\rho
  = \tfrac12 \sum_{ij} w_i w_j W(x_i - x_j, y_i, y_j)`.
* Entropy :math:`\sigma \int \rho \log \rho`: no particle value; its Wasserstein gradient
  flow is Brownian motion, added by the integrator as Euler-Maruyama noise
  :math:`x \mathrel{+}= \sqrt{2 \tau \sigma}\, \xi`.

Callables receive the features ``x`` ``(n, d)`` and the label indices ``y`` ``(n,)``
(interaction: pairwise differences ``(n, n, d)`` and the two label vectors) and return
per-particle (per-pair) values; they are differentiated by autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..distributed.comm import all_reduce_sum, gather_rows
from ..errors import InvalidArgumentError, ShapeMismatchError
from .base import Functional

__all__ = [
    "Potential",
    "Interaction",
    "Entropy",
    "potential",
    "interaction",
    "entropy",
    "norm_potential",
    "hyperplane_margin",
    "ball_constraint",
    "collapse",
    "class_repulsion",
    "quadratic_repulsion",
]

PotentialFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
InteractionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis with gradient 0 (not NaN) at 0."""
    sq = (v * v).sum(-1)
    positive = sq > 0
    return torch.where(positive, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), torch.zeros_like(sq))


class Potential(Functional):
    r"""Potential energy :math:`\sum_i w_i V(x_i, y_i)` for a callable ``V(x, y) -> (n,)``."""

    name = "potential"
    supports_sharding = True

    def __init__(self, fn: PotentialFn, name: str | None = None) -> None:
        if not callable(fn):
            raise InvalidArgumentError(f"a potential needs a callable V(x, y), got {type(fn).__name__}.")
        self.fn = fn
        if name:
            self.name = name

    def __repr__(self) -> str:
        return f"potential({self.name})"

    def value(self, state) -> torch.Tensor:  # noqa: D102
        values = self.fn(state.x, state.y)
        if not isinstance(values, torch.Tensor) or values.shape != (state.x.shape[0],):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ShapeMismatchError(
                f"potential {self.name!r} must return one value per particle, shape ({state.x.shape[0]},); got {shape}."
            )
        return all_reduce_sum((state.weights * values).sum(), state.world)


class Interaction(Functional):
    r"""Interaction energy :math:`\tfrac12\sum_{ij} w_i w_j W(x_i - x_j, y_i, y_j)`.

    ``W(diff, y_i, y_j)`` gets ``diff`` of shape ``(n, n, d)`` and label indices of shapes
    ``(n, 1)`` and ``(1, n)``, and returns ``(n, n)``. Memory is ``O(n^2 d)``.

    Sharded over ranks, each rank gathers every particle and evaluates its own rows against all
    columns (memory ``O(n_local n d)``); its gradient also takes the other ranks' rows where its
    particles are the column, so it equals the single-process gradient.
    """

    name = "interaction"
    supports_sharding = True

    def __init__(self, fn: InteractionFn, name: str | None = None) -> None:
        if not callable(fn):
            raise InvalidArgumentError(f"an interaction needs a callable W(diff, y, y'), got {type(fn).__name__}.")
        self.fn = fn
        if name:
            self.name = name

    def __repr__(self) -> str:
        return f"interaction({self.name})"

    def _pairs(self, rows: torch.Tensor, y_rows: torch.Tensor, cols: torch.Tensor, y_cols: torch.Tensor):
        values = self.fn(rows[:, None, :] - cols[None, :, :], y_rows[:, None], y_cols[None, :])
        shape = (rows.shape[0], cols.shape[0])
        if not isinstance(values, torch.Tensor) or values.shape != shape:
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ShapeMismatchError(f"interaction {self.name!r} must return an {shape} matrix, got {got}.")
        return values

    def value(self, state) -> torch.Tensor:  # noqa: D102
        x, y, w, world = state.x, state.y, state.weights, state.world
        if not world.distributed:
            return 0.5 * (w @ self._pairs(x, y, x, y) @ w)
        x_all, sizes = gather_rows(x, world)
        y_all, _ = gather_rows(y, world)
        w_all, _ = gather_rows(w.detach(), world)
        own = torch.zeros(x_all.shape[0], dtype=torch.bool, device=x.device)
        start = sum(sizes[: world.rank])
        own[start : start + x.shape[0]] = True
        rows = 0.5 * (w @ self._pairs(x, y, x_all, y_all) @ w_all)  # this rank's rows: sums to the objective
        # the other ranks' rows where this rank's particles are the column: gradient only
        others = x_all.detach()[~own]
        columns = 0.5 * (w_all[~own] @ self._pairs(others, y_all[~own], x, y) @ w)
        return all_reduce_sum(rows.detach(), world) + (rows - rows.detach()) + (columns - columns.detach())


class Entropy(Functional):
    r"""Entropy :math:`\sigma \int \rho\log\rho` as Langevin noise of temperature ``sigma``.

    Its value is not estimated (reported as 0); its effect is the noise
    :math:`\sqrt{2\tau\sigma}\,\xi` the integrator adds after each step.
    """

    name = "entropy"
    supports_sharding = True

    def __init__(self, sigma: float) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0:
            raise InvalidArgumentError(f"entropy temperature sigma must be a non-negative float, got {sigma!r}.")
        self.sigma = float(sigma)

    def __repr__(self) -> str:
        return f"entropy({self.sigma:g})"

    def value(self, state) -> torch.Tensor:  # noqa: D102
        return torch.zeros((), dtype=state.x.dtype, device=state.x.device)

    def noise(self) -> float:  # noqa: D102
        return self.sigma


def potential(fn: PotentialFn, name: str | None = None) -> Potential:
    """A potential energy from a callable ``V(x, y) -> (n,)``."""
    return Potential(fn, name)


def interaction(fn: InteractionFn, name: str | None = None) -> Interaction:
    """An interaction energy from a callable ``W(x_i - x_j, y_i, y_j) -> (n, n)``."""
    return Interaction(fn, name)


def entropy(sigma: float) -> Entropy:
    """Entropy (Langevin noise) of temperature ``sigma``."""
    return Entropy(sigma)


def _as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def norm_potential(matrix=None, offset=None, *, classes: Sequence[int] | None = None) -> Potential:
    r""":math:`V(x, y) = \|A x - b\|` (default :math:`\|x\|`), optionally only for the class
    indices in ``classes`` (zero elsewhere). ``matrix`` may be ``(d, d)`` or, per class,
    ``(C, d, d)`` with ``offset`` ``(C, d)`` (the paper's :math:`\|A_y x - b_y\|`)."""

    def fn(x, y):
        a = None if matrix is None else _as_tensor(matrix, x)
        b = None if offset is None else _as_tensor(offset, x)
        z = x
        if a is not None and a.shape[-2:] != (x.shape[1], x.shape[1]):
            raise ShapeMismatchError(
                f"norm_potential matrix has shape {tuple(a.shape)}; expected (d, d) or (C, d, d) with d = {x.shape[1]}."
            )
        if b is not None and b.shape[-1] != x.shape[1]:
            raise ShapeMismatchError(
                f"norm_potential offset has shape {tuple(b.shape)}; expected (d,) or (C, d) with d = {x.shape[1]}."
            )
        if a is not None:
            z = torch.einsum("nij,nj->ni", a[y], x) if a.ndim == 3 else x @ a.mT
        if b is not None:
            z = z - (b[y] if b.ndim == 2 else b)
        out = _safe_norm(z)
        if classes is not None:
            mask = torch.isin(y, torch.as_tensor(list(classes), device=y.device))
            out = torch.where(mask, out, torch.zeros_like(out))
        return out

    return Potential(fn, "norm")


def hyperplane_margin(normal, bias: float = 0.0) -> Potential:
    r"""Margin-inducing potential for binary labels, :math:`V = \max\{0, s_y (w^\top x - b)\}`
    with :math:`s_y = -1` for class index 0 and :math:`+1` for class index 1 (paper Fig. 1):
    particles are pushed to the side of the hyperplane that their class belongs to."""

    def fn(x, y):
        if int(y.max()) > 1:
            raise InvalidArgumentError("hyperplane_margin needs binary labels (two classes).")
        w = _as_tensor(normal, x)
        if w.shape != (x.shape[1],):
            raise ShapeMismatchError(
                f"hyperplane normal has shape {tuple(w.shape)} but the features are {x.shape[1]}-d."
            )
        sign = 2.0 * y.to(x.dtype) - 1.0
        return torch.relu(sign * (x @ w - bias))

    return Potential(fn, "hyperplane")


def ball_constraint(center, radius: float) -> Potential:
    r"""Ball constraint :math:`V = (\|x - x_0\| - \tau)_+`: zero inside the ball of radius
    :math:`\tau` around :math:`x_0`, pulling outside particles back in."""
    if not radius >= 0:
        raise InvalidArgumentError(f"radius must be non-negative, got {radius!r}.")

    def fn(x, y):
        c = _as_tensor(center, x)
        if c.shape != (x.shape[1],):
            raise ShapeMismatchError(f"ball center has shape {tuple(c.shape)} but the features are {x.shape[1]}-d.")
        return torch.relu(_safe_norm(x - c) - radius)

    return Potential(fn, "ball")


def collapse(dims: Sequence[int]) -> Potential:
    r"""Collapse along coordinates: :math:`V = \tfrac12 \sum_{k \in \text{dims}} x_k^2`, minimised
    by flattening the data onto the other coordinates."""
    index = [int(k) for k in dims]
    if not index:
        raise InvalidArgumentError("collapse needs at least one dimension, got dims=[].")

    def fn(x, y):
        if max(index) >= x.shape[1] or min(index) < -x.shape[1]:
            raise ShapeMismatchError(f"collapse dims {index} are out of range for {x.shape[1]}-d features.")
        return 0.5 * (x[:, index] ** 2).sum(1)

    return Potential(fn, "collapse")


def class_repulsion(scale: float = 1.0) -> Interaction:
    r"""Class repulsion :math:`W = \exp(-\|x - x'\| / s)\, 1\{y \ne y'\}` (paper §5)."""
    return Interaction(lambda diff, yi, yj: torch.exp(-_safe_norm(diff) / scale) * (yi != yj), "repulsion")


def quadratic_repulsion() -> Interaction:
    r""":math:`W = -\|x - x'\|^2\, 1\{y \ne y'\}`: pushes classes apart without bound (combine
    with a confining term)."""
    return Interaction(lambda diff, yi, yj: -(diff * diff).sum(-1) * (yi != yj), "quadratic_repulsion")
