"""Streaming class statistics (classes larger than d) and float64 covariance factors."""

from __future__ import annotations

import pytest
import torch

from datasetflow import ClassStats, GaussianLabelCost, LabeledDataset
from datasetflow.costs import bures_wasserstein_squared, covariance_factors
from datasetflow.data import moments
from datasetflow.data.moments import class_moments, covariance_factor

pytestmark = pytest.mark.fast


def _naive_stats(x, y, w, num_classes):
    """Means and unbiased aweighted covariances by plain autograd (torch.cov semantics)."""
    means, covs = [], []
    for c in range(num_classes):
        xc, wc = x[y == c], w[y == c]
        means.append((wc[:, None] * xc).sum(0) / wc.sum())
        covs.append(torch.cov(xc.T, aweights=wc))
    return torch.stack(means), torch.stack(covs)


@pytest.fixture
def weighted(gen):
    x = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0] * 25 + [1] * 30 + [2] * 5)
    w = torch.rand(60, generator=gen, dtype=torch.float64) + 0.2
    return x, y, w / w.sum()


def test_streaming_moments_equal_torch_cov_with_aweights(weighted, monkeypatch):
    x, y, w = weighted
    monkeypatch.setattr(moments, "ROWS_PER_BLOCK_ELEMENTS", 4 * 7)  # 7-row blocks: several per class
    members = [torch.nonzero(y == c).flatten() for c in range(3)]
    mass = torch.stack([w[m].sum() for m in members])
    normaliser = mass - torch.stack([(w[m] ** 2).sum() for m in members]) / mass
    means, covs = class_moments(x.float(), members, w, mass, normaliser, [0, 1])
    ref_means, ref_covs = _naive_stats(x.float().double(), y, w, 3)
    assert means.dtype == covs.dtype == torch.float64  # accumulated in float64 from float32 features
    torch.testing.assert_close(means, ref_means, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(covs, ref_covs[:2], rtol=1e-12, atol=1e-12)


def test_streaming_moments_gradient_equals_autodiff(weighted, monkeypatch):
    x, y, w = weighted
    monkeypatch.setattr(moments, "ROWS_PER_BLOCK_ELEMENTS", 4 * 7)
    members = [torch.nonzero(y == c).flatten() for c in range(3)]
    mass = torch.stack([w[m].sum() for m in members])
    normaliser = mass - torch.stack([(w[m] ** 2).sum() for m in members]) / mass
    gen = torch.Generator().manual_seed(7)
    probe_m = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    probe_c = torch.randn(2, 4, 4, generator=gen, dtype=torch.float64)  # not symmetric on purpose

    def ours(features):
        means, covs = class_moments(features, members, w, mass, normaliser, [0, 1])
        return (means * probe_m).sum() + (covs * probe_c).sum()

    def naive(features):
        means, covs = _naive_stats(features, y, w, 3)
        return (means * probe_m).sum() + (covs[:2] * probe_c).sum()

    xs = x.clone().requires_grad_()
    (g_ours,) = torch.autograd.grad(ours(xs), xs)
    (g_naive,) = torch.autograd.grad(naive(xs), xs)
    torch.testing.assert_close(g_ours, g_naive, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(ours, (xs,))


def test_class_stats_large_classes_match_torch_cov_and_keep_memory_small(gen):
    """Classes with n_c > d get float64-accumulated covariances in factored form (r <= d rows)."""
    x = torch.randn(300, 6, generator=gen)
    x[:, 5] = 0.25  # a constant coordinate: rank-deficient covariances
    y = torch.tensor([0] * 200 + [1] * 97 + [2] * 3)  # two large classes and a small one
    w = torch.rand(300, generator=gen) + 0.5
    ds = LabeledDataset(x, y, weights=w)
    stats = ds.class_stats()
    assert stats.factors.shape == (3, 5, 6)  # numerical rank 5 for the large classes, 3 rows for the small one
    covs = stats.covariance_matrices()
    for c in range(3):
        ref = torch.cov(x[y == c].double().T, aweights=ds.weights[y == c].double())
        torch.testing.assert_close(covs[c].double(), ref, rtol=1e-5, atol=1e-6)
        mean = (ds.weights[y == c, None].double() * x[y == c].double()).sum(0) / ds.weights[y == c].double().sum()
        torch.testing.assert_close(stats.means[c].double(), mean, rtol=1e-6, atol=1e-6)


def test_large_and_thin_paths_give_the_same_bures_and_gradient(gen):
    """A class above d samples (eigen-factor path) and the same class as an explicit thin sample factor
    give the same Bures value and the same gradient with respect to the samples (float64)."""
    dim = 5
    x = torch.randn(40, dim, generator=gen, dtype=torch.float64)
    x[:, 4] = 1.0  # rank-deficient: the gradient convention matters here
    labels = [0] * 22 + [1] * 18
    target = LabeledDataset(torch.randn(30, dim, generator=gen, dtype=torch.float64), [0] * 12 + [1] * 18)
    target_stats = target.class_stats()

    def dense_path(features):
        stats = LabeledDataset(features.detach(), labels).with_features(features).class_stats()
        return GaussianLabelCost().pairwise(stats, target_stats)

    def thin_path(features):
        rows = []
        for c, n_c in ((0, 22), (1, 18)):
            xc = features[torch.tensor(labels) == c]
            rows.append((xc - xc.mean(0)) / (n_c - 1) ** 0.5)
        factors = torch.stack([torch.nn.functional.pad(r, (0, 0, 0, 22 - r.shape[0])) for r in rows])
        means = torch.stack([features[:22].mean(0), features[22:].mean(0)])
        return bures_wasserstein_squared(means, factors, target_stats.means, target_stats.factors)

    xs = x.clone().requires_grad_()
    assert LabeledDataset(x, labels).class_stats().factors.shape[1] == 4  # the eigen-factor path ran
    dense, thin = dense_path(xs), thin_path(xs)
    torch.testing.assert_close(dense, thin, rtol=1e-10, atol=1e-10)
    (g_dense,) = torch.autograd.grad(dense.sum(), xs)
    (g_thin,) = torch.autograd.grad(thin.sum(), xs)
    torch.testing.assert_close(g_dense, g_thin, rtol=1e-8, atol=1e-10)


def test_gradcheck_through_large_class_statistics(gen):
    """Full-rank classes above d samples: the whole chain x -> moments -> eigen-factor -> Bures."""
    x = torch.randn(14, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = LabeledDataset(torch.randn(9, 3, generator=gen, dtype=torch.float64), [0] * 4 + [1] * 5)

    def fn(features):
        source = LabeledDataset(features.detach(), [0] * 8 + [1] * 6).with_features(features)
        return GaussianLabelCost().pairwise(source, target)

    assert torch.autograd.gradcheck(fn, (x,))


def test_covariance_factor_floor_and_precision(gen):
    """The factor is computed in float64 with the stated eigenvalue floor, whatever the input dtype."""
    a = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    cov = a.T @ a  # rank 3 in d = 8
    factor = covariance_factor(cov)
    assert factor.dtype == torch.float64 and factor.shape == (3, 8)
    torch.testing.assert_close(factor.mT @ factor, cov, rtol=1e-12, atol=1e-12)
    eigenvalues = torch.linalg.eigvalsh(cov)
    assert float(moments.eigenvalue_floor(eigenvalues)) == pytest.approx(
        8 * 2.220446049250313e-16 * 1e0 * eigenvalues.max()
    )
    ridge = covariance_factors(None, cov.float(), ridge=0.5)
    assert ridge.dtype == torch.float32 and ridge.shape == (8, 8)
    torch.testing.assert_close(
        ridge.mT.double() @ ridge.double(), cov + 0.5 * torch.eye(8, dtype=torch.float64), rtol=1e-5, atol=1e-5
    )


def test_user_covariances_and_ridge_differentiate(gen):
    covs = torch.stack(
        [(lambda a: a.T @ a / 6)(torch.randn(6, 4, generator=gen, dtype=torch.float64)) for _ in range(3)]
    )
    means = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    stats = ClassStats(
        means=means,
        weights=torch.full((3,), 1 / 3, dtype=torch.float64),
        counts=torch.full((3,), 6),
        classes=(0, 1, 2),
        covariances=covs.clone().requires_grad_(),
    )
    value = GaussianLabelCost(ridge=0.1).pairwise(stats)
    (grad,) = torch.autograd.grad(value.sum(), stats.covariances)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    def fn(c):
        return bures_wasserstein_squared(
            means[:1], covariance_factors(None, c[:1], 0.1), means[1:], covariance_factors(None, c[1:], 0.1)
        )

    assert torch.autograd.gradcheck(fn, (covs.clone().requires_grad_(),))
