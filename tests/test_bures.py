"""Bures-Wasserstein label cost: closed forms, factor paths and stable gradients."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from datasetflow import ClassStats, GaussianLabelCost, LabeledDataset
from datasetflow.costs import bures_wasserstein_squared, covariance_factors, nuclear_norm, psd_sqrt

pytestmark = pytest.mark.fast


def _random_spd(gen, dim, rank=None, dtype=torch.float64):
    rank = dim if rank is None else rank
    a = torch.randn(rank, dim, generator=gen, dtype=dtype)
    return a.T @ a / rank


def _reference_bures(m1, s1, m2, s2):
    """Textbook formula with numpy eigendecompositions (float64)."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ s2 @ root1
    wm = np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(wm).sum())


def test_one_dimensional_gaussians_closed_form():
    means1 = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    means2 = torch.tensor([[1.0], [-1.0], [5.0]], dtype=torch.float64)
    sd1 = torch.tensor([1.0, 3.0], dtype=torch.float64)
    sd2 = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    out = bures_wasserstein_squared(means1, sd1[:, None, None], means2, sd2[:, None, None])
    expected = (means1 - means2.T) ** 2 + (sd1[:, None] - sd2[None, :]) ** 2
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_diagonal_covariances_closed_form(gen):
    means1, means2 = (
        torch.randn(3, 5, generator=gen, dtype=torch.float64),
        torch.randn(2, 5, generator=gen, dtype=torch.float64),
    )
    var1, var2 = (
        torch.rand(3, 5, generator=gen, dtype=torch.float64),
        torch.rand(2, 5, generator=gen, dtype=torch.float64),
    )
    expected = torch.cdist(means1, means2) ** 2 + torch.cdist(var1.sqrt(), var2.sqrt()) ** 2
    diagonal = bures_wasserstein_squared(means1, None, means2, None, variances1=var1, variances2=var2, diagonal=True)
    full = bures_wasserstein_squared(means1, var1.sqrt().diag_embed(), means2, var2.sqrt().diag_embed())
    torch.testing.assert_close(diagonal, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(full, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rank", [6, 2])
def test_full_covariances_match_textbook_and_pot(gen, rank):
    dim = 6
    covs = torch.stack([_random_spd(gen, dim, rank) for _ in range(4)])
    means = torch.randn(4, dim, generator=gen, dtype=torch.float64)
    factors = covariance_factors(None, covs)
    out = bures_wasserstein_squared(means[:2], factors[:2], means[2:], factors[2:])
    for i in range(2):
        for j in range(2):
            ref = _reference_bures(means[i].numpy(), covs[i].numpy(), means[2 + j].numpy(), covs[2 + j].numpy())
            # zero eigenvalues are only known to ~sqrt(machine eps) after a square root
            tol = 1e-9 if rank == dim else 1e-6
            assert out[i, j].item() == pytest.approx(ref, rel=tol, abs=tol)
    if rank == dim:  # POT's Gaussian closed form as a second oracle (full rank only)
        pot = (
            ot.gaussian.bures_wasserstein_distance(means[0].numpy(), means[2].numpy(), covs[0].numpy(), covs[2].numpy())
            ** 2
        )
        assert out[0, 0].item() == pytest.approx(float(pot), rel=1e-7)


def test_sample_factors_equal_covariance_path(gen):
    """Thin sample factors (n_c < d) and the d x d square-root path give the same matrix."""
    ds = LabeledDataset(torch.randn(24, 10, generator=gen, dtype=torch.float64), [0] * 7 + [1] * 9 + [2] * 8)
    stats = ds.class_stats()
    assert stats.factors.shape == (3, 9, 10)
    torch.testing.assert_close(stats.covariance_matrices()[0], torch.cov(ds.x[:7].T))
    cov_stats = ClassStats(
        means=stats.means,
        weights=stats.weights,
        counts=stats.counts,
        classes=stats.classes,
        covariances=stats.covariance_matrices(),
    )
    cost = GaussianLabelCost()
    torch.testing.assert_close(cost.pairwise(stats), cost.pairwise(cov_stats), rtol=1e-8, atol=1e-8)


def test_symmetric_mode_has_zero_diagonal(gen):
    ds = LabeledDataset(torch.randn(30, 5, generator=gen, dtype=torch.float64), [0, 1, 2] * 10)
    matrix = GaussianLabelCost().pairwise(ds)
    assert torch.all(matrix.diagonal() == 0)
    torch.testing.assert_close(matrix, matrix.T)
    cross = GaussianLabelCost().pairwise(ds, ds)
    torch.testing.assert_close(matrix, cross, atol=1e-9, rtol=1e-9)


def test_psd_sqrt_and_nuclear_norm(gen):
    s = _random_spd(gen, 5)
    root = psd_sqrt(s)
    torch.testing.assert_close(root @ root, s)
    k = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    expected = torch.linalg.svdvals(k.detach()).sum(-1)
    torch.testing.assert_close(nuclear_norm(k), expected)
    torch.testing.assert_close(nuclear_norm(k.mT), expected)
    assert torch.autograd.gradcheck(nuclear_norm, (k,))
    assert torch.autograd.gradcheck(nuclear_norm, (k.detach().mT.clone().requires_grad_(),))
    k32 = k.detach().float()
    assert nuclear_norm(k32).dtype == torch.float32


def test_sqrt_gradient_finite_with_repeated_eigenvalues():
    """A ridge on a rank-deficient matrix repeats eigenvalues: eigh's backward gives NaN, ours does not."""
    base = torch.zeros(4, 4, dtype=torch.float64)
    base[0, 0] = 2.0
    s = (base + 0.1 * torch.eye(4, dtype=torch.float64)).requires_grad_()
    (grad_ours,) = torch.autograd.grad(psd_sqrt(s).sum(), s)
    assert torch.isfinite(grad_ours).all()
    w, v = torch.linalg.eigh(s)
    naive = (v * w.sqrt()) @ v.T
    (grad_naive,) = torch.autograd.grad(naive.sum(), s)
    assert not torch.isfinite(grad_naive).all()
    assert torch.autograd.gradcheck(psd_sqrt, (s.detach().clone().requires_grad_(),))


def test_gradcheck_full_rank_covariances(gen):
    dim = 3
    covs = torch.stack([_random_spd(gen, dim) for _ in range(3)]).requires_grad_()
    means = torch.randn(3, dim, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(m, c):
        f = covariance_factors(None, c)
        return bures_wasserstein_squared(m[:1], f[:1], m[1:], f[1:])

    assert torch.autograd.gradcheck(fn, (means, covs))


def test_gradcheck_rank_deficient_classes_through_samples(gen):
    """Classes with fewer samples than dimensions (rank-deficient covariances), as for images."""
    dim = 7
    x = torch.randn(9, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = [0] * 4 + [1] * 5
    target = LabeledDataset(torch.randn(11, dim, generator=gen, dtype=torch.float64), [0] * 5 + [1] * 6)

    def fn(features):
        source = LabeledDataset(features.detach(), labels).with_features(features)
        return GaussianLabelCost().pairwise(source, target)

    assert torch.autograd.gradcheck(fn, (x,))
    out = fn(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all()


def test_gradient_finite_for_identical_rank_deficient_classes(gen):
    """Comparing a rank-deficient class with itself is a kink; the gradient must still be finite."""
    x = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    xs = x.clone().requires_grad_()
    source = LabeledDataset(x, [0] * 5).with_features(xs)
    value = GaussianLabelCost().pairwise(source, LabeledDataset(x, [0] * 5))
    assert value.item() == pytest.approx(0.0, abs=1e-9)
    (grad,) = torch.autograd.grad(value.sum(), xs)
    assert torch.isfinite(grad).all()


def test_ridge_regularises_single_sample_class(gen):
    ds = LabeledDataset(torch.randn(4, 3, generator=gen, dtype=torch.float64), [0, 1, 1, 1])
    with pytest.warns(UserWarning, match="single sample"):
        stats = ds.class_stats()
    assert torch.all(stats.covariance_matrices()[0] == 0)
    matrix = GaussianLabelCost(ridge=0.5).pairwise(stats)
    assert torch.isfinite(matrix).all() and matrix[0, 1] > 0


def test_negative_ridge_rejected():
    with pytest.raises(ValueError, match="ridge"):
        GaussianLabelCost(ridge=-1.0)
