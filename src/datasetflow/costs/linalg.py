"""Matrix functions of symmetric PSD matrices with gradients that stay finite.

``torch.linalg.eigh``'s backward divides by eigenvalue gaps ``1/(l_i - l_j)`` and
returns NaN or Inf when eigenvalues repeat (e.g. a ridge ``S + r I`` on a rank-deficient
covariance). The functions here use closed-form backwards instead:

* :func:`psd_sqrt`: ``X = S^{1/2}``; ``dS = V [ (V^T dX V)_{ij} / (sqrt(l_i) + sqrt(l_j)) ] V^T``
  (the solution of the Sylvester equation ``X dS + dS X = dX`` in the eigenbasis), with the
  entries whose denominator vanishes (both eigenvalues zero) set to zero.
* :func:`nuclear_norm`: ``||K||_* = tr (K K^T)^{1/2}``; ``dK = U V^T`` restricted to the
  numerically non-zero singular values (the minimal-norm subgradient at rank-deficient ``K``).

Both are batched over leading dimensions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from ..data.moments import eigenvalue_floor
from ..utils import lapack_threads

__all__ = ["psd_sqrt", "nuclear_norm", "safe_sqrt"]


#: Batches of dense eigenproblems smaller than this many matrices per worker stay on one thread.
_MIN_MATRICES_PER_WORKER = 4
_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A shared pool of ``workers`` threads (one per distinct size and process, created on first use).

    Keyed by the process id too: a forked child inherits the parent's executor without its threads, and
    work submitted to it would never run.
    """
    key = (os.getpid(), workers)
    with _POOL_LOCK:
        if key not in _POOL:
            _POOL[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datasetflow-eigh")
        return _POOL[key]


def batched_map(fn: Callable, matrices: torch.Tensor):
    """``fn(matrices)`` for an ``fn`` that treats each matrix of a ``(B, n, m)`` batch alone, split over threads.

    LAPACK's symmetric eigensolvers run single-threaded (:func:`~datasetflow.utils.lapack_threads`: their
    per-step thread synchronisation is slow on a busy machine). On the CPU with ``torch.get_num_threads() > 1``
    a large batch is cut into that many contiguous chunks processed concurrently, each on one intra-op thread
    (torch releases the GIL), and ``fn``'s outputs (a tensor or a tuple of tensors, batched along dim 0) are
    concatenated. Each matrix is handled independently, so the result is bit-identical to one call, and
    deterministic. Other devices, small batches and one thread: one call.
    """
    threads = torch.get_num_threads()
    workers = min(threads, matrices.shape[0] // _MIN_MATRICES_PER_WORKER)
    if matrices.device.type != "cpu" or workers < 2:
        with lapack_threads(matrices):
            return fn(matrices)
    with lapack_threads(matrices):
        parts = list(_pool(workers).map(fn, matrices.chunk(workers)))
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


def batched_eigen(solver: Callable, matrices: torch.Tensor):
    """``solver(matrices)`` (``torch.linalg.eigh`` or ``eigvalsh`` of ``(..., n, n)``) by :func:`batched_map`."""
    if matrices.ndim < 3:
        with lapack_threads(matrices):
            return solver(matrices)
    shape = matrices.shape[:-2]
    out = batched_map(solver, matrices.reshape(-1, *matrices.shape[-2:]))
    if isinstance(out, torch.Tensor):
        return out.reshape(*shape, -1)
    return out[0].reshape(*shape, -1), out[1].reshape(matrices.shape)


class _PsdSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix: torch.Tensor) -> torch.Tensor:
        sym = 0.5 * (matrix + matrix.mT).to(torch.float64)
        eigenvalues, eigenvectors = batched_eigen(torch.linalg.eigh, sym)
        tol = eigenvalue_floor(eigenvalues)
        roots = torch.where(eigenvalues > tol, eigenvalues, torch.zeros_like(eigenvalues)).sqrt()
        ctx.save_for_backward(roots, eigenvectors)
        return ((eigenvectors * roots.unsqueeze(-2)) @ eigenvectors.mT).to(matrix.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        roots, eigenvectors = ctx.saved_tensors
        denom = roots.unsqueeze(-1) + roots.unsqueeze(-2)
        tiny = torch.finfo(roots.dtype).tiny
        inv = torch.where(denom > tiny, 1.0 / denom.clamp_min(tiny), torch.zeros_like(denom))
        grad_sym = 0.5 * (grad_output + grad_output.mT).to(torch.float64)
        inner = eigenvectors.mT @ grad_sym @ eigenvectors
        return (eigenvectors @ (inner * inv) @ eigenvectors.mT).to(grad_output.dtype)


def _gram64(k64: torch.Tensor) -> torch.Tensor:
    """The smaller Gram matrix ``K K^T`` or ``K^T K`` of float64 ``(B, r1, r2)`` matrices."""
    return k64 @ k64.mT if k64.shape[-2] <= k64.shape[-1] else k64.mT @ k64


def _nuclear_values(matrix: torch.Tensor) -> torch.Tensor:
    """Nuclear norms ``(B,)`` of ``(B, r1, r2)`` matrices from their float64 Gram eigenvalues (no vectors)."""
    eigenvalues = torch.linalg.eigvalsh(_gram64(matrix.to(torch.float64)))
    positive = eigenvalues > eigenvalue_floor(eigenvalues)
    return torch.where(positive, eigenvalues, 0.0).sqrt().sum(dim=-1)


def _nuclear_and_polar(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Nuclear norms ``(B,)`` (float64) and polar factors :math:`U V^\top` ``(B, r1, r2)`` (``matrix``'s dtype).

    With :math:`K = U S W^\top` and :math:`K K^\top = U \Lambda U^\top` (float64), the polar factor is
    :math:`U W^\top` with :math:`W^\top = \Lambda^{+1/2} U^\top K`. The coefficients :math:`W^\top` are formed in
    float64 (in ``matrix``'s float32 the rows of small singular values lose their digits: on two full-size MNIST
    classes, d x d path, the gradient came out 5e-3 from float64's), and the product of the two orthonormal
    factors, whose entries are all O(1), in ``matrix``'s dtype.
    """
    rows, cols = matrix.shape[-2:]
    k64 = matrix.to(torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh(_gram64(k64))
    positive = eigenvalues > eigenvalue_floor(eigenvalues)
    roots = torch.where(positive, eigenvalues, 0.0).sqrt()
    inv_roots = torch.where(positive, 1.0 / roots.clamp_min(torch.finfo(roots.dtype).tiny), 0.0)
    basis = eigenvectors.to(matrix.dtype)
    if rows <= cols:  # U (Lambda^{+1/2} U^T K)
        coefficients = (eigenvectors.mT @ k64).mul_(inv_roots[..., :, None]).to(matrix.dtype)
        polar = basis @ coefficients
    else:  # (K V Lambda^{+1/2}) V^T, with K^T K = V Lambda V^T
        coefficients = (k64 @ eigenvectors).mul_(inv_roots[..., None, :]).to(matrix.dtype)
        polar = coefficients @ basis.mT
    return roots.sum(dim=-1), polar


class _NuclearNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix: torch.Tensor) -> torch.Tensor:
        flat = matrix.reshape(-1, *matrix.shape[-2:])
        if not ctx.needs_input_grad[0]:  # eigenvalues only: about twice as fast
            return batched_map(_nuclear_values, flat).reshape(matrix.shape[:-2]).to(matrix.dtype)
        values, polar = batched_map(_nuclear_and_polar, flat)
        ctx.save_for_backward(polar.reshape(matrix.shape))
        return values.reshape(matrix.shape[:-2]).to(matrix.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (polar,) = ctx.saved_tensors
        return _negligible_to_zero(grad_output)[..., None, None] * polar


def _negligible_to_zero(weights: torch.Tensor) -> torch.Tensor:
    r"""``weights`` with the entries below :math:`\varepsilon^2 \max|w|` (``eps`` of their dtype) set to 0.

    The upstream gradient of a batch of class-pair terms is the plan's mass on each class pair; at small ``reg``
    most of it is below ``1e-38``, and its products with the ``O(1)`` polar factors and features are subnormal,
    which slows the backward's GEMMs down many times on the CPU. Every pair's term has a gradient of comparable
    size, so the dropped ones sit far below the rounding of the sums they join.
    """
    magnitude = weights.detach().abs()
    if magnitude.numel() == 0:
        return weights
    cut = float(magnitude.max()) * torch.finfo(weights.dtype).eps ** 2
    return torch.where(magnitude < cut, torch.zeros_like(weights), weights)


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Principal square root of symmetric PSD matrices ``(..., d, d)`` with a stable backward.

    The eigendecomposition runs in float64 whatever the input dtype (a float32 ``eigh`` of a large
    covariance can fail to converge); the result has the input's dtype. Eigenvalues below
    ``d * eps64 * max |l|`` (round-off, negative ones included) are set to zero. The backward is finite for
    repeated and zero eigenvalues (see the module docstring).
    """
    return _PsdSqrt.apply(matrix)


def nuclear_norm(matrix: torch.Tensor) -> torch.Tensor:
    """Nuclear norm (sum of singular values) of ``(..., r1, r2)`` matrices; returns ``(...)``.

    Computed from the eigenvalues of the smaller Gram matrix ``K K^T`` (or ``K^T K``) formed
    in float64 whatever the input dtype, since the Gram squares the condition number. The
    gradient is the polar factor ``U V^T`` restricted to the numerically non-zero singular
    values (the minimal-norm subgradient), so it stays finite for rank-deficient ``K``; only
    that ``r1 x r2`` factor is kept for the backward pass.
    """
    return _NuclearNorm.apply(matrix)


def safe_sqrt(values: torch.Tensor) -> torch.Tensor:
    """Elementwise ``sqrt`` of non-negative values whose gradient at 0 is 0 instead of Inf."""
    positive = values > 0
    return torch.where(positive, values.clamp_min(torch.finfo(values.dtype).tiny).sqrt(), torch.zeros_like(values))
