r"""Bures-Wasserstein distances between Gaussians, batched over all class pairs.

For :math:`\alpha = N(m_1, \Sigma_1)` and :math:`\beta = N(m_2, \Sigma_2)`,

.. math::
    W_2^2(\alpha, \beta) = \|m_1 - m_2\|^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
        - 2 \operatorname{tr}\big(\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}\big)^{1/2}.

With factors :math:`\Sigma_i = F_i^\top F_i` (``F_i`` of shape ``(r_i, d)``) the trace term
is the nuclear norm :math:`\|F_1 F_2^\top\|_*`, the sum of square roots of the eigenvalues
of the small ``r_1 x r_2`` product :math:`K K^\top`, ``K = F_1 F_2^\top``. For classes with
fewer samples than dimensions (images) the centred samples are such a factor, so no
``d x d`` square root is ever formed. Classes with ``n_c > d`` use the float64 eigen-factor
``F = \Lambda^{1/2} V^\top`` of their float64-accumulated covariance, with as many rows as its
numerical rank (:func:`~datasetflow.data.moments.covariance_factor`).
"""

from __future__ import annotations

import torch

from ..data.moments import covariance_factor
from ..errors import InvalidArgumentError
from .linalg import nuclear_norm, safe_sqrt

__all__ = ["bures_wasserstein_squared", "class_gram", "covariance_factors", "sqeuclidean"]


def sqeuclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Pairwise squared Euclidean distances :math:`\|x_i - y_j\|^2`, ``(..., n, d) x (..., m, d) -> (..., n, m)``.

    Computed as :math:`\|x\|^2 + \|y\|^2 - 2 x y^\top` (one matmul) and clipped at 0.
    """
    x_sq = (x * x).sum(-1, keepdim=True)
    y_sq = (y * y).sum(-1, keepdim=True)
    if x.ndim == 2:
        return torch.addmm(x_sq + y_sq.mT, x, y.mT, alpha=-2.0).clamp_min(0)
    return (x_sq + y_sq.mT - 2.0 * (x @ y.mT)).clamp_min(0)


class _SquaredDistances(torch.autograd.Function):
    r""":func:`sqeuclidean` of ``(n, d)`` and ``(m, d)`` points with a backward of one GEMM per differentiable side,
    and one in all when both sides are the same points (``same``).

    With :math:`G = \partial L / \partial C`, :math:`\partial L/\partial x_i = 2 (\sum_j G_{ij}) x_i - 2 (G y)_i`,
    :math:`\partial L/\partial y_j = 2 (\sum_i G_{ij}) y_j - 2 (G^\top x)_j`, and for ``same`` the two summed:
    :math:`2\,\mathrm{rowsum}(G + G^\top) \odot x - 2 (G + G^\top) x`. The clamp at 0 (which only removes the
    rounding of the expansion near coincident points) passes the gradient straight through: it is the gradient of
    :math:`\|x_i - y_j\|^2`, which vanishes with the distance, where the clamp's own would be a mask pass.
    """

    @staticmethod
    def forward(ctx, x, y, same: bool):  # type: ignore[override]
        x_sq = (x * x).sum(-1, keepdim=True)
        y_sq = x_sq if same else (y * y).sum(-1, keepdim=True)
        ctx.save_for_backward(x, y)
        ctx.same = same
        # one (n, m) allocation: fresh pages cost more than the in-place passes on them
        return (x_sq + y_sq.mT).addmm_(x, y.mT, alpha=-2.0).clamp_min_(0)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, y = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad[:2]
        if ctx.same:
            both = grad + grad.mT
            return (2.0 * (both.sum(1, keepdim=True) * x - both @ x) if need_x or need_y else None), None, None
        grad_x = 2.0 * (grad.sum(1, keepdim=True) * x - grad @ y) if need_x else None
        grad_y = 2.0 * (grad.sum(0).unsqueeze(1) * y - grad.mT @ x) if need_y else None
        return grad_x, grad_y, None


def pairwise_sqeuclidean(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    r"""``(n, m)`` squared distances of 2-D point sets as :func:`sqeuclidean`, for costs that are only ever
    differentiated once: the backward is one GEMM per differentiable side (one when ``y`` is None, the self-cost of
    ``x``) and passes the gradient straight through the clamp at 0 (:class:`_SquaredDistances`)."""
    return _SquaredDistances.apply(x, x if y is None else y, y is None)


def covariance_factors(
    factors: torch.Tensor | None = None,
    covariances: torch.Tensor | None = None,
    ridge: float = 0.0,
) -> torch.Tensor:
    r"""Factors ``F`` with :math:`F^\top F = \Sigma + \text{ridge}\, I`, as few rows as possible.

    Args:
        factors: ``(C, r, d)`` factors (e.g. centred, scaled samples, or the float64 eigen-factors of
            :meth:`~datasetflow.data.dataset.LabeledDataset.class_stats`), or None.
        covariances: ``(C, d, d)`` covariance matrices, used when ``factors`` is None.
        ridge: non-negative value added to the diagonal of every covariance.

    Returns:
        ``factors`` as they are when given and there is no ridge. Otherwise
        :math:`F = \Lambda^{1/2} V^\top` from a float64 eigendecomposition of
        :math:`\Sigma + \text{ridge}\, I` (formed in float64; eigenvalues below
        :math:`d\,\varepsilon_{64}\lambda_{\max}` are set to 0, see
        :func:`~datasetflow.data.moments.covariance_factor`), ``(C, r', d)`` with ``r'`` the largest
        numerical rank (``d`` with a ridge), in the input's dtype. Differentiable for every
        Bures-Wasserstein use (losses that depend on :math:`F^\top F`).
    """
    if factors is not None and ridge == 0.0:
        return factors
    if factors is not None:
        f64 = factors.to(torch.float64)
        covariances64, dtype = f64.mT @ f64, factors.dtype
    elif covariances is not None:
        covariances64, dtype = covariances.to(torch.float64), covariances.dtype
    else:
        raise InvalidArgumentError("covariance_factors needs factors or covariances, got neither.")
    if ridge:
        eye = torch.eye(covariances64.shape[-1], dtype=torch.float64, device=covariances64.device)
        covariances64 = covariances64 + ridge * eye
    return covariance_factor(covariances64).to(dtype)


#: Class-pair products ``K_ij`` are formed and reduced in batches of at most this many entries.
_PAIR_BATCH_ELEMENTS = 1 << 24


def _used_rows(factors: torch.Tensor) -> list[int]:
    """Rows of each ``(r, d)`` factor up to its last non-zero one (factors are zero-padded at the end)."""
    with torch.no_grad():
        nonzero = (factors != 0).any(dim=-1)  # (C, r)
        last = torch.where(nonzero, torch.arange(1, factors.shape[1] + 1, device=factors.device), 0).amax(dim=-1)
    return last.tolist()


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive integers in a sorted list, as ``(first, last + 1)``."""
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and runs[-1][1] == v:
            runs[-1] = (runs[-1][0], v + 1)
        else:
            runs.append((v, v + 1))
    return runs


def _pair_products(factors1, factors2, pairs: list[tuple[int, int]], r1: int, r2: int) -> torch.Tensor:
    r"""The transposed products :math:`K^\top = F_j F_i^\top` ``(P, r2, r1)`` of the class pairs ``pairs`` (cut to
    ``r1``, ``r2`` rows); :math:`\|K^\top\|_* = \|K\|_*`.

    All pairs: one GEMM. Otherwise one GEMM per source class and run of consecutive target classes,
    ``(k r2, d) @ (d, r1)``: no gathered copy of
    the factors (whose backward would be a scatter-add), the same products when the two families are one, and
    each block already contiguous (the transposed ``K`` blocks cost a strided copy of the whole batch).
    """
    second = factors2[:, :r2]
    num1, num2 = factors1.shape[0], factors2.shape[0]
    if len(pairs) == num1 * num2 and pairs == [(i, j) for i in range(num1) for j in range(num2)]:
        # every pair, in order: one (C2 r2, d) @ (d, C1 r1) GEMM (faster than C1 thinner ones, forward and backward)
        product = second.reshape(num2 * r2, -1) @ factors1[:, :r1].reshape(num1 * r1, -1).mT
        return product.view(num2, r2, num1, r1).permute(2, 0, 1, 3).reshape(num1 * num2, r2, r1)
    by_row: dict[int, list[int]] = {}
    for i, j in pairs:
        by_row.setdefault(i, []).append(j)
    blocks, order = [], []
    for i, cols in by_row.items():
        for lo, hi in _runs(sorted(cols)):
            right = second[lo:hi].reshape((hi - lo) * r2, -1)
            product = right @ factors1[i, :r1].mT  # ((hi - lo) r2, r1)
            blocks.append(product.view(hi - lo, r2, r1))
            order.extend((i, j) for j in range(lo, hi))
    stacked = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    position = {pair: k for k, pair in enumerate(order)}
    index = [position[pair] for pair in pairs]
    if index == list(range(len(index))):
        return stacked
    return stacked[torch.tensor(index, device=stacked.device)]


class _SymmetricGram(torch.autograd.Function):
    """``F F^T`` of ``(k, d)`` rows with a one-GEMM backward ``(G + G^T) F`` (autograd's would be two GEMMs)."""

    @staticmethod
    def forward(ctx, rows):  # type: ignore[override]
        ctx.save_for_backward(rows)
        return rows @ rows.mT

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (rows,) = ctx.saved_tensors
        return (grad + grad.mT) @ rows


def class_gram(factors1: torch.Tensor, factors2: torch.Tensor | None = None) -> torch.Tensor:
    r"""Every class-pair product at once: the Gram matrix of the stacked factor rows, ``(C1 r1, C2 r2)``.

    With ``factors1`` ``(C1, r1, d)`` and ``factors2`` ``(C2, r2, d)``, entry ``(i r1 + p, j r2 + q)`` is
    :math:`(F_i F_j^\top)_{pq}`, so the ``(r1, r2)`` block ``(i, j)`` is the product :math:`K_{ij}` whose nuclear
    norm is the Bures trace term (:func:`bures_wasserstein_squared` takes it as ``gram``). One GEMM; with
    ``factors2=None`` (the classes against themselves) its backward is one GEMM too. Given the class-centred
    samples in the thin factors' padded layout (each class's factor divided by its one scale, ``gram_scales`` of
    :func:`bures_wasserstein_squared`), the same matrix holds every centred inner product
    :math:`(x_k - m_{y_k}) \cdot (x'_l - m'_{y'_l})`, from which the feature part of the OTDD ground cost follows
    (:func:`~datasetflow.costs.ground.otdd_cost_from_gram`): the two share one GEMM forward and one backward.
    """
    first = factors1.reshape(-1, factors1.shape[-1])
    if factors2 is None:
        return _SymmetricGram.apply(first)
    return first @ factors2.reshape(-1, factors2.shape[-1]).mT


def _gram_blocks(gram: torch.Tensor, shape: tuple[int, int, int, int], pairs, r1: int, r2: int) -> torch.Tensor:
    """The blocks ``K_ij[:r1, :r2]`` ``(P, r1, r2)`` of the class pairs ``pairs`` from :func:`class_gram`."""
    num1, rows1, num2, rows2 = shape
    blocks = gram.view(shape)
    if (r1, r2) == (rows1, rows2) and pairs == [(i, j) for i in range(num1) for j in range(num2)]:
        return blocks.permute(0, 2, 1, 3).reshape(num1 * num2, r1, r2)
    first = torch.tensor([i for i, _ in pairs], device=gram.device)
    second = torch.tensor([j for _, j in pairs], device=gram.device)
    return blocks[first, :r1, second, :r2]


def _trace_terms(factors1, factors2, rows, cols, symmetric: bool, gram=None) -> torch.Tensor:
    r""":math:`\|F_i F_j^\top\|_*` for the class pairs ``(rows[p], cols[p])``, ``(P,)``.

    Each factor is cut to its used rows, and pairs of equal cut shapes are reduced in one batched nuclear
    norm, so a rank-500 class padded to 784 rows costs a 500-row product, not a 784-row one. The products
    are formed by :func:`_pair_products`, or taken from ``gram`` (:func:`class_gram`) when given.
    """
    used1 = _used_rows(factors1)
    used2 = used1 if symmetric else _used_rows(factors2)
    groups: dict[tuple[int, int], list[int]] = {}
    pairs = list(zip(rows.tolist(), cols.tolist(), strict=True))
    for p, (i, j) in enumerate(pairs):
        groups.setdefault((max(used1[i], 1), max(used2[j], 1)), []).append(p)
    out = factors1.new_zeros(rows.numel())
    for (r1, r2), members in groups.items():
        step = max(1, _PAIR_BATCH_ELEMENTS // max(r1 * r2, min(r1, r2) ** 2, 1))
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            chosen = [pairs[p] for p in chunk]
            if gram is None:
                products = _pair_products(factors1, factors2, chosen, r1, r2)
            else:
                shape = (factors1.shape[0], factors1.shape[1], factors2.shape[0], factors2.shape[1])
                products = _gram_blocks(gram, shape, chosen, r1, r2)
            out = out.index_put((torch.tensor(chunk, device=rows.device),), nuclear_norm(products))
    return out


def bures_wasserstein_squared(
    means1: torch.Tensor,
    factors1: torch.Tensor | None,
    means2: torch.Tensor,
    factors2: torch.Tensor | None,
    *,
    variances1: torch.Tensor | None = None,
    variances2: torch.Tensor | None = None,
    diagonal: bool = False,
    symmetric: bool = False,
    gram: torch.Tensor | None = None,
    gram_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""Squared Bures-Wasserstein distances between all pairs of Gaussians, ``(C1, C2)``.

    Args:
        means1: ``(C1, d)`` means.
        factors1: ``(C1, r1, d)`` covariance factors (:math:`\Sigma = F^\top F`); see
            :func:`covariance_factors`. Ignored when ``diagonal``.
        means2, factors2: the same for the second family, ``(C2, d)``, ``(C2, r2, d)``.
        variances1, variances2: ``(C, d)`` diagonals, used when ``diagonal`` is True.
        diagonal: use only the diagonal of the covariances; then
            :math:`W_2^2 = \|m_1 - m_2\|^2 + \|\sqrt{v_1} - \sqrt{v_2}\|^2`.
        symmetric: the two families are the same (``C1 == C2``): only the upper triangle is
            computed and the diagonal is exactly 0.
        gram: :func:`class_gram` of the two factors (``factors2=None`` when ``symmetric``), already formed for
            another use; the trace terms are then read from its blocks instead of new products.
        gram_scales: ``(C1,)`` and ``(C2,)`` positive scales when ``gram`` is that of rows ``F_i / s_i`` (each
            class's factor divided by one number): the trace term of pair ``(i, j)`` is then
            :math:`s_i s_j \|(F_i / s_i)(F_j / s_j)^\top\|_*`.

    Returns:
        ``(C1, C2)`` tensor of squared distances, clipped at 0, differentiable with respect to
        every input (finite gradients for rank-deficient and repeated-eigenvalue covariances).
    """
    mean_term = sqeuclidean(means1, means2)
    if diagonal:
        if variances1 is None or variances2 is None:
            raise InvalidArgumentError("diagonal=True needs variances1 and variances2 of shape (C, d).")
        roots1, roots2 = safe_sqrt(variances1), safe_sqrt(variances2)
        out = mean_term + sqeuclidean(roots1, roots2)
        if symmetric:
            out = out - torch.diag_embed(torch.diagonal(out))
        return out.clamp_min(0)
    if factors1 is None or factors2 is None:
        raise InvalidArgumentError("full-covariance Bures needs factors1 and factors2 of shape (C, r, d).")

    num1, num2 = means1.shape[0], means2.shape[0]
    trace1 = (factors1 * factors1).sum(dim=(-2, -1))
    trace2 = (factors2 * factors2).sum(dim=(-2, -1))
    if symmetric:
        rows, cols = torch.triu_indices(num1, num2, offset=1, device=means1.device)
    else:
        rows = torch.arange(num1, device=means1.device).repeat_interleave(num2)
        cols = torch.arange(num2, device=means1.device).repeat(num1)
    cross = _trace_terms(factors1, factors1 if symmetric else factors2, rows, cols, symmetric, gram)
    if gram is not None and gram_scales is not None:
        cross = cross * (gram_scales[0][rows] * gram_scales[1][cols])
    flat = trace1[rows] + trace2[cols] - 2.0 * cross + mean_term[rows, cols]
    out = torch.zeros(num1, num2, dtype=flat.dtype, device=flat.device).index_put((rows, cols), flat)
    if symmetric:
        out = out + out.mT
    return out.clamp_min(0)
