r"""Ground costs as operators: dense matrices, or costs defined implicitly by point clouds.

Solvers never need more from a cost than row blocks, so an implicitly defined cost such
as the OTDD ground cost

.. math:: c((x, y), (x', y')) = \lambda_x \|x - x'\|^2 + \lambda_y L[y, y']

(``L`` a ``C1 x C2`` label-to-label matrix) is evaluated block by block and an ``n x m``
matrix is only materialised when the dense backend is chosen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from ..errors import InvalidArgumentError, ShapeMismatchError
from .gaussian import pairwise_sqeuclidean

__all__ = ["CostOperator", "DenseCost", "OTDDCost", "otdd_cost_from_gram"]


class CostOperator(ABC):
    """An ``n x m`` cost matrix that can be evaluated by row blocks.

    Subclasses define :meth:`params` (the differentiable tensors the cost depends on) and
    :meth:`block` (rows ``start:stop`` as a function of those tensors). Everything else —
    dense evaluation, envelope gradients, chunked solvers — is built on these two.
    """

    shape: tuple[int, int]

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """Floating dtype of the cost values."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Device of the cost values."""

    @abstractmethod
    def params(self) -> tuple[torch.Tensor, ...]:
        """The tensors the cost is a differentiable function of."""

    @abstractmethod
    def block(self, start: int, stop: int, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of the cost, ``(stop - start, m)``, computed from ``params``
        (default: :meth:`params`). Differentiable with respect to ``params``."""

    def dense(self) -> torch.Tensor:
        """The full ``(n, m)`` matrix (differentiable)."""
        return self.block(0, self.shape[0])

    def weighted_mean(self, a: torch.Tensor, b: torch.Tensor) -> float:
        r""":math:`\sum_{ij} a_i b_j C_{ij}`, the cost scale used for relative regularisation."""
        total = 0.0
        with torch.no_grad():
            for start, stop in self.row_blocks():
                total += float(a[start:stop] @ self.block(start, stop) @ b)
        return total

    def row_blocks(self, max_elements: int = 1 << 22) -> list[tuple[int, int]]:
        """Row ranges whose blocks hold at most ``max_elements`` entries."""
        n, m = self.shape
        rows = max(1, max_elements // max(m, 1))
        return [(s, min(s + rows, n)) for s in range(0, n, rows)]

    def is_symmetric(self) -> bool:
        """True when the cost is known to satisfy ``C = C^T`` (the same cloud on both sides)."""
        return False

    def self_costs(self) -> tuple[CostOperator, CostOperator]:
        """The costs ``c(x, x)`` and ``c(y, y)`` used by debiased Sinkhorn divergences."""
        raise InvalidArgumentError(
            f"{type(self).__name__} does not define the self-costs a debiased divergence needs; "
            "use an OTDDCost (point clouds) or debiased=False."
        )

    def subset(self, rows: torch.Tensor, cols: torch.Tensor) -> CostOperator:
        """The ``(len(rows), len(cols))`` sub-cost ``C[rows][:, cols]`` (differentiable; minibatch OT)."""
        raise InvalidArgumentError(f"{type(self).__name__} cannot be restricted to a minibatch.")

    def subsets(self, rows: Sequence[torch.Tensor], cols: Sequence[torch.Tensor]) -> list[CostOperator]:
        """The sub-costs ``[C[rows[k]][:, cols[k]] for k]`` (minibatch OT's pairs); by default one :meth:`subset`
        each. Subclasses may share one gather between them (fewer ``(n, d)`` gradients in the backward)."""
        return [self.subset(r, c) for r, c in zip(rows, cols, strict=True)]

    def factors(self, params: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """An exact factorisation ``C = A B^T`` (``A`` of shape ``(n, k)``, ``B`` of shape ``(m, k)``),
        differentiable with respect to ``params``, or None when the cost has none (low-rank OT then
        multiplies by row blocks)."""
        return None

    def strata(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Class indices ``(n,)`` and ``(m,)`` of the rows and columns (minibatches are drawn per class),
        or None."""
        return None

    def num_classes(self) -> int:
        """The number of classes the cost separates (0 for a cost without labels)."""
        return 0


class DenseCost(CostOperator):
    """A precomputed ``(n, m)`` cost matrix, optionally with the self-costs of its two sides (``(n, n)`` and
    ``(m, m)`` cost operators) for debiased divergences."""

    def __init__(self, matrix: torch.Tensor, self_costs: tuple[CostOperator, CostOperator] | None = None) -> None:
        if matrix.ndim != 2:
            raise ShapeMismatchError(f"cost matrix M must have shape (n, m), got {tuple(matrix.shape)}.")
        if self_costs is not None and (
            self_costs[0].shape != (matrix.shape[0],) * 2 or self_costs[1].shape != (matrix.shape[1],) * 2
        ):
            raise ShapeMismatchError(
                f"self_costs of a {tuple(matrix.shape)} cost must be {(matrix.shape[0],) * 2} and "
                f"{(matrix.shape[1],) * 2}, got {self_costs[0].shape} and {self_costs[1].shape}."
            )
        self.matrix = matrix
        self.shape = (matrix.shape[0], matrix.shape[1])
        self._self_costs = self_costs

    def self_costs(self) -> tuple[CostOperator, CostOperator]:  # noqa: D102
        if self._self_costs is None:
            return super().self_costs()
        return self._self_costs

    @property
    def dtype(self) -> torch.dtype:  # noqa: D102
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:  # noqa: D102
        return self.matrix.device

    def params(self) -> tuple[torch.Tensor, ...]:  # noqa: D102
        return (self.matrix,)

    def block(self, start: int, stop: int, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:  # noqa: D102
        matrix = self.matrix if params is None else params[0]
        if start == 0 and stop >= matrix.shape[0]:  # the whole matrix: no slice (its backward zero-fills a copy)
            return matrix
        return matrix[start:stop]

    def weighted_mean(self, a: torch.Tensor, b: torch.Tensor) -> float:  # noqa: D102
        with torch.no_grad():
            return float(a @ self.matrix @ b)

    def subset(self, rows: torch.Tensor, cols: torch.Tensor) -> DenseCost:  # noqa: D102
        return DenseCost(self.matrix[rows][:, cols])


class OTDDCost(CostOperator):
    r"""The OTDD ground cost between two labeled point clouds, defined implicitly.

    .. math:: C_{ij} = \lambda_x \|x_i - x'_j\|^2 + \lambda_y L[y_i, y'_j]

    Args:
        x: ``(n, d)`` source features.
        x_target: ``(m, d)`` target features.
        labels: ``(n,)`` source class indices into the rows of ``label_matrix``.
        labels_target: ``(m,)`` target class indices into its columns.
        label_matrix: ``(C1, C2)`` label-to-label costs (squared W2), or None for a pure
            feature cost.
        feature_weight: :math:`\lambda_x \ge 0`.
        label_weight: :math:`\lambda_y \ge 0`.
        self_label_matrices: optional ``(L11, L22)`` of shapes ``(C1, C1)``, ``(C2, C2)``
            for :meth:`self_costs` (debiased divergences).

    Features are centred by a common shift before distances are formed, which leaves the
    cost unchanged and improves floating-point accuracy (``C(D, D)`` has a zero diagonal up
    to round-off of the *centred* norms).
    """

    def __init__(
        self,
        x: torch.Tensor,
        x_target: torch.Tensor,
        labels: torch.Tensor | None = None,
        labels_target: torch.Tensor | None = None,
        label_matrix: torch.Tensor | None = None,
        *,
        feature_weight: float = 1.0,
        label_weight: float = 1.0,
        self_label_matrices: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        if x.ndim != 2 or x_target.ndim != 2 or x.shape[1] != x_target.shape[1]:
            raise ShapeMismatchError(
                f"features must have shapes (n, d) and (m, d) with the same d, got {tuple(x.shape)} "
                f"and {tuple(x_target.shape)}."
            )
        if label_matrix is not None:
            if labels is None or labels_target is None:
                raise InvalidArgumentError("label_matrix needs labels and labels_target.")
            if label_matrix.ndim != 2:
                raise ShapeMismatchError(f"label_matrix must be (C1, C2), got {tuple(label_matrix.shape)}.")
        self.x, self.x_target = x, x_target
        self.labels, self.labels_target = labels, labels_target
        self.label_matrix = label_matrix
        self.feature_weight = float(feature_weight)
        self.label_weight = float(label_weight)
        self.self_label_matrices = self_label_matrices
        self.shape = (x.shape[0], x_target.shape[0])
        with torch.no_grad():
            self._shift = x.detach().mean(0) if x.shape[0] else None

    @property
    def dtype(self) -> torch.dtype:  # noqa: D102
        return self.x.dtype

    @property
    def device(self) -> torch.device:  # noqa: D102
        return self.x.device

    def params(self) -> tuple[torch.Tensor, ...]:  # noqa: D102
        if self.label_matrix is None:
            return (self.x, self.x_target)
        return (self.x, self.x_target, self.label_matrix)

    def block(self, start: int, stop: int, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:  # noqa: D102
        x, x_target, *rest = self.params() if params is None else params
        shift = self._shift
        if x is x_target and start == 0 and stop == x.shape[0]:  # a self-cost: one GEMM in the backward
            cost = pairwise_sqeuclidean(x - shift)
        else:
            cost = pairwise_sqeuclidean(x[start:stop] - shift, x_target - shift)
        if self.feature_weight != 1.0:
            cost = cost.mul_(self.feature_weight)
        if rest:
            # L[y_i, y'_j] as (L[y_i, :]) @ onehot(y')^T: each sum has one non-zero term, so it is exact, and its
            # backward is a GEMM plus a C1-row index_add instead of a scatter-add of the whole (n, m) gradient
            label_rows = rest[0][self.labels[start:stop]]
            onehot = torch.nn.functional.one_hot(self.labels_target, rest[0].shape[1]).to(cost.dtype)
            cost = cost.addmm_(label_rows, onehot.mT, alpha=self.label_weight)
        return cost

    def factors(self, params: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The exact factorisation :math:`C = A B^\top` with ``d + 2 + C2`` columns
        (``d`` features, two squared-norm columns, one column per target class):

        .. math:: A_i = \big(-2\lambda_x \tilde x_i,\; \lambda_x|\tilde x_i|^2,\; 1,\; \lambda_y L[y_i, :]\big),
                  \qquad B_j = \big(\tilde x'_j,\; 1,\; \lambda_x|\tilde x'_j|^2,\; e_{y'_j}\big),

        (:math:`\tilde x = x - s`, the common shift), so that ``C @ R = A @ (B.T @ R)`` costs
        ``O((n + m)(d + C2) r)`` and no ``n x m`` matrix is formed. Differentiable in ``params``.
        """
        x, x_target, *rest = self.params() if params is None else params
        xs, xt = x - self._shift, x_target - self._shift
        lam = self.feature_weight
        ones_n = xs.new_ones(xs.shape[0], 1)
        ones_m = xt.new_ones(xt.shape[0], 1)
        left = [-2.0 * lam * xs, lam * (xs * xs).sum(1, keepdim=True), ones_n]
        right = [xt, ones_m, lam * (xt * xt).sum(1, keepdim=True)]
        if rest:
            label_matrix = rest[0]
            left.append(self.label_weight * label_matrix[self.labels])
            right.append(torch.nn.functional.one_hot(self.labels_target, label_matrix.shape[1]).to(xt.dtype))
        return torch.cat(left, 1), torch.cat(right, 1)

    def subset(self, rows: torch.Tensor, cols: torch.Tensor) -> OTDDCost:  # noqa: D102
        return self.subsets([rows], [cols])[0]

    def subsets(self, rows: Sequence[torch.Tensor], cols: Sequence[torch.Tensor]) -> list[OTDDCost]:
        """The pairs' sub-costs from **one** gather of the features on each side, split into views.

        The same costs as one :meth:`subset` per pair, but the backward writes one ``(n, d)`` gradient for the
        whole set instead of a zero-filled ``(n, d)`` tensor per pair (measured on the paper-size re-purposing
        flow, 20 pairs of 250 points: 190 ms of zero-fills per step, most of the backward).
        """
        if len(rows) != len(cols):
            raise InvalidArgumentError(
                f"subsets needs as many row as column index sets, got {len(rows)} and {len(cols)}."
            )
        if not rows:
            return []
        all_rows, all_cols = torch.cat(list(rows)), torch.cat(list(cols))
        row_sizes, col_sizes = [int(r.numel()) for r in rows], [int(c.numel()) for c in cols]
        xs = self.x[all_rows].split(row_sizes)
        xts = self.x_target[all_cols].split(col_sizes)
        has_labels = self.labels is not None and self.labels_target is not None
        ys = self.labels[all_rows].split(row_sizes) if has_labels else [None] * len(rows)
        yts = self.labels_target[all_cols].split(col_sizes) if has_labels else [None] * len(cols)
        return [
            OTDDCost(
                x,
                xt,
                y,
                yt,
                self.label_matrix,
                feature_weight=self.feature_weight,
                label_weight=self.label_weight,
                self_label_matrices=self.self_label_matrices,
            )
            for x, xt, y, yt in zip(xs, xts, ys, yts, strict=True)
        ]

    def strata(self) -> tuple[torch.Tensor, torch.Tensor] | None:  # noqa: D102
        if self.labels is None or self.labels_target is None:
            return None
        return self.labels, self.labels_target

    def num_classes(self) -> int:  # noqa: D102
        if self.label_matrix is None:
            return 0
        return int(max(self.label_matrix.shape))

    def weighted_mean(self, a: torch.Tensor, b: torch.Tensor) -> float:
        r"""Closed form :math:`\lambda_x(|b|\,\overline{|x|^2} + |a|\,\overline{|x'|^2} - 2 \bar x \cdot \bar x')
        + \lambda_y p^\top L q` (``p``, ``q`` the class masses)."""
        with torch.no_grad():
            x = self.x.detach() - self._shift
            xt = self.x_target.detach() - self._shift
            mean_x, mean_xt = a @ x, b @ xt
            # (masses not summing to 1, e.g. one rank's rows of a sharded problem, weigh the norms by the other side)
            feature = b.sum() * (a @ (x * x).sum(1)) + a.sum() * (b @ (xt * xt).sum(1)) - 2.0 * mean_x @ mean_xt
            total = self.feature_weight * float(feature)
            if self.label_matrix is not None:
                num1, num2 = self.label_matrix.shape
                p = torch.zeros(num1, dtype=a.dtype, device=a.device).index_add(0, self.labels, a)
                q = torch.zeros(num2, dtype=b.dtype, device=b.device).index_add(0, self.labels_target, b)
                total += self.label_weight * float(p @ self.label_matrix.detach() @ q)
            return total

    def is_symmetric(self) -> bool:  # noqa: D102
        if self.x is not self.x_target or self.labels is not self.labels_target:
            return False
        return self.label_matrix is None or bool(torch.equal(self.label_matrix, self.label_matrix.mT))

    def self_costs(self) -> tuple[OTDDCost, OTDDCost]:  # noqa: D102
        if self.label_matrix is not None and self.self_label_matrices is None:
            return super().self_costs()
        l11, l22 = self.self_label_matrices if self.label_matrix is not None else (None, None)
        options = {"feature_weight": self.feature_weight, "label_weight": self.label_weight}
        return (
            OTDDCost(self.x, self.x, self.labels, self.labels, l11, **options),
            OTDDCost(self.x_target, self.x_target, self.labels_target, self.labels_target, l22, **options),
        )


def otdd_cost_from_gram(
    gram: torch.Tensor,
    rows: tuple[torch.Tensor, torch.Tensor],
    centred: tuple[torch.Tensor, torch.Tensor],
    labels: tuple[torch.Tensor, torch.Tensor],
    means: tuple[torch.Tensor, torch.Tensor],
    label_matrix: torch.Tensor,
    *,
    feature_weight: float = 1.0,
    label_weight: float = 1.0,
) -> torch.Tensor:
    r"""The dense OTDD ground cost ``(n, m)`` of :class:`OTDDCost`, read from the class-pair Gram matrix.

    ``gram`` (:func:`~datasetflow.costs.gaussian.class_gram` of the class-centred samples stacked in the padded
    ``(C, r, d)`` layout of the thin class factors, ``(C1 r1, C2 r2)``) holds :math:`u_k \cdot u'_l` at row
    ``rows[0][k]`` and column ``rows[1][l]``, with :math:`u_k = x_k - m_{y_k}` the class-centred features
    (``centred``, ``(n, d)`` and ``(m, d)``). With means taken relative to a common shift
    :math:`c` (the source's mean, which leaves every difference unchanged and keeps the terms small),
    :math:`\tilde m = m - c` and :math:`\Delta_{ab} = \tilde m_a - \tilde m'_b`,

    .. math:: \|x_k - x'_l\|^2 = \|u_k\|^2 + \|u'_l\|^2 + \|\Delta_{ab}\|^2 - 2 u_k \cdot u'_l
              + 2 u_k \cdot \Delta_{ab} - 2 u'_l \cdot \Delta_{ab}, \qquad a = y_k,\ b = y'_l,

    so the cost is :math:`-2\lambda_x` times the Gram entries plus one ``(n, 2 + C1 + C2) @ (2 + C1 + C2, m)``
    GEMM for the rank-one and per-class terms, including :math:`\lambda_y L[a, b]` (``label_matrix``,
    ``(C1, C2)``), in one pass over the entries. The ``d``-wide products happen once, in the Gram that the Bures
    trace terms share. Differentiable in every input.
    """
    num1, num2 = label_matrix.shape
    lam = float(feature_weight)
    picked = gram
    for dim, index in enumerate(rows):  # sorted classes without padding: the Gram already is in point order
        if index.numel() != picked.shape[dim] or not bool(
            (index == torch.arange(index.numel(), device=index.device)).all()
        ):
            picked = picked.index_select(dim, index)
    u1, u2 = centred
    y1, y2 = labels
    with torch.no_grad():  # the source's mean
        shift = torch.bincount(y1, minlength=num1).to(means[0].dtype) @ means[0].detach() / max(u1.shape[0], 1)
    m1, m2 = means[0] - shift, means[1] - shift
    delta = m1[:, None, :] - m2[None, :, :]  # (C1, C2, d)
    delta_sq = (delta * delta).sum(-1)  # (C1, C2)
    # u_k . m~'_b (n, C2), u_k . m~_a (n,), u'_l . m~_a (m, C1), u'_l . m~'_b (m,); the left GEMM operand's
    # columns: |u|^2 + 2 u . m~_a, 1, |D_ab|^2 - 2 u . m~'_b (+ the label term), e_a; the right one's: 1,
    # |u'|^2 + 2 u' . m~'_b, e_b, -2 u' . m~_a
    u1_m2 = u1 @ m2.mT
    u1_own = (u1 * m1.index_select(0, y1)).sum(1)
    u2_m1 = u2 @ m1.mT
    u2_own = (u2 * m2.index_select(0, y2)).sum(1)
    onehot1 = torch.nn.functional.one_hot(y1, num1).to(u1.dtype)
    onehot2 = torch.nn.functional.one_hot(y2, num2).to(u2.dtype)
    ones1, ones2 = u1.new_ones(u1.shape[0], 1), u2.new_ones(u2.shape[0], 1)
    left = torch.cat(
        [
            (lam * ((u1 * u1).sum(1) + 2.0 * u1_own))[:, None],
            ones1,
            lam * (delta_sq.index_select(0, y1) - 2.0 * u1_m2) + label_weight * label_matrix.index_select(0, y1),
            onehot1,
        ],
        1,
    )
    right = torch.cat(
        [ones2, (lam * ((u2 * u2).sum(1) + 2.0 * u2_own))[:, None], onehot2, (-2.0 * lam) * u2_m1],
        1,
    )
    # one pass over the (n, m) entries; the Gram itself is shared with the Bures terms (a gathered copy is not)
    if picked is gram:
        return torch.addmm(gram, left, right.mT, beta=-2.0 * lam)
    return picked.addmm_(left, right.mT, beta=-2.0 * lam)
