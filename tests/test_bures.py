"""Bures-Wasserstein label cost: closed forms, factor paths and stable gradients."""

from __future__ import annotations

import ot
import pytest
import torch

import generators as G
from datasetflow import ClassStats, GaussianLabelCost, LabeledDataset
from datasetflow.costs import bures_wasserstein_squared, covariance_factors, nuclear_norm, psd_sqrt

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("structure", ["isotropic", "diagonal"])
def test_one_dimensional_gaussians_closed_form(gen, structure):
    """In 1-D, W2^2 = (m1 - m2)^2 + (s1 - s2)^2."""
    fam = G.gaussian_families(gen, 2, 3, 1, structure=structure)
    sd1, sd2 = fam.covs1.sqrt(), fam.covs2.sqrt()
    out = bures_wasserstein_squared(fam.means1, sd1, fam.means2, sd2)
    expected = (fam.means1 - fam.means2.T) ** 2 + (sd1.reshape(-1, 1) - sd2.reshape(1, -1)) ** 2
    torch.testing.assert_close(fam.w2_squared, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, fam.w2_squared, rtol=1e-12, atol=1e-12)


def test_diagonal_covariances_closed_form(gen):
    fam = G.gaussian_families(gen, 3, 2, 5, structure="diagonal")
    var1, var2 = fam.variances1, fam.variances2
    diagonal = bures_wasserstein_squared(
        fam.means1, None, fam.means2, None, variances1=var1, variances2=var2, diagonal=True
    )
    full = bures_wasserstein_squared(fam.means1, var1.sqrt().diag_embed(), fam.means2, var2.sqrt().diag_embed())
    torch.testing.assert_close(diagonal, fam.w2_squared, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(full, fam.w2_squared, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("structure", "rank"), [("isotropic", None), ("commuting", None), ("rank_deficient", 2)])
def test_full_covariances_closed_form(gen, structure, rank):
    """Full (non-diagonal) covariances with a shared eigenbasis: B^2 = |sqrt(l1) - sqrt(l2)|^2 exactly."""
    fam = G.gaussian_families(gen, 3, 4, 6, structure=structure, rank=rank)
    out = bures_wasserstein_squared(
        fam.means1, covariance_factors(None, fam.covs1), fam.means2, covariance_factors(None, fam.covs2)
    )
    tol = 1e-9 if fam.rank == 6 else 1e-6  # zero eigenvalues are only known to ~sqrt(eps) after a square root
    torch.testing.assert_close(out, fam.w2_squared, rtol=tol, atol=tol)


@pytest.mark.parametrize(("per_class", "rank"), [(4, 3), (9, None)])
def test_label_cost_from_samples_with_exact_moments_closed_form(gen, per_class, rank):
    """Classes sampled with exactly the moments of commuting Gaussians: the thin-factor path (n_c <= d)
    and the d x d square-root path (n_c > d) both give the closed form."""
    structure = "rank_deficient" if rank else "commuting"
    case = G.labeled_gaussians(gen, 3, 2, 6, per_class=per_class, structure=structure, rank=rank)
    stats = case.source.class_stats()
    assert (stats.factors is not None and stats.factors.shape[-2] < 6) == (per_class <= 6)
    tol = 1e-9 if rank is None else 1e-6
    torch.testing.assert_close(
        GaussianLabelCost().pairwise(case.source, case.target), case.label_distances, rtol=tol, atol=tol
    )


@pytest.mark.parametrize("rank", [6, 2])
def test_full_covariances_match_textbook_and_pot(gen, rank):
    dim = 6
    fam = G.gaussian_families(gen, 2, 2, dim, structure="general", rank=rank)
    assert not fam.exact  # non-commuting: the answer is the numpy textbook reference
    factors1, factors2 = covariance_factors(None, fam.covs1), covariance_factors(None, fam.covs2)
    out = bures_wasserstein_squared(fam.means1, factors1, fam.means2, factors2)
    # zero eigenvalues are only known to ~sqrt(machine eps) after a square root
    tol = 1e-9 if rank == dim else 1e-6
    torch.testing.assert_close(out, fam.w2_squared, rtol=tol, atol=tol)
    if rank == dim:  # POT's Gaussian closed form as a second oracle (full rank only)
        m1, c1, m2, c2 = (t[0].numpy() for t in (fam.means1, fam.covs1, fam.means2, fam.covs2))
        pot = ot.gaussian.bures_wasserstein_distance(m1, m2, c1, c2) ** 2
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
    s = G.random_spd(gen, 5)
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
    covs = torch.stack([G.random_spd(gen, dim) for _ in range(3)]).requires_grad_()
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


def test_batched_eigen_split_over_threads_is_bit_identical(gen):
    """The batch split over intra-op threads gives exactly one call's result (each matrix is solved alone),
    also in a forked child (the pool is per process)."""
    from datasetflow.costs.linalg import batched_eigen

    k = torch.randn(3, 9, 6, 6, generator=gen, dtype=torch.float64)
    gram = k @ k.mT
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        values, vectors = batched_eigen(torch.linalg.eigh, gram)
        only_values = batched_eigen(torch.linalg.eigvalsh, gram)
    finally:
        torch.set_num_threads(previous)
    expected_values, expected_vectors = torch.linalg.eigh(gram)
    assert torch.equal(values, expected_values) and torch.equal(vectors, expected_vectors)
    assert torch.equal(only_values, torch.linalg.eigvalsh(gram))
    assert torch.get_num_threads() == previous
