r"""Label costs: squared W2 distances between class-conditional distributions.

A label cost is an object; calling :meth:`LabelCost.pairwise` returns the ``(C1, C2)``
matrix :math:`L[c, c'] = W_2^2(\alpha_c, \alpha'_{c'})` between the classes of two
labeled datasets. The OTDD outer problem treats ``L`` as an ordinary part of its ground
cost and never knows how it was computed.

* :class:`GaussianLabelCost` — Bures-Wasserstein closed form on class means and covariances.
* :class:`ExactLabelCost` — exact OT (network simplex) between the class point clouds.
* :class:`SinkhornLabelCost` — entropic OT (debiased by default) between the class clouds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..costs.gaussian import bures_wasserstein_squared, covariance_factors
from ..costs.ground import OTDDCost
from ..data.dataset import ClassStats, LabeledDataset
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..solvers.api import solve

__all__ = [
    "LabelCost",
    "GaussianLabelCost",
    "ExactLabelCost",
    "SinkhornLabelCost",
    "get_label_cost",
    "LABEL_COSTS",
    "DEFAULT_RELATIVE_REG",
    "relative_reg",
]

#: Default entropic regularisation, as a fraction of the mean ground cost :math:`\sum_{ij} a_i b_j C_{ij}`.
DEFAULT_RELATIVE_REG = 0.05


def relative_reg(reg: float | None, scale: float, fraction: float = DEFAULT_RELATIVE_REG) -> float:
    """``reg`` if given, else ``fraction * scale`` (the default relative to the cost scale)."""
    if reg is not None:
        return reg
    if not fraction > 0:
        raise InvalidArgumentError(f"the relative regularisation must be positive, got {fraction!r}.")
    return fraction * scale if scale > 0 else fraction


class LabelCost(ABC):
    """Computes the ``(C1, C2)`` matrix of squared W2 distances between classes."""

    name: str = "label-cost"
    #: whether the cost can use class statistics given as parameters (jd-fl / jd-vl flows)
    uses_stats: bool = False

    @abstractmethod
    def pairwise(
        self,
        source: LabeledDataset,
        target: LabeledDataset | None = None,
        *,
        source_stats: ClassStats | None = None,
        target_stats: ClassStats | None = None,
    ) -> torch.Tensor:
        """Squared W2 between every source class and every target class, ``(C1, C2)``.

        With ``target=None`` the source is compared with itself (symmetric, zero diagonal).
        Differentiable with respect to the source (and target) features, and to the class
        statistics when they are passed explicitly (for label costs that use them).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GaussianLabelCost(LabelCost):
    r"""Bures-Wasserstein label cost: each class is :math:`N(m_c, \Sigma_c)`.

    .. math:: L[c, c'] = \|m_c - m_{c'}\|^2 + \operatorname{tr}\Sigma_c + \operatorname{tr}\Sigma_{c'}
              - 2\operatorname{tr}(\Sigma_c^{1/2}\Sigma_{c'}\Sigma_c^{1/2})^{1/2}

    Covariances are the unbiased class covariances (see
    :meth:`~datasetflow.data.dataset.LabeledDataset.class_stats`). For classes with
    ``n_c < d`` the trace term is the nuclear norm of :math:`A_c A_{c'}^\top` (centred,
    scaled samples), an ``n_c x n_{c'}`` problem; otherwise a ``d x d`` square root with a
    stable backward is used.

    Args:
        diagonal: keep only the diagonal of the covariances (``O(C d)`` memory).
        ridge: add ``ridge * I`` to every covariance (regularises single-sample classes).
        unbiased: unbiased (default) or maximum-likelihood covariances.
    """

    name = "gaussian"
    uses_stats = True

    def __init__(self, *, diagonal: bool = False, ridge: float = 0.0, unbiased: bool = True) -> None:
        if not ridge >= 0:
            raise InvalidArgumentError(f"ridge must be non-negative, got {ridge!r}.")
        self.diagonal, self.ridge, self.unbiased = bool(diagonal), float(ridge), bool(unbiased)

    def __repr__(self) -> str:
        return f"GaussianLabelCost(diagonal={self.diagonal}, ridge={self.ridge}, unbiased={self.unbiased})"

    def _stats(self, dataset: LabeledDataset | None, stats: ClassStats | None) -> ClassStats:
        if stats is not None:
            return stats
        if dataset is None:
            raise InvalidArgumentError("GaussianLabelCost needs a dataset or its ClassStats.")
        return dataset.class_stats(unbiased=self.unbiased)

    def pairwise(self, source, target=None, *, source_stats=None, target_stats=None):  # noqa: D102
        stats1 = self._stats(source, source_stats)
        symmetric = target is None and target_stats is None
        stats2 = stats1 if symmetric else self._stats(target, target_stats)
        if stats1.dim != stats2.dim:
            raise ShapeMismatchError(
                f"source classes have dimension {stats1.dim} but target classes have {stats2.dim}."
            )
        if self.diagonal:
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


def _stat_factors(stats: ClassStats, ridge: float) -> torch.Tensor:
    """Covariance factors of class statistics (thin sample factors when possible)."""
    if stats.factors is None and stats.covariances is None:
        return covariance_factors(None, stats.covariance_matrices(), ridge)
    return covariance_factors(stats.factors, stats.covariances, ridge)


def _class_clouds(dataset: LabeledDataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per class: its features and its normalised sample weights."""
    clouds = []
    for c in range(dataset.num_classes):
        mask = dataset.y == c
        w = dataset.weights[mask]
        clouds.append((dataset.x[mask], w / w.sum()))
    return clouds


class _CloudLabelCost(LabelCost):
    """Label costs computed by an OT problem between every pair of class point clouds."""

    def _solve(self, x1, w1, x2, w2) -> torch.Tensor:
        raise NotImplementedError

    def pairwise(self, source, target=None, *, source_stats=None, target_stats=None):  # noqa: D102
        if source_stats is not None or target_stats is not None:
            raise InvalidArgumentError(
                f"{type(self).__name__} compares class point clouds and cannot use ClassStats parameters; "
                "use GaussianLabelCost (inner='gaussian') for flows that move class statistics."
            )
        symmetric = target is None
        clouds1 = _class_clouds(source)
        clouds2 = clouds1 if symmetric else _class_clouds(target)
        if clouds1[0][0].shape[1] != clouds2[0][0].shape[1]:
            raise ShapeMismatchError(
                f"source features have dimension {source.dim} but target features have {target.dim}."
            )
        num1, num2 = len(clouds1), len(clouds2)
        values = []
        index = []
        for i in range(num1):
            for j in range(i + 1 if symmetric else 0, num2):
                values.append(self._solve(*clouds1[i], *clouds2[j]))
                index.append((i, j))
        out = source.x.new_zeros(num1, num2)
        if values:
            rows = torch.tensor([i for i, _ in index], device=out.device)
            cols = torch.tensor([j for _, j in index], device=out.device)
            out = out.index_put((rows, cols), torch.stack(values))
            if symmetric:
                out = out + out.mT
        return out


class ExactLabelCost(_CloudLabelCost):
    """Exact squared W2 between class point clouds (POT network simplex), envelope gradients."""

    name = "exact"

    def _solve(self, x1, w1, x2, w2):
        return solve(OTDDCost(x1, x2), w1, w2, method="exact").value


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

    def __repr__(self) -> str:
        return f"SinkhornLabelCost(reg={self.reg}, relative={self.relative}, debiased={self.debiased})"

    def _solve(self, x1, w1, x2, w2):
        cost = OTDDCost(x1, x2)
        eps = relative_reg(self.reg, cost.weighted_mean(w1.detach(), w2.detach()), self.relative)
        result = solve(
            cost, w1, w2, reg=eps, method="sinkhorn", debiased=self.debiased, max_iter=self.max_iter, tol=self.tol
        )
        return result.value.clamp_min(0)


LABEL_COSTS = {"gaussian": GaussianLabelCost, "exact": ExactLabelCost, "sinkhorn": SinkhornLabelCost}


def get_label_cost(inner: str | LabelCost) -> LabelCost:
    """A label cost object from a name (``"gaussian"``, ``"exact"``, ``"sinkhorn"``) or an instance."""
    if isinstance(inner, LabelCost):
        return inner
    if inner not in LABEL_COSTS:
        raise InvalidArgumentError(f"inner must be one of {tuple(LABEL_COSTS)} or a LabelCost, got {inner!r}.")
    return LABEL_COSTS[inner]()
