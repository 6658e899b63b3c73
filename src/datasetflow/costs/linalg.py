"""Matrix functions of symmetric PSD matrices with gradients that stay finite.

``torch.linalg.eigh``'s backward divides by eigenvalue gaps ``1/(l_i - l_j)`` and
returns NaN or Inf when eigenvalues repeat (e.g. a ridge ``S + r I`` on a rank-deficient
covariance). The functions here use closed-form backwards instead:

* :func:`psd_sqrt`: ``X = S^{1/2}``; ``dS = V [ (V^T dX V)_{ij} / (sqrt(l_i) + sqrt(l_j)) ] V^T``
  (the solution of the Sylvester equation ``X dS + dS X = dX`` in the eigenbasis), with the
  entries whose denominator vanishes (both eigenvalues zero) set to zero.
* :func:`trace_sqrt_psd`: ``tr S^{1/2} = sum_k sqrt(l_k)``; ``dS = V diag(1 / (2 sqrt(l_k))) V^T``
  restricted to the numerically non-zero eigenvalues (the minimal-norm subgradient at
  rank-deficient ``S``).

Both are batched over leading dimensions.
"""

from __future__ import annotations

import torch

__all__ = ["psd_sqrt", "trace_sqrt_psd", "safe_sqrt"]


def _rank_tolerance(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Eigenvalues below this (per matrix) are treated as zero: ``n * eps * max(|l|)``."""
    n = eigenvalues.shape[-1]
    scale = eigenvalues.abs().amax(dim=-1, keepdim=True)
    return n * torch.finfo(eigenvalues.dtype).eps * scale


class _PsdSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix: torch.Tensor) -> torch.Tensor:
        sym = 0.5 * (matrix + matrix.mT)
        eigenvalues, eigenvectors = torch.linalg.eigh(sym)
        tol = _rank_tolerance(eigenvalues)
        roots = torch.where(eigenvalues > tol, eigenvalues, torch.zeros_like(eigenvalues)).sqrt()
        ctx.save_for_backward(roots, eigenvectors)
        return (eigenvectors * roots.unsqueeze(-2)) @ eigenvectors.mT

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        roots, eigenvectors = ctx.saved_tensors
        denom = roots.unsqueeze(-1) + roots.unsqueeze(-2)
        tiny = torch.finfo(roots.dtype).tiny
        inv = torch.where(denom > tiny, 1.0 / denom.clamp_min(tiny), torch.zeros_like(denom))
        grad_sym = 0.5 * (grad_output + grad_output.mT)
        inner = eigenvectors.mT @ grad_sym @ eigenvectors
        return eigenvectors @ (inner * inv) @ eigenvectors.mT


class _TraceSqrtPsd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix: torch.Tensor) -> torch.Tensor:
        sym = 0.5 * (matrix + matrix.mT)
        eigenvalues, eigenvectors = torch.linalg.eigh(sym)
        tol = _rank_tolerance(eigenvalues)
        positive = eigenvalues > tol
        roots = torch.where(positive, eigenvalues, torch.zeros_like(eigenvalues)).sqrt()
        ctx.save_for_backward(roots, eigenvectors, positive)
        return roots.sum(dim=-1)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        roots, eigenvectors, positive = ctx.saved_tensors
        half_inv = torch.where(positive, 0.5 / roots.clamp_min(torch.finfo(roots.dtype).tiny), torch.zeros_like(roots))
        weights = half_inv * grad_output.unsqueeze(-1)
        return (eigenvectors * weights.unsqueeze(-2)) @ eigenvectors.mT


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Principal square root of symmetric PSD matrices ``(..., d, d)`` with a stable backward.

    Negative eigenvalues from round-off are clipped to zero. The backward is finite for
    repeated and zero eigenvalues (see the module docstring).
    """
    return _PsdSqrt.apply(matrix)


def trace_sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """``tr(S^{1/2})`` for symmetric PSD matrices ``(..., r, r)``; returns shape ``(...)``.

    The gradient is ``(1/2) S^{+1/2}`` (pseudo-inverse square root), finite for
    rank-deficient ``S``.
    """
    return _TraceSqrtPsd.apply(matrix)


def safe_sqrt(values: torch.Tensor) -> torch.Tensor:
    """Elementwise ``sqrt`` of non-negative values whose gradient at 0 is 0 instead of Inf."""
    positive = values > 0
    return torch.where(positive, values.clamp_min(torch.finfo(values.dtype).tiny).sqrt(), torch.zeros_like(values))
