r"""Label costs: the one class-to-class cost protocol.

A label cost compares the classes of two labeled datasets. It works in two steps:

1. :meth:`LabelCost.summarize` reduces a dataset to what the cost needs per class: Gaussian
   statistics (:class:`~datasetflow.data.dataset.ClassStats`), the class point clouds
   (:class:`ClassClouds`) or the sorted projections of every class (:class:`ClassQuantiles`).
2. :meth:`LabelCost.pairwise` compares two summaries and returns the ``(C1, C2)`` matrix
   :math:`L[c, c'] \approx W_2^2(\alpha_c, \alpha'_{c'})` (``pairwise(a)`` compares a summary with
   itself: symmetric, zero diagonal).

``pairwise`` also accepts :class:`LabeledDataset` s directly and summarises them. A summary is
computed once per dataset, so comparing ``N`` datasets costs ``N`` summaries and ``N^2`` cheap
comparisons, and a flow towards a fixed target summarises the target once.

=============  =============================================  ================================
name           :math:`L[c, c']`                               summary
=============  =============================================  ================================
``gaussian``   Bures-Wasserstein closed form (alias ``bures``)  class means and covariances
``exact``      exact OT between the class clouds (POT)        class clouds and weights
``sinkhorn``   debiased entropic OT between the class clouds  class clouds and weights
``sliced``     :math:`\mathrm{SW}_p^p` on shared directions      sorted class projections
=============  =============================================  ================================

The OTDD (:func:`~datasetflow.distances.otdd.otdd`), the WoW distance
(:func:`~datasetflow.distances.wow.wow`) and the MMD between class mixtures
(:func:`~datasetflow.distances.mmd.mmd_sw`) all take a label cost object or its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..costs.gaussian import bures_wasserstein_squared, class_gram, covariance_factors, sqeuclidean
from ..costs.ground import OTDDCost, otdd_cost_from_gram
from ..data.dataset import ClassStats, LabeledDataset
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..solvers.api import DEFAULT_RELATIVE_REG, relative_reg, solve
from ..solvers.sliced import (
    DEFAULT_PROJECTIONS,
    SortedClasses,
    check_n_projections,
    check_p,
    check_projections,
    common_grid,
    draw_directions,
    on_grid,
    pairwise_sliced,
    sort_classes,
)

__all__ = [
    "LabelCost",
    "GaussianLabelCost",
    "ExactLabelCost",
    "SinkhornLabelCost",
    "SlicedLabelCost",
    "ClassClouds",
    "ClassQuantiles",
    "LABEL_COSTS",
    "LABEL_COST_ALIASES",
    "get_label_cost",
    "label_cost_names",
    "class_sliced_wasserstein",
]


class LabelCost(ABC):
    """Computes the ``(C1, C2)`` matrix of (squared W2-like) costs between classes.

    Subclasses implement :meth:`summarize` and :meth:`pairwise`. Attributes:

    * ``name``: the registry name (``"gaussian"``, ``"exact"``, ``"sinkhorn"``, ``"sliced"``).
    * ``uses_stats``: whether the summary is a :class:`ClassStats`, so that statistics given as
      parameters (jd-fl and jd-vl flows) can stand in for the samples.
    * ``order``: the ``p`` of the returned :math:`W_p^p` values (2, or the sliced cost's ``p``).
    """

    name: str = "label-cost"
    uses_stats: bool = False
    order: float = 2.0

    @abstractmethod
    def summarize(self, dataset: LabeledDataset | None = None, *, stats: ClassStats | None = None) -> Any:
        """What :meth:`pairwise` compares, for every class of ``dataset`` (or from ``stats``)."""

    @abstractmethod
    def _compare(self, summary_a: Any, summary_b: Any | None) -> torch.Tensor:
        """``(C1, C2)`` costs between two summaries (``summary_b=None``: symmetric, zero diagonal)."""

    def pairwise(self, a: Any, b: Any | None = None) -> torch.Tensor:
        """Costs between every class of ``a`` and every class of ``b``, ``(C1, C2)``.

        Args:
            a, b: summaries from :meth:`summarize`, or :class:`LabeledDataset` s (summarised here).
                With ``b=None`` the classes of ``a`` are compared with each other: the matrix is
                symmetric with an exactly zero diagonal.

        Returns:
            ``(C1, C2)`` tensor, differentiable with respect to the features (and the statistics)
            the summaries were built from.
        """
        summary_a = self.summarize(a) if isinstance(a, LabeledDataset) else a
        if b is None:
            return self._compare(summary_a, None)
        if isinstance(b, LabeledDataset):
            b = self.summarize(b.to(device=_device_of(summary_a), dtype=_dtype_of(summary_a)))
        return self._compare(summary_a, b)

    def between(
        self,
        source: LabeledDataset,
        target: LabeledDataset | None = None,
        *,
        source_stats: ClassStats | None = None,
        target_stats: ClassStats | None = None,
    ) -> torch.Tensor:
        """``pairwise(summarize(source, stats=source_stats), summarize(target, stats=target_stats))``;
        with ``target`` and ``target_stats`` None, the source's classes against each other."""
        first = self.summarize(source, stats=source_stats)
        if target is None and target_stats is None:
            return self._compare(first, None)
        if target is not None:
            target = target.to(device=_device_of(first), dtype=_dtype_of(first))
        return self._compare(first, self.summarize(target, stats=target_stats))

    def dense_ground_cost(
        self,
        source: LabeledDataset,
        target: LabeledDataset,
        source_summary: Any = None,
        target_summary: Any = None,
        *,
        feature_weight: float = 1.0,
        label_weight: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        r"""The label matrix ``(C1, C2)`` and the dense OTDD ground cost ``(n, m)``
        (:math:`\lambda_x \|x - x'\|^2 + \lambda_y L[y, y']`, as :meth:`OTDDCost.dense`) computed together, or None.

        A label cost returns them when it can share work between the two (the Gaussian cost on classes of at most
        ``d`` samples of equal weight shares one Gram matrix); None (the default) means: use :meth:`pairwise` and an
        :class:`~datasetflow.costs.ground.OTDDCost`. ``target is source`` asks for the source's self-cost. The
        summaries, when given, must be ``summarize(source)`` and ``summarize(target)`` (computed here otherwise).
        """
        return None

    def config(self) -> dict[str, Any]:
        """The settings of this cost (JSON-friendly)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({options})"


def _device_of(summary: Any) -> torch.device:
    return summary.device if hasattr(summary, "device") else summary.means.device


def _dtype_of(summary: Any) -> torch.dtype:
    return summary.dtype if hasattr(summary, "dtype") else summary.means.dtype


def _refuse_stats(cost: LabelCost, stats: ClassStats | None) -> None:
    if stats is not None:
        raise InvalidArgumentError(
            f"{type(cost).__name__} compares class samples and cannot use ClassStats parameters; "
            "use the Gaussian label cost (inner='gaussian') for flows that move class statistics."
        )


def _check_dims(dim1: int, dim2: int) -> None:
    if dim1 != dim2:
        raise ShapeMismatchError(f"source classes have dimension {dim1} but target classes have {dim2}.")


# ---------------------------------------------------------------------- Gaussian (Bures)
class GaussianLabelCost(LabelCost):
    r"""Bures-Wasserstein label cost: each class is :math:`N(m_c, \Sigma_c)`.

    .. math:: L[c, c'] = \|m_c - m_{c'}\|^2 + \operatorname{tr}\Sigma_c + \operatorname{tr}\Sigma_{c'}
              - 2\operatorname{tr}(\Sigma_c^{1/2}\Sigma_{c'}\Sigma_c^{1/2})^{1/2}

    The summary is a :class:`ClassStats` (unbiased class covariances by default, see
    :meth:`~datasetflow.data.dataset.LabeledDataset.class_stats`). For classes with ``n_c < d``
    the trace term is the nuclear norm of :math:`A_c A_{c'}^\top` (centred, scaled samples), an
    ``n_c x n_{c'}`` problem; otherwise a ``d x d`` square root with a stable backward is used.
    Statistics that hold only diagonal variances (jd-vl particles) use the diagonal formula.

    Args:
        diagonal: keep only the diagonal of the covariances (``O(C d)`` memory):
            :math:`L = \|m - m'\|^2 + \|\sqrt{v} - \sqrt{v'}\|^2`.
        ridge: add ``ridge * I`` to every covariance (regularises single-sample classes).
        unbiased: unbiased (default) or maximum-likelihood covariances.
    """

    name = "gaussian"
    uses_stats = True

    def __init__(self, *, diagonal: bool = False, ridge: float = 0.0, unbiased: bool = True) -> None:
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
            raise InvalidArgumentError(f"ridge must be a non-negative float, got {ridge!r}.")
        self.diagonal, self.ridge, self.unbiased = bool(diagonal), float(ridge), bool(unbiased)

    def config(self) -> dict[str, Any]:  # noqa: D102
        return {"name": self.name, "diagonal": self.diagonal, "ridge": self.ridge, "unbiased": self.unbiased}

    def summarize(self, dataset=None, *, stats=None) -> ClassStats:  # noqa: D102
        if stats is not None:
            return stats
        if dataset is None:
            raise InvalidArgumentError("GaussianLabelCost.summarize needs a dataset or its ClassStats.")
        return dataset.class_stats(unbiased=self.unbiased, diagonal=self.diagonal)

    def _compare(self, stats1: ClassStats, stats2: ClassStats | None) -> torch.Tensor:
        symmetric = stats2 is None
        stats2 = stats1 if symmetric else stats2
        _check_dims(stats1.dim, stats2.dim)
        only_variances = any(s.factors is None and s.covariances is None for s in (stats1, stats2))
        if self.diagonal or only_variances:
            return bures_wasserstein_squared(
                stats1.means,
                None,
                stats2.means,
                None,
                variances1=stats1.diagonal_variances() + self.ridge,
                variances2=stats2.diagonal_variances() + self.ridge,
                diagonal=True,
                symmetric=symmetric,
            )
        factors1 = _stat_factors(stats1, self.ridge)
        factors2 = factors1 if symmetric else _stat_factors(stats2, self.ridge)
        return bures_wasserstein_squared(stats1.means, factors1, stats2.means, factors2, symmetric=symmetric)

    def dense_ground_cost(  # noqa: D102
        self, source, target, source_summary=None, target_summary=None, *, feature_weight=1.0, label_weight=1.0
    ):
        # thin factors (every class 2 <= n_c <= d, equal positive weights within each class) on both sides,
        # padded to at most 1.5 n rows (so the cross and self Grams alike are at most 2.25 times their costs): then
        # the Gram of the unscaled centred samples holds the feature cost's inner products as its entries and, up
        # to one scale per class pair, the Bures products as its blocks (one GEMM forward and one backward for
        # both, instead of two each)
        same = target is source
        if self.diagonal or self.ridge or source.dim != target.dim:
            return None
        layouts = []
        for data in (source,) if same else (source, target):
            counts = torch.bincount(data.y, minlength=data.num_classes)
            if bool((counts > data.dim).any() | (counts < 2).any()) or data.weights.requires_grad:
                return None
            position, scale = data.thin_factor_layout(unbiased=self.unbiased)
            class_scale = scale.new_zeros(data.num_classes).index_put((data.y,), scale)
            padded_rows = data.num_classes * int(counts.max())
            if not bool((scale > 0).all() & (scale == class_scale[data.y]).all()) or 2 * padded_rows > 3 * len(data):
                return None
            layouts.append((data.y * int(counts.max()) + position, class_scale.to(data.x.dtype)))
        first_layout = layouts[0]
        second_layout = first_layout if same else layouts[1]
        stats1 = source_summary if source_summary is not None else self.summarize(source)
        stats2 = stats1 if same else (target_summary if target_summary is not None else self.summarize(target))
        centred_rows1 = stats1.factors / first_layout[1][:, None, None]
        centred_rows2 = centred_rows1 if same else stats2.factors / second_layout[1][:, None, None]
        gram = class_gram(centred_rows1, None if same else centred_rows2)
        label_matrix = bures_wasserstein_squared(
            stats1.means,
            stats1.factors,
            stats2.means,
            stats2.factors,
            symmetric=same,
            gram=gram,
            gram_scales=(first_layout[1], second_layout[1]),
        )
        centred1 = source.x - stats1.means.index_select(0, source.y)
        centred2 = centred1 if same else target.x - stats2.means.index_select(0, target.y)
        cost = otdd_cost_from_gram(
            gram,
            (first_layout[0], second_layout[0]),
            (centred1, centred2),
            (source.y, target.y),
            (stats1.means, stats2.means),
            label_matrix,
            feature_weight=feature_weight,
            label_weight=label_weight,
        )
        return label_matrix, cost


def _stat_factors(stats: ClassStats, ridge: float) -> torch.Tensor:
    """Covariance factors of class statistics (thin sample factors when possible)."""
    return covariance_factors(stats.factors, stats.covariances, ridge)


# ---------------------------------------------------------------------- class clouds
@dataclass(frozen=True)
class ClassClouds:
    """The point cloud of every class: ``points[c]`` ``(n_c, d)`` and ``weights[c]`` ``(n_c,)`` (summing to 1)."""

    points: tuple[torch.Tensor, ...]
    weights: tuple[torch.Tensor, ...]

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return self.points[0].shape[1]

    @property
    def device(self) -> torch.device:
        """Device of the points."""
        return self.points[0].device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the points."""
        return self.points[0].dtype

    @classmethod
    def of(cls, dataset: LabeledDataset) -> ClassClouds:
        """The clouds of ``dataset``'s classes, with their normalised sample weights."""
        points, weights = [], []
        for c in range(dataset.num_classes):
            mask = dataset.y == c
            w = dataset.weights[mask]
            points.append(dataset.x[mask])
            weights.append(w / w.sum())
        return cls(tuple(points), tuple(weights))


class _CloudLabelCost(LabelCost):
    """Label costs computed by an OT problem between every pair of class point clouds."""

    def _solve(self, x1, w1, x2, w2) -> torch.Tensor:
        raise NotImplementedError

    def summarize(self, dataset=None, *, stats=None) -> ClassClouds:  # noqa: D102
        _refuse_stats(self, stats)
        if dataset is None:
            raise InvalidArgumentError(f"{type(self).__name__}.summarize needs a dataset.")
        return ClassClouds.of(dataset)

    def _compare(self, clouds1: ClassClouds, clouds2: ClassClouds | None) -> torch.Tensor:
        symmetric = clouds2 is None
        clouds2 = clouds1 if symmetric else clouds2
        _check_dims(clouds1.dim, clouds2.dim)
        num1, num2 = len(clouds1.points), len(clouds2.points)
        values, index = [], []
        for i in range(num1):
            for j in range(i + 1 if symmetric else 0, num2):
                values.append(self._solve(clouds1.points[i], clouds1.weights[i], clouds2.points[j], clouds2.weights[j]))
                index.append((i, j))
        out = clouds1.points[0].new_zeros(num1, num2)
        if values:
            rows = torch.tensor([i for i, _ in index], device=out.device)
            cols = torch.tensor([j for _, j in index], device=out.device)
            out = out.index_put((rows, cols), torch.stack(values))
            if symmetric:
                out = out + out.mT
        return out


class ExactLabelCost(_CloudLabelCost):
    r"""Exact squared W2 between class point clouds (POT network simplex), envelope gradients.

    Pairs of clouds of at most two points each (e.g. many classes of two samples) skip the network
    simplex: every such ``2 x 2`` transport is solved in closed form, all pairs at once from one
    matrix of point-to-point squared distances. With marginals ``(p, 1 - p)`` and ``(q, 1 - q)`` the
    plan is ``[[t, p - t], [q - t, 1 - p - q + t]]``, linear in ``t``, so ``t`` is
    ``min(p, q)`` if :math:`C_{00} + C_{11} < C_{01} + C_{10}` and ``max(0, p + q - 1)`` otherwise
    (a one-point cloud is ``p = 1``). The value :math:`\sum P \odot C` carries the envelope gradient
    (and the derivative with respect to the weights).
    """

    name = "exact"

    def _solve(self, x1, w1, x2, w2):
        return solve(OTDDCost(x1, x2), w1, w2, method="exact").value

    def _compare(self, clouds1: ClassClouds, clouds2: ClassClouds | None) -> torch.Tensor:
        symmetric = clouds2 is None
        second = clouds1 if symmetric else clouds2
        _check_dims(clouds1.dim, second.dim)
        device = clouds1.device
        tiny1 = torch.tensor([p.shape[0] <= 2 for p in clouds1.points], device=device)
        tiny2 = tiny1 if symmetric else torch.tensor([p.shape[0] <= 2 for p in second.points], device=device)
        if not (bool(tiny1.any()) and bool(tiny2.any())):
            return super()._compare(clouds1, clouds2)
        wanted = torch.ones(tiny1.numel(), tiny2.numel(), dtype=torch.bool, device=device)
        if symmetric:
            wanted = torch.triu(wanted, diagonal=1)
        fast = wanted & tiny1[:, None] & tiny2[None, :]
        out = _two_point_exact(clouds1, second, *torch.nonzero(fast, as_tuple=True))
        others = torch.nonzero(wanted & ~fast).tolist()
        if others:
            values = [
                self._solve(clouds1.points[i], clouds1.weights[i], second.points[j], second.weights[j])
                for i, j in others
            ]
            index = torch.tensor(others, device=device).T
            out = out.index_put((index[0], index[1]), torch.stack(values).to(out))
        if symmetric:
            out = out + out.mT
        return out


def _two_point_exact(
    clouds1: ClassClouds, clouds2: ClassClouds, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``(C1, C2)`` exact W2^2 for the pairs ``(rows, cols)`` of clouds of one or two points (0 elsewhere)."""

    def ends(clouds: ClassClouds) -> tuple[torch.Tensor, torch.Tensor]:
        # indices of each class's first and last point in the concatenated points, and its first weight
        counts = torch.tensor([p.shape[0] for p in clouds.points], device=clouds.device)
        starts = torch.cumsum(counts, 0) - counts
        first = torch.stack([w[0] if w.shape[0] == 2 else torch.ones_like(w[0]) for w in clouds.weights])
        return torch.stack([starts, starts + counts - 1], 1), first

    out = clouds1.points[0].new_zeros(len(clouds1.points), len(clouds2.points))
    if rows.numel() == 0:
        return out
    index1, first1 = ends(clouds1)
    index2, first2 = ends(clouds2)
    points1 = torch.cat(list(clouds1.points))
    distances = sqeuclidean(points1, torch.cat(list(clouds2.points)).to(points1))  # one GEMM for all point pairs
    cost = distances[index1[rows][:, :, None], index2[cols][:, None, :]]  # (P, 2, 2)
    p, q = first1[rows].to(cost), first2[cols].to(cost)  # a one-point cloud has p = 1
    with torch.no_grad():
        diagonal_cheaper = (cost[:, 0, 0] + cost[:, 1, 1]) < (cost[:, 0, 1] + cost[:, 1, 0])
    t = torch.where(diagonal_cheaper, torch.minimum(p, q), (p + q - 1).clamp_min(0))
    plan = torch.stack([torch.stack([t, p - t], -1), torch.stack([q - t, 1 - p - q + t], -1)], -2)
    values = (plan * cost).sum(dim=(-2, -1)).clamp_min(0)
    return out.index_put((rows, cols), values)


class SinkhornLabelCost(_CloudLabelCost):
    r"""Entropic squared W2 between class point clouds.

    Args:
        reg: absolute regularisation; default ``relative * mean cost`` of each class pair.
        relative: the fraction used when ``reg`` is None (default 0.05).
        debiased: use the Sinkhorn divergence so that :math:`L[c, c] = 0` (default True).
        max_iter, tol: Sinkhorn options.
    """

    name = "sinkhorn"

    def __init__(
        self,
        *,
        reg: float | None = None,
        relative: float = DEFAULT_RELATIVE_REG,
        debiased: bool = True,
        max_iter: int = 1000,
        tol: float = 1e-5,
    ) -> None:
        self.reg, self.relative, self.debiased = reg, relative, debiased
        self.max_iter, self.tol = max_iter, tol

    def config(self) -> dict[str, Any]:  # noqa: D102
        return {"name": self.name, "reg": self.reg, "relative": self.relative, "debiased": self.debiased}

    def _solve(self, x1, w1, x2, w2):
        cost = OTDDCost(x1, x2)
        eps = relative_reg(self.reg, cost.weighted_mean(w1.detach(), w2.detach()), self.relative)
        result = solve(
            cost, w1, w2, reg=eps, method="sinkhorn", debiased=self.debiased, max_iter=self.max_iter, tol=self.tol
        )
        return result.value.clamp_min(0)


# ---------------------------------------------------------------------- sliced
@dataclass(frozen=True)
class ClassQuantiles:
    """Sorted projections of every class on shared directions (the summary of :class:`SlicedLabelCost`).

    Attributes:
        sorted: the classes' sorted projections (``values`` ``(C, r, L)``, ``counts`` ``(C,)``).
        directions: the ``(L, d)`` directions they were projected on.
    """

    sorted: SortedClasses
    directions: torch.Tensor

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return self.directions.shape[1]

    @property
    def device(self) -> torch.device:
        """Device of the projections."""
        return self.sorted.values.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the projections."""
        return self.sorted.values.dtype


class SlicedLabelCost(LabelCost):
    r"""Sliced Wasserstein label cost :math:`L[c, c'] = \mathrm{SW}_p^p(\mu_c, \nu_{c'})`.

    Each class is the uniform cloud of its samples. Every class of every dataset is projected on
    the same ``L`` directions (one matrix product per dataset) and sorted; each 1-D transport is
    then exact, on the merged quantile grid of the two class sizes (see
    :mod:`~datasetflow.solvers.sliced`), and for ``p = 2`` all class pairs come from one Gram product.

    Args:
        n_projections: the number ``L`` of random directions (default 500).
        p: the order ``p >= 1`` (:attr:`order`).
        seed: seed of the directions: every dataset summarised by this cost (of the same dimension,
            dtype and device) is projected on the same directions.
        projections: explicit ``(L, d)`` directions instead (used as given).

    :meth:`summarize` also takes ``directions=`` (e.g. fresh directions at every flow step) and ``world=``
    (a dataset sharded over ranks: the classes of all shards, see :func:`~datasetflow.solvers.sliced.sort_classes`).
    """

    name = "sliced"

    def __init__(
        self, *, n_projections: int | None = None, p: float = 2, seed: int = 0, projections: Any = None
    ) -> None:
        self.order = check_p(p)
        self.seed = int(seed)
        if projections is not None:
            theta = torch.as_tensor(projections)
            if n_projections is not None and n_projections != theta.shape[0]:
                raise InvalidArgumentError(
                    f"n_projections={n_projections} disagrees with the {theta.shape[0]} rows of projections; "
                    "give one of them."
                )
            self.projections = theta
            self.n_projections = int(theta.shape[0])
        else:
            self.projections = None
            self.n_projections = check_n_projections(DEFAULT_PROJECTIONS if n_projections is None else n_projections)

    def config(self) -> dict[str, Any]:  # noqa: D102
        return {"name": self.name, "n_projections": self.n_projections, "p": self.order, "seed": self.seed}

    def directions(self, dim: int, like: torch.Tensor) -> torch.Tensor:
        """The ``(L, d)`` directions of this cost on the device and dtype of ``like``."""
        if self.projections is not None:
            return check_projections(self.projections, dim, like=like)
        generator = torch.Generator(device=like.device).manual_seed(self.seed)
        return draw_directions(self.n_projections, dim, generator=generator, dtype=like.dtype, device=like.device)

    def summarize(  # noqa: D102
        self, dataset=None, *, stats=None, directions: torch.Tensor | None = None, world: Any = None
    ) -> ClassQuantiles:
        _refuse_stats(self, stats)
        if dataset is None:
            raise InvalidArgumentError("SlicedLabelCost.summarize needs a dataset.")
        if directions is None:
            directions = self.directions(dataset.dim, dataset.x)
        else:
            directions = check_projections(directions, dataset.dim, like=dataset.x)
        return ClassQuantiles(sort_classes(dataset.x, dataset.y, dataset.num_classes, directions, world), directions)

    def _compare(self, first: ClassQuantiles, second: ClassQuantiles | None) -> torch.Tensor:
        if second is None:
            steps, (index,) = common_grid(first.sorted.counts)
            return pairwise_sliced(on_grid(first.sorted, index), None, steps, self.order)
        _check_dims(first.dim, second.dim)
        if second.directions is not first.directions and not torch.equal(
            second.directions.to(first.directions), first.directions
        ):
            raise InvalidArgumentError(
                "the two ClassQuantiles were projected on different directions; summarise both datasets with "
                "the same SlicedLabelCost (same seed) or pass the same directions."
            )
        steps, (index1, index2) = common_grid(first.sorted.counts, second.sorted.counts)
        values2 = on_grid(second.sorted, index2).to(device=first.device, dtype=first.dtype)
        return pairwise_sliced(on_grid(first.sorted, index1), values2, steps, self.order)


def class_sliced_wasserstein(
    source: LabeledDataset,
    target: LabeledDataset | None = None,
    *,
    projections: Any = None,
    n_projections: int | None = None,
    p: float = 2,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    r"""``(C1, C2)`` matrix :math:`\mathrm{SW}_p^p(\mu_c, \nu_{c'})` between every source and target class.

    The :class:`SlicedLabelCost` between two datasets (``target=None``: the source with itself,
    symmetric, zero diagonal). Directions: ``projections`` if given, else ``n_projections``
    (default 500) drawn from ``generator`` (fresh draws) or from ``seed`` (default 0).
    """
    if not isinstance(source, LabeledDataset) or not (target is None or isinstance(target, LabeledDataset)):
        raise InvalidArgumentError("source and target must be LabeledDatasets.")
    cost = SlicedLabelCost(n_projections=n_projections, p=p, seed=0 if seed is None else seed, projections=projections)
    directions = None
    if generator is not None and projections is None:
        directions = draw_directions(
            cost.n_projections, source.dim, generator=generator, dtype=source.x.dtype, device=source.x.device
        )
    first = cost.summarize(source, directions=directions)
    if target is None:
        return cost.pairwise(first)
    if target.dim != source.dim:
        raise ShapeMismatchError(f"source has dimension {source.dim} but target has {target.dim}.")
    second = cost.summarize(target.to(device=source.x.device, dtype=source.x.dtype), directions=first.directions)
    return cost.pairwise(first, second)


#: name -> label cost class; ``LABEL_COST_ALIASES`` maps other accepted names onto these.
LABEL_COSTS: dict[str, type[LabelCost]] = {
    "gaussian": GaussianLabelCost,
    "exact": ExactLabelCost,
    "sinkhorn": SinkhornLabelCost,
    "sliced": SlicedLabelCost,
}
LABEL_COST_ALIASES = {"bures": "gaussian", "sw": "sliced"}


def label_cost_names() -> Sequence[str]:
    """Every accepted name (registry names first, then aliases)."""
    return (*LABEL_COSTS, *LABEL_COST_ALIASES)


def get_label_cost(inner: str | LabelCost, **options: Any) -> LabelCost:
    """A label cost object from a name (``gaussian``/``bures``, ``exact``, ``sinkhorn``, ``sliced``) or an instance.

    ``options`` go to the class's constructor (e.g. ``n_projections`` for ``sliced``); unknown
    options raise an error that lists the valid ones.
    """
    if isinstance(inner, LabelCost):
        if options:
            raise InvalidArgumentError(f"label cost options {sorted(options)} apply to a name, not to an instance.")
        return inner
    key = LABEL_COST_ALIASES.get(inner, inner) if isinstance(inner, str) else None
    if key not in LABEL_COSTS:
        raise InvalidArgumentError(
            f"the label cost must be one of {tuple(label_cost_names())} or a LabelCost instance, got {inner!r}."
        )
    cls = LABEL_COSTS[key]
    try:
        return cls(**options)
    except TypeError as exc:
        raise InvalidArgumentError(f"invalid options {sorted(options)} for the {key!r} label cost: {exc}") from None
