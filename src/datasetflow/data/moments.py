r"""Class means and covariances in one streaming float64 pass, and covariance factors in float64.

For a class :math:`c` with samples :math:`x_k`, weights :math:`w_k`, mass :math:`W_c = \sum_k w_k` and
normaliser :math:`N_c` (:math:`W_c - \sum_k w_k^2 / W_c` unbiased, :math:`W_c` otherwise),

.. math:: m_c = \frac{1}{W_c}\sum_k w_k x_k, \qquad
          \Sigma_c = \frac{1}{N_c}\sum_k w_k (x_k - m_c)(x_k - m_c)^\top .

:func:`class_moments` accumulates both over row blocks of each class in float64, whatever the
dtype of ``x``, so a class of :math:`10^5` points in :math:`d = 784` needs :math:`O(d^2)` extra
memory, never a copy of its samples. Its backward pass is blockwise too:

.. math:: \frac{\partial L}{\partial x_k} = \frac{w_k}{W_c}\,\frac{\partial L}{\partial m_c}
          + \frac{w_k}{N_c}\big(D_c + D_c^\top\big)(x_k - m_c), \qquad D_c = \frac{\partial L}{\partial \Sigma_c}

(the dependence of :math:`\Sigma_c` on :math:`m_c` drops out since :math:`\sum_k w_k (x_k - m_c) = 0`).
Gradients flow to ``x`` only (weights are constants).

:func:`covariance_factor` returns :math:`G = \Lambda_r^{1/2} V_r^\top` (``(r, d)``, :math:`G^\top G = \Sigma`)
from a float64 eigendecomposition :math:`\Sigma = V \Lambda V^\top`, keeping the eigenvalues above the
**eigenvalue floor** :math:`d\,\varepsilon_{64} \max_k \lambda_k` (smaller ones, round-off of exact zeros
such as constant pixels, are set to 0, so ``r`` is the numerical rank). Float32 eigendecompositions of
``d x d`` covariances fail to converge or lose the small eigenvalues, whose square roots the Bures
distance sums; float64 ones on float64-accumulated covariances do neither.

Its backward pass is the one of a factor whose loss depends on :math:`G^\top G` only
(:math:`\partial L/\partial G = 2 G D`, :math:`D` symmetric): with :math:`M = (\partial L/\partial G)^\top
\Lambda_r^{-1/2} V_r^\top` and :math:`\Pi = V_r V_r^\top`,
:math:`\partial L/\partial\Sigma = \tfrac12 (M + M^\top - \Pi M)`. For full-rank :math:`\Sigma` this is the
gradient; for rank-deficient ones it makes the gradient with respect to the samples equal to the one
through the thin factor of centred samples (the minimal-norm choice), so classes above and below
``d`` samples are differentiated the same way.
"""

from __future__ import annotations

import torch

from ..utils import lapack_threads

__all__ = ["class_moments", "covariance_factor", "eigenvalue_floor", "ROWS_PER_BLOCK_ELEMENTS"]

#: Row blocks of the streaming pass hold at most this many entries (float64: 32 MiB).
ROWS_PER_BLOCK_ELEMENTS = 1 << 22


def eigenvalue_floor(eigenvalues: torch.Tensor) -> torch.Tensor:
    r"""The floor below which eigenvalues count as zero: :math:`d\,\varepsilon \max_k |\lambda_k|`, ``(..., 1)``."""
    n = eigenvalues.shape[-1]
    return n * torch.finfo(eigenvalues.dtype).eps * eigenvalues.abs().amax(dim=-1, keepdim=True)


def _blocks(index: torch.Tensor, dim: int):
    rows = max(1, ROWS_PER_BLOCK_ELEMENTS // max(dim, 1))
    for start in range(0, index.numel(), rows):
        yield index[start : start + rows]


class _ClassMoments(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, members, weights64, mass64, normaliser64, dense):  # type: ignore[override]
        dim = x.shape[1]
        means = x.new_zeros(len(members), dim, dtype=torch.float64)
        for c, index in enumerate(members):
            for block in _blocks(index, dim):
                means[c] += weights64[block] @ x[block].to(torch.float64)
            means[c] /= mass64[c]
        covariances = x.new_zeros(len(dense), dim, dim, dtype=torch.float64)
        for k, c in enumerate(dense):
            for block in _blocks(members[c], dim):
                centred = x[block].to(torch.float64) - means[c]
                covariances[k] += (centred * weights64[block, None]).mT @ centred
            covariances[k] /= normaliser64[c]
        ctx.members, ctx.dense = members, dense
        ctx.save_for_backward(x, weights64, mass64, normaliser64, means)
        return means, covariances

    @staticmethod
    def backward(ctx, grad_means, grad_covariances):  # type: ignore[override]
        x, weights64, mass64, normaliser64, means = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        grad = torch.zeros_like(x, dtype=torch.float64)
        if grad_means is not None:
            for c, index in enumerate(ctx.members):
                grad.index_add_(0, index, (weights64[index] / mass64[c])[:, None] * grad_means[c].to(torch.float64))
        if grad_covariances is not None:
            for k, c in enumerate(ctx.dense):
                sym = (grad_covariances[k] + grad_covariances[k].mT).to(torch.float64)
                for block in _blocks(ctx.members[c], x.shape[1]):
                    centred = x[block].to(torch.float64) - means[c]
                    grad.index_add_(0, block, (weights64[block] / normaliser64[c])[:, None] * (centred @ sym))
        return grad.to(x.dtype), None, None, None, None, None


def class_moments(
    x: torch.Tensor,
    members: list[torch.Tensor],
    weights: torch.Tensor,
    mass: torch.Tensor,
    normaliser: torch.Tensor,
    dense: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means ``(C, d)`` and the covariances ``(len(dense), d, d)`` of the classes ``dense``, in float64.

    Args:
        x: ``(n, d)`` features (any floating dtype; gradients flow back to it).
        members: ``C`` long tensors, the sample indices of each class.
        weights: ``(n,)`` sample weights; ``mass``, ``normaliser``: ``(C,)`` (see the module docstring).
        dense: the classes whose covariance is accumulated.

    Memory: one float64 row block and the ``d x d`` accumulators (the module docstring has the math).
    """
    w64, mass64, norm64 = (t.detach().to(torch.float64) for t in (weights, mass, normaliser))
    return _ClassMoments.apply(x, members, w64, mass64, norm64, dense)


class _CovarianceFactor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, covariances):  # type: ignore[override]
        sym = 0.5 * (covariances + covariances.mT).to(torch.float64)
        with lapack_threads(sym):
            eigenvalues, eigenvectors = torch.linalg.eigh(sym)
        eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)  # descending
        kept = eigenvalues > eigenvalue_floor(eigenvalues)
        rank = max(int(kept.sum(-1).max()) if kept.numel() else 0, 1)
        roots = torch.where(kept, eigenvalues, 0.0).sqrt()[..., :rank]
        vectors = eigenvectors[..., :rank] * kept[..., None, :rank]
        ctx.save_for_backward(roots, vectors)
        ctx.input_dtype = covariances.dtype
        return roots[..., :, None] * vectors.mT  # (..., r, d)

    @staticmethod
    def backward(ctx, grad_factor):  # type: ignore[override]
        roots, vectors = ctx.saved_tensors
        inv_roots = torch.where(roots > 0, 1.0 / roots.clamp_min(torch.finfo(roots.dtype).tiny), 0.0)
        m = grad_factor.to(torch.float64).mT @ (inv_roots[..., :, None] * vectors.mT)  # (..., d, d)
        s = m + m.mT - vectors @ (vectors.mT @ m)
        return (0.25 * (s + s.mT)).to(ctx.input_dtype)


def covariance_factor(covariances: torch.Tensor) -> torch.Tensor:
    r"""Factors :math:`G` ``(..., r, d)`` with :math:`G^\top G = \Sigma` of symmetric PSD ``(..., d, d)`` matrices.

    Computed from a float64 eigendecomposition with the eigenvalue floor of the module docstring
    (``r``: the largest numerical rank of the batch; rows past a matrix's own rank are 0) and
    returned in float64. Differentiable (module docstring) for losses that depend on
    :math:`G^\top G` only, as every Bures-Wasserstein quantity does.
    """
    return _CovarianceFactor.apply(covariances)
