r"""Test problems together with their known answers (after GeomLoss's ``tests/generators``).

Every generator takes an explicit :class:`torch.Generator` (or builds its data from given
tensors) and returns the data *and* the answer in a small frozen dataclass. An answer is
either a closed form (``exact=True``) or an independent float64 reference written with
numpy / POT, never with datasetflow. ``tests/test_generators.py`` checks each answer against
a second oracle.

Problems
--------
- :func:`gaussian_families`: two families of Gaussians and their ``(C1, C2)`` squared
  2-Wasserstein distances :math:`\|m_1 - m_2\|^2 + \mathcal{B}^2(\Sigma_1, \Sigma_2)`.
  ``structure`` picks isotropic, diagonal, commuting (full matrices with a shared random
  eigenbasis :math:`Q`: :math:`\mathcal{B}^2 = \|\sqrt{\lambda_1} - \sqrt{\lambda_2}\|^2`),
  rank-deficient commuting (zero eigenvalues on different axes; still closed form) and general
  (non-commuting; the numpy textbook formula as reference).
- :func:`exact_moment_samples` / :func:`labeled_gaussians`: point clouds whose unbiased
  sample mean and covariance are exactly the given ones, so a sample-based label cost must
  reproduce the closed form.
- :func:`permutation`: a cloud and a permuted copy perturbed by less than half the smallest
  pairwise distance, so the permutation is the unique optimal plan; :func:`permutation_cost`
  a cost matrix whose unique optimal plan is a given permutation.
- :func:`dirac_against_cloud`: transport to one point costs the weighted mean squared distance.
- :func:`one_dimensional`: 1-D clouds; equal uniform sizes are solved by sorting, weighted or
  unequal sizes by the quantile-function integral (:func:`wasserstein_1d_reference`).
- Labeled mixtures and OTDD: :func:`gaussian_classes` (the blobs of ``conftest``),
  :func:`labeled_blobs` (the blobs of the WoW tests), :func:`translated_copy` (OTDD known
  exactly, see its docstring), :func:`relabelled_copy` (distance 0 and a known class
  correspondence) and :func:`otdd_bounds` (identity / product coupling above, feature-only
  plus label-only OT below).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import ot
import torch

from datasetflow import LabeledDataset

F64 = torch.float64
GAUSSIAN_STRUCTURES = ("isotropic", "diagonal", "commuting", "rank_deficient", "general")


# ----------------------------------------------------------------------------- small helpers
def random_spd(gen: torch.Generator, dim: int, rank: int | None = None, dtype: torch.dtype = F64) -> torch.Tensor:
    """A random ``(dim, dim)`` PSD matrix :math:`A^\\top A / r` of rank ``rank`` (default full)."""
    rank = dim if rank is None else rank
    a = torch.randn(rank, dim, generator=gen, dtype=dtype)
    return a.T @ a / rank


def random_rotation(gen: torch.Generator, dim: int) -> torch.Tensor:
    """A Haar-distributed ``(dim, dim)`` orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def _numpy_sqrtm_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def bures_reference(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> float:
    r"""Textbook :math:`W_2^2` between :math:`N(m_1, S_1)` and :math:`N(m_2, S_2)` with numpy (float64):
    :math:`\|m_1-m_2\|^2 + \operatorname{tr} S_1 + \operatorname{tr} S_2
    - 2\operatorname{tr}(S_1^{1/2} S_2 S_1^{1/2})^{1/2}`."""
    root1 = _numpy_sqrtm_psd(np.asarray(s1, dtype=np.float64))
    middle = root1 @ np.asarray(s2, dtype=np.float64) @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    mean_term = float(((np.asarray(m1) - np.asarray(m2)) ** 2).sum())
    return mean_term + float(np.trace(s1) + np.trace(s2) - 2 * trace_root)


def wasserstein_1d_reference(u: np.ndarray, v: np.ndarray, a=None, b=None, p: float = 2.0) -> float:
    r""":math:`W_p^p = \int_0^1 |F_u^{-1}(t) - F_v^{-1}(t)|^p\,dt` between two weighted 1-D clouds (numpy).

    The two quantile functions are step functions; on the merged breakpoints of their cumulative
    weights both are constant, so the integral is a finite sum.
    """
    u, v = np.asarray(u, dtype=np.float64).ravel(), np.asarray(v, dtype=np.float64).ravel()
    a = np.full(len(u), 1.0 / len(u)) if a is None else np.asarray(a, dtype=np.float64) / np.sum(a)
    b = np.full(len(v), 1.0 / len(v)) if b is None else np.asarray(b, dtype=np.float64) / np.sum(b)
    iu, iv = np.argsort(u, kind="stable"), np.argsort(v, kind="stable")
    cu, cv = np.cumsum(a[iu]), np.cumsum(b[iv])
    levels = np.unique(np.concatenate([cu, cv]).clip(0, 1))
    steps = np.diff(np.concatenate([[0.0], levels]))
    mid = levels - steps / 2  # a point inside each constant piece
    qu = u[iu][np.minimum(np.searchsorted(cu, mid), len(u) - 1)]
    qv = v[iv][np.minimum(np.searchsorted(cv, mid), len(v) - 1)]
    return float((steps * np.abs(qu - qv) ** p).sum())


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


# ----------------------------------------------------------------------------- Gaussians
@dataclass(frozen=True)
class GaussianFamilies:
    """Two families of Gaussians and the answer ``w2_squared[i, j] = W_2^2(N(means1[i], covs1[i]),
    N(means2[j], covs2[j]))`` (``bures_squared``: its covariance part).

    ``exact``: the answer is a closed form (False: the numpy textbook reference, see
    :func:`bures_reference`). ``rank``: the rank of every covariance.
    """

    means1: torch.Tensor  # (C1, d)
    covs1: torch.Tensor  # (C1, d, d)
    means2: torch.Tensor  # (C2, d)
    covs2: torch.Tensor  # (C2, d, d)
    w2_squared: torch.Tensor  # (C1, C2)
    bures_squared: torch.Tensor  # (C1, C2)
    structure: str
    exact: bool
    rank: int

    @property
    def variances1(self) -> torch.Tensor:
        """``(C1, d)`` diagonals of ``covs1``."""
        return torch.diagonal(self.covs1, dim1=-2, dim2=-1)

    @property
    def variances2(self) -> torch.Tensor:
        """``(C2, d)`` diagonals of ``covs2``."""
        return torch.diagonal(self.covs2, dim1=-2, dim2=-1)


def gaussian_families(
    gen: torch.Generator,
    num1: int,
    num2: int,
    dim: int,
    *,
    structure: str = "commuting",
    rank: int | None = None,
    mean_scale: float = 1.0,
    dtype: torch.dtype = F64,
) -> GaussianFamilies:
    """``num1`` and ``num2`` random Gaussians in ``dim`` dimensions with their squared W2 (see
    :class:`GaussianFamilies`); ``structure`` is one of :data:`GAUSSIAN_STRUCTURES`:

    - ``"isotropic"``: :math:`\\Sigma = s^2 I`; :math:`\\mathcal{B}^2 = d (s_1 - s_2)^2`.
    - ``"diagonal"``: :math:`\\mathcal{B}^2 = \\|\\sqrt{v_1} - \\sqrt{v_2}\\|^2`.
    - ``"commuting"``: :math:`\\Sigma = Q \\operatorname{diag}(\\lambda) Q^\\top` with one random
      rotation ``Q`` for all: :math:`\\mathcal{B}^2 = \\|\\sqrt{\\lambda_1} - \\sqrt{\\lambda_2}\\|^2`.
    - ``"rank_deficient"``: commuting, each covariance with ``rank`` (default ``dim // 2``, at
      least 1) non-zero eigenvalues on its own random axes; the same closed form.
    - ``"general"``: random non-commuting PSD matrices of rank ``rank`` (default full); the
      answer is the numpy textbook reference (``exact=False``).
    """
    if structure not in GAUSSIAN_STRUCTURES:
        raise ValueError(f"structure must be one of {GAUSSIAN_STRUCTURES}, got {structure!r}")
    total = num1 + num2
    means = mean_scale * torch.randn(total, dim, generator=gen, dtype=F64)
    exact = structure != "general"
    if structure == "general":
        rank = dim if rank is None else rank
        covs = torch.stack([random_spd(gen, dim, rank) for _ in range(total)])
    else:
        if structure == "isotropic":
            eig = (0.3 + torch.rand(total, 1, generator=gen, dtype=F64)).expand(total, dim).clone()
        else:
            eig = 0.2 + 1.8 * torch.rand(total, dim, generator=gen, dtype=F64)
        if structure == "rank_deficient":
            rank = max(1, dim // 2) if rank is None else rank
            for k in range(total):  # keep `rank` eigenvalues, on axes drawn per Gaussian
                eig[k, torch.randperm(dim, generator=gen)[rank:]] = 0.0
        rotation = torch.eye(dim, dtype=F64) if structure in ("isotropic", "diagonal") else random_rotation(gen, dim)
        covs = rotation @ torch.diag_embed(eig) @ rotation.T
        covs = (covs + covs.mT) / 2
        rank = int((eig[0] > 0).sum()) if rank is None else rank
    mean_term = ((means[:num1, None] - means[None, num1:]) ** 2).sum(-1)
    if exact:
        roots = eig.sqrt()
        bures = ((roots[:num1, None] - roots[None, num1:]) ** 2).sum(-1)
    else:
        c = _as_numpy(covs)
        bures = torch.tensor(
            [[bures_reference(0.0, c[i], 0.0, c[num1 + j]) for j in range(num2)] for i in range(num1)], dtype=F64
        )
    return GaussianFamilies(
        means1=means[:num1].to(dtype),
        covs1=covs[:num1].to(dtype),
        means2=means[num1:].to(dtype),
        covs2=covs[num1:].to(dtype),
        w2_squared=(mean_term + bures).to(dtype),
        bures_squared=bures.to(dtype),
        structure=structure,
        exact=exact,
        rank=int(rank),
    )


def exact_moment_samples(gen: torch.Generator, mean: torch.Tensor, cov: torch.Tensor, n: int) -> torch.Tensor:
    r"""``(n, d)`` float64 samples whose mean is exactly ``mean`` and whose unbiased covariance
    :math:`\tfrac{1}{n-1}\sum_i (x_i - \bar x)(x_i - \bar x)^\top` is exactly ``cov`` (to rounding).

    ``cov`` may be rank-deficient (rank ``r``); ``n`` must exceed ``r``. Standard normal draws are
    centred and whitened to an exactly identity covariance, then mapped by a factor of ``cov``.
    """
    mean, cov = mean.to(F64), cov.to(F64)
    w, v = torch.linalg.eigh((cov + cov.T) / 2)
    keep = w > 1e-12 * max(float(w.max()), 1.0)
    factor = v[:, keep] * w[keep].sqrt()  # (d, r), factor @ factor.T = cov
    r = factor.shape[1]
    if n <= r:
        raise ValueError(f"exact_moment_samples needs n > rank(cov) = {r}, got n={n}")
    z = torch.randn(n, r, generator=gen, dtype=F64)
    z = z - z.mean(0)
    zw, zv = torch.linalg.eigh(z.T @ z / (n - 1))
    z = z @ (zv / zw.sqrt()) @ zv.T  # whitened: z.T z / (n - 1) = I
    return mean + z @ factor.T


@dataclass(frozen=True)
class LabeledGaussians:
    """A source and a target dataset whose classes have exactly the moments of ``families``:
    class ``i`` of ``source`` is :math:`N(\\text{means1}_i, \\text{covs1}_i)`, class ``j`` of ``target``
    is :math:`N(\\text{means2}_j, \\text{covs2}_j)`, so the Gaussian label cost between them is
    ``label_distances = families.w2_squared``."""

    source: LabeledDataset
    target: LabeledDataset
    families: GaussianFamilies

    @property
    def label_distances(self) -> torch.Tensor:
        return self.families.w2_squared


def labeled_gaussians(
    gen: torch.Generator,
    num1: int,
    num2: int,
    dim: int,
    *,
    per_class: int | Sequence[int] = 12,
    structure: str = "commuting",
    rank: int | None = None,
    mean_scale: float = 3.0,
) -> LabeledGaussians:
    """:func:`gaussian_families` realised as labeled datasets with exact class moments (float64).

    ``per_class`` is one size or one per class (``num1 + num2`` of them, source classes first);
    sizes below ``dim`` give rank-deficient sample covariances (thin factors), so use a
    ``structure`` whose ranks are below every size.
    """
    families = gaussian_families(gen, num1, num2, dim, structure=structure, rank=rank, mean_scale=mean_scale)
    sizes = [per_class] * (num1 + num2) if isinstance(per_class, int) else list(per_class)
    means = torch.cat([families.means1, families.means2])
    covs = torch.cat([families.covs1, families.covs2])
    clouds = [exact_moment_samples(gen, means[k], covs[k], sizes[k]) for k in range(num1 + num2)]

    def dataset(indices: range) -> LabeledDataset:
        x = torch.cat([clouds[k] for k in indices])
        y = [c for c, k in enumerate(indices) for _ in range(sizes[k])]
        return LabeledDataset(x, y)

    return LabeledGaussians(dataset(range(num1)), dataset(range(num1, num1 + num2)), families)


# ----------------------------------------------------------------------------- permutations
@dataclass(frozen=True)
class PermutationCase:
    """``y[j] = x[permutation[j]] + noise_j``; the unique optimal plan (uniform weights) sends
    ``x[permutation[j]]`` to ``y[j]``: ``plan[permutation[j], j] = 1/n``, ``value = mean |noise_j|^2``."""

    x: torch.Tensor  # (n, d)
    y: torch.Tensor  # (n, d)
    permutation: torch.Tensor  # (n,) long
    cost: torch.Tensor  # (n, n) squared distances
    plan: torch.Tensor  # (n, n)
    value: float
    gap: float  # a lower bound on (cost of any other permutation - value)


def permutation(gen: torch.Generator, n: int, dim: int, *, noise: float = 0.0, dtype: torch.dtype = F64):
    """A cloud ``x`` and its permuted copy, each point moved by at most ``noise * D / 2`` where ``D``
    is the smallest pairwise distance of ``x`` (``0 <= noise < 1``).

    Why the permutation is the unique optimum: for any other assignment, every row ``j`` it changes
    costs at least :math:`(D - r)^2 > r^2 \\ge |\\text{noise}_j|^2` with :math:`r = \\text{noise}\\,D/2`,
    so it costs at least ``2 ((D - r)^2 - r^2)`` more (it changes two rows or more); by Birkhoff's
    theorem no other plan is optimal either.
    """
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    x = torch.randn(n, dim, generator=gen, dtype=F64)
    perm = torch.randperm(n, generator=gen)
    distances = torch.cdist(x, x) + torch.diag(torch.full((n,), math.inf, dtype=F64))
    radius = noise * float(distances.min()) / 2
    direction = torch.randn(n, dim, generator=gen, dtype=F64)
    length = radius * torch.rand(n, 1, generator=gen, dtype=F64)
    delta = length * direction / direction.norm(dim=1, keepdim=True)
    y = x[perm] + delta
    plan = torch.zeros(n, n, dtype=F64)
    plan[perm, torch.arange(n)] = 1.0 / n
    d_min = float(distances.min())
    gap = 2 * ((d_min - radius) ** 2 - radius**2) / n
    return PermutationCase(
        x.to(dtype),
        y.to(dtype),
        perm,
        (torch.cdist(x, y) ** 2).to(dtype),
        plan.to(dtype),
        float((delta**2).sum(1).mean()),
        gap,
    )


@dataclass(frozen=True)
class PermutationCostCase:
    """An ``(n, n)`` cost whose unique optimal plan under uniform marginals is ``plan``."""

    cost: torch.Tensor
    permutation: torch.Tensor  # row i goes to column permutation[i]
    plan: torch.Tensor
    value: float


def permutation_cost(gen: torch.Generator, n: int, dtype: torch.dtype = F64) -> PermutationCostCase:
    """Costs in ``[2, 3)`` except ``C[i, sigma(i)]`` in ``[0, 1)``: any other assignment swaps at
    least two entries below 1 for entries at least 2, so ``sigma`` is the unique optimum
    (``value = mean C[i, sigma(i)]`` under uniform weights ``1/n``)."""
    cost = 2.0 + torch.rand(n, n, generator=gen, dtype=F64)
    sigma = torch.randperm(n, generator=gen)
    cost[torch.arange(n), sigma] = torch.rand(n, generator=gen, dtype=F64)
    plan = torch.zeros(n, n, dtype=F64)
    plan[torch.arange(n), sigma] = 1.0 / n
    return PermutationCostCase(cost.to(dtype), sigma, plan.to(dtype), float(cost[torch.arange(n), sigma].mean()))


# ----------------------------------------------------------------------------- Diracs
@dataclass(frozen=True)
class DiracCase:
    """A weighted cloud ``x`` (weights ``a``) against the Dirac at ``z``: the only plan is ``a`` as
    one column and ``W_2^2 = sum_i a_i |x_i - z|^2``."""

    x: torch.Tensor  # (n, d)
    a: torch.Tensor  # (n,)
    z: torch.Tensor  # (1, d)
    value: float
    plan: torch.Tensor  # (n, 1)


def dirac_against_cloud(
    gen: torch.Generator, n: int, dim: int, *, weighted: bool = True, dtype: torch.dtype = F64
) -> DiracCase:
    """``n`` random points with random (or uniform) weights and one random point ``z``."""
    x = torch.randn(n, dim, generator=gen, dtype=F64)
    a = torch.rand(n, generator=gen, dtype=F64) + 0.5 if weighted else torch.ones(n, dtype=F64)
    a = a / a.sum()
    z = 2 * torch.randn(1, dim, generator=gen, dtype=F64)
    value = float((a * ((x - z) ** 2).sum(1)).sum())
    return DiracCase(x.to(dtype), a.to(dtype), z.to(dtype), value, a[:, None].to(dtype))


# ----------------------------------------------------------------------------- 1-D
@dataclass(frozen=True)
class OneDimensionalCase:
    """Two 1-D clouds ``(n, 1)``, ``(m, 1)`` with weights and ``value = W_p^p``.

    ``exact``: equal sizes and uniform weights, solved by matching the sorted values; otherwise
    :func:`wasserstein_1d_reference`."""

    x: torch.Tensor
    y: torch.Tensor
    a: torch.Tensor | None
    b: torch.Tensor | None
    p: float
    value: float
    exact: bool


def one_dimensional(
    gen: torch.Generator, n: int, m: int | None = None, *, p: float = 2.0, weighted: bool = False
) -> OneDimensionalCase:
    """Random 1-D clouds (the second one shifted and stretched); ``m=None`` means ``m = n``."""
    m = n if m is None else m
    x = torch.randn(n, 1, generator=gen, dtype=F64)
    y = 2 * torch.randn(m, 1, generator=gen, dtype=F64) + 1
    a = b = None
    if weighted:
        a = torch.rand(n, generator=gen, dtype=F64) + 0.2
        b = torch.rand(m, generator=gen, dtype=F64) + 0.2
        a, b = a / a.sum(), b / b.sum()
    exact = n == m and not weighted
    if exact:
        value = float((torch.abs(x.sort(0).values - y.sort(0).values) ** p).mean())
    else:
        value = wasserstein_1d_reference(
            _as_numpy(x), _as_numpy(y), None if a is None else _as_numpy(a), None if b is None else _as_numpy(b), p
        )
    return OneDimensionalCase(x, y, a, b, p, value, exact)


# ----------------------------------------------------------------------------- labeled mixtures
def gaussian_classes(
    gen: torch.Generator,
    *,
    num_classes: int = 3,
    per_class: int = 12,
    dim: int = 4,
    spread: float = 3.0,
    dtype: torch.dtype = F64,
    labels: list | None = None,
) -> LabeledDataset:
    """``num_classes`` unit-variance Gaussian blobs around means ``spread * N(0, I)``; labels
    default to ``0..C-1`` (``labels`` renames them), ``per_class`` samples each."""
    means = spread * torch.randn(num_classes, dim, generator=gen, dtype=dtype)
    x = means.repeat_interleave(per_class, 0) + torch.randn(num_classes * per_class, dim, generator=gen, dtype=dtype)
    names = labels if labels is not None else list(range(num_classes))
    y = [names[k] for k in range(num_classes) for _ in range(per_class)]
    return LabeledDataset(x, y)


def labeled_blobs(
    sizes: Sequence[int], dim: int = 3, shift: float = 0.0, seed: int = 0, dtype: torch.dtype = F64
) -> LabeledDataset:
    """Class ``c`` (``sizes[c]`` points): standard normal draws scaled by ``0.5 + 0.2 c`` around
    ``2 c + shift`` in every coordinate, drawn from ``torch.Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c, n in enumerate(sizes):
        xs.append(torch.randn(n, dim, generator=g, dtype=dtype) * (0.5 + 0.2 * c) + 2.0 * c + shift)
        ys += [c] * n
    return LabeledDataset(torch.cat(xs), ys)


@dataclass(frozen=True)
class OTDDCase:
    """A pair of labeled datasets with what is known about their OTDD under the ground cost
    :math:`\\lambda_x \\|x - x'\\|^2 + \\lambda_y W(y, y')` (``feature_weight``, ``label_weight``).

    ``distance_squared``: the exact :math:`\\mathrm{OTDD}^2`, or None when only the bounds are known;
    ``lower`` / ``upper``: bounds valid for the Gaussian label cost (see :func:`otdd_bounds`);
    ``correspondence``: the source class name -> target class name that the optimal coupling
    pairs, when known.
    """

    source: LabeledDataset
    target: LabeledDataset
    distance_squared: float | None
    lower: float
    upper: float
    correspondence: dict[Hashable, Hashable] | None
    feature_weight: float = 1.0
    label_weight: float = 1.0


def reference_label_distances(source: LabeledDataset, target: LabeledDataset, inner: str = "gaussian") -> np.ndarray:
    """``(C1, C2)`` label costs computed without datasetflow: ``"gaussian"`` is the numpy Bures formula
    on the classes' sample means and unbiased covariances, ``"exact"`` POT's ``emd2`` between the
    class clouds (uniform within a class)."""
    xs, xt = _as_numpy(source.x.reshape(len(source), -1)), _as_numpy(target.x.reshape(len(target), -1))
    ys, yt = source.y.numpy(), target.y.numpy()
    out = np.zeros((source.num_classes, target.num_classes))
    for i, j in itertools.product(range(source.num_classes), range(target.num_classes)):
        u, v = xs[ys == i], xt[yt == j]
        if inner == "gaussian":
            cov_u = np.atleast_2d(np.cov(u.T)) if len(u) > 1 else np.zeros((u.shape[1],) * 2)
            cov_v = np.atleast_2d(np.cov(v.T)) if len(v) > 1 else np.zeros((v.shape[1],) * 2)
            out[i, j] = bures_reference(u.mean(0), cov_u, v.mean(0), cov_v)
        elif inner == "exact":
            out[i, j] = ot.emd2(ot.unif(len(u)), ot.unif(len(v)), ot.dist(u, v))
        else:
            raise ValueError(f"inner must be 'gaussian' or 'exact', got {inner!r}")
    return out


def otdd_bounds(
    source: LabeledDataset,
    target: LabeledDataset,
    label_distances: np.ndarray,
    *,
    feature_weight: float = 1.0,
    label_weight: float = 1.0,
    pairing: Sequence[int] | torch.Tensor | None = None,
) -> tuple[float, float]:
    r"""``(lower, upper)`` bounds on the exact :math:`\mathrm{OTDD}^2` for the label cost matrix
    ``label_distances`` (numpy, source classes by target classes).

    - lower: a coupling of the datasets couples their features and their labels, so
      :math:`\mathrm{OTDD}^2 \ge \lambda_x W_2^2(\text{features}) + \lambda_y \mathrm{OT}(p, q; W)`
      (``p``, ``q``: the class weights) -- two POT ``emd2`` calls;
    - upper: the cost of the independent coupling :math:`a b^\top`, and of the one-to-one
      coupling sample ``i`` -> target sample ``pairing[i]`` (default the identity) when the datasets
      have the same size and those samples the same weights.
    """
    xs, xt = _as_numpy(source.x.reshape(len(source), -1)), _as_numpy(target.x.reshape(len(target), -1))
    a, b = _as_numpy(source.weights), _as_numpy(target.weights)
    features = ot.dist(xs, xt)
    labels = label_distances[source.y.numpy()][:, target.y.numpy()]
    cost = feature_weight * features + label_weight * labels
    p, q = _as_numpy(source.class_weights()), _as_numpy(target.class_weights())
    lower = feature_weight * ot.emd2(a, b, features) + label_weight * ot.emd2(p, q, label_distances)
    upper = float(a @ cost @ b)
    if len(source) == len(target):
        index = np.arange(len(source)) if pairing is None else np.asarray(pairing)
        if np.allclose(a, b[index]):
            upper = min(upper, float((a * cost[np.arange(len(source)), index]).sum()))
    return float(lower), upper


def translated_copy(
    dataset: LabeledDataset, shift: Sequence[float] | torch.Tensor, *, feature_weight=1.0, label_weight=1.0
) -> OTDDCase:
    r"""``dataset`` against its copy translated by ``v = shift`` (same labels and weights).

    Exact answer: :math:`\mathrm{OTDD}^2 = (\lambda_x + \lambda_y)\|v\|^2` for the outer problem
    exact, or entropic and debiased with the same :math:`\varepsilon` in its three terms, and for
    any label cost :math:`W` that satisfies
    :math:`W(\alpha, \beta + v) = W(\alpha, \beta) + \|v\|^2 - 2\langle m_\alpha - m_\beta, v\rangle`:
    the Gaussian (Bures) cost, exact :math:`W_2^2`, and the debiased Sinkhorn cost at a fixed
    ``reg`` (for squared Euclidean costs, shifting one measure by ``v`` changes every coupling's
    cost by that amount). Proof: under any coupling :math:`\pi` of :math:`\rho` and
    :math:`\rho' = \rho + v`, the ground cost is the one of :math:`(\rho, \rho)` plus
    :math:`(\lambda_x + \lambda_y)\|v\|^2` plus terms linear in :math:`x_i - x_j` and
    :math:`m_{y_i} - m_{y_j}`, whose integrals vanish because both marginals are :math:`\rho`.
    So :math:`OT(\rho, \rho') = OT(\rho, \rho) + (\lambda_x + \lambda_y)\|v\|^2` (entropy included),
    the optimal coupling is the identity, and the target's self term equals the source's. No
    class separation is needed. The sliced label cost does *not* qualify (its diagonal term is
    :math:`v^\top (\tfrac1L \sum_l \theta_l\theta_l^\top) v`), nor does a relative default
    ``reg`` of the Sinkhorn label cost (it changes with ``v``).
    """
    v = torch.as_tensor(shift, dtype=dataset.x.dtype).reshape(-1)
    moved = dataset.with_features(dataset.x + v)
    exact = (feature_weight + label_weight) * float(v @ v)
    lower, upper = otdd_bounds(
        dataset,
        moved,
        reference_label_distances(dataset, moved),
        feature_weight=feature_weight,
        label_weight=label_weight,
    )
    return OTDDCase(dataset, moved, exact, lower, upper, {c: c for c in dataset.classes}, feature_weight, label_weight)


def relabelled_copy(
    dataset: LabeledDataset, gen: torch.Generator, *, noise: float = 0.0, prefix: str = "t"
) -> OTDDCase:
    """``dataset`` against a copy whose classes are renamed ``f"{prefix}{k}"`` in a random order
    (the points shuffled too), optionally moved by ``noise * N(0, I)``.

    Exact answer for ``noise == 0``: distance 0 (the coupling of every point with its copy costs
    nothing), with class ``c`` corresponding to its renamed copy. For ``noise > 0`` only the bounds
    (and, for small noise, the correspondence) are known.
    """
    num = dataset.num_classes
    renaming = torch.randperm(num, generator=gen).tolist()
    names = [f"{prefix}{k}" for k in range(num)]
    order = torch.randperm(len(dataset), generator=gen)
    x = dataset.x[order]
    if noise:
        x = x + noise * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    y = [names[renaming[c]] for c in dataset.y[order].tolist()]
    copy = LabeledDataset(x, y, weights=dataset.weights[order], classes=names)
    pairing = torch.argsort(order)  # source sample i sits at copy position pairing[i]
    lower, upper = otdd_bounds(dataset, copy, reference_label_distances(dataset, copy), pairing=pairing)
    correspondence = {dataset.classes[c]: names[renaming[c]] for c in range(num)}
    return OTDDCase(dataset, copy, 0.0 if noise == 0 else None, lower, upper, correspondence)
