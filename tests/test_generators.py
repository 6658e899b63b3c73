"""The test generators' answers, each checked against a second, independent oracle (POT or numpy)."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

import generators as G

pytestmark = pytest.mark.fast


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("structure", G.GAUSSIAN_STRUCTURES)
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_gaussian_answers_match_numpy_textbook_and_pot(structure, dim):
    fam = G.gaussian_families(_gen(dim), 3, 2, dim, structure=structure)
    assert fam.exact == (structure != "general")
    m1, c1, m2, c2 = (t.numpy() for t in (fam.means1, fam.covs1, fam.means2, fam.covs2))
    tol = 1e-9 if fam.rank == dim else 1e-6  # square roots of zero eigenvalues are known to ~sqrt(eps)
    for i in range(3):
        for j in range(2):
            assert fam.w2_squared[i, j].item() == pytest.approx(
                G.bures_reference(m1[i], c1[i], m2[j], c2[j]), rel=tol, abs=tol
            )
            if fam.rank == dim:  # POT's closed form needs invertible square roots
                pot = ot.gaussian.bures_wasserstein_distance(m1[i], m2[j], c1[i], c2[j]) ** 2
                assert fam.w2_squared[i, j].item() == pytest.approx(float(pot), rel=1e-7, abs=1e-9)
    torch.testing.assert_close(fam.covs1, fam.covs1.mT)
    eig = torch.linalg.eigvalsh(torch.cat([fam.covs1, fam.covs2]))
    assert (eig > -1e-12).all()
    assert ((eig > 1e-10).sum(-1) == fam.rank).all()


def test_rank_deficient_covariances_have_different_supports():
    fam = G.gaussian_families(_gen(3), 4, 4, 6, structure="rank_deficient", rank=2)
    ranges = [torch.linalg.eigh(c).eigenvectors[:, -2:] for c in torch.cat([fam.covs1, fam.covs2])]
    overlaps = [torch.linalg.svdvals(ranges[0].T @ r).min().item() for r in ranges[1:]]
    assert min(overlaps) < 0.999  # not all the same 2-plane


@pytest.mark.parametrize("rank", [None, 2])
def test_exact_moment_samples(rank):
    cov = G.random_spd(_gen(4), 5, rank)
    mean = torch.arange(5, dtype=torch.float64)
    x = G.exact_moment_samples(_gen(5), mean, cov, 9)
    torch.testing.assert_close(x.mean(0), mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="n > rank"):
        G.exact_moment_samples(_gen(5), mean, cov, 5 if rank is None else 2)


def test_labeled_gaussians_reproduce_the_family_moments():
    case = G.labeled_gaussians(_gen(6), 2, 3, 4, per_class=[5, 6, 7, 8, 9], structure="rank_deficient", rank=2)
    assert case.source.class_counts().tolist() == [5, 6] and case.target.class_counts().tolist() == [7, 8, 9]
    reference = G.reference_label_distances(case.source, case.target)
    np.testing.assert_allclose(reference, case.label_distances.numpy(), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("noise", [0.0, 0.5, 0.95])
def test_permutation_answer_is_the_emd_and_the_assignment(noise):
    case = G.permutation(_gen(7), 25, 3, noise=noise)
    n = len(case.x)
    torch.testing.assert_close(case.y, case.x[case.permutation], atol=noise * 10, rtol=0)
    plan = ot.emd(ot.unif(n), ot.unif(n), case.cost.numpy())
    np.testing.assert_allclose(plan, case.plan.numpy(), atol=1e-12)
    assert float((plan * case.cost.numpy()).sum()) == pytest.approx(case.value, rel=1e-12, abs=1e-15)
    assert case.gap > 0
    # the second best assignment (any single swap) is worse by at least the gap
    swap = case.permutation.clone()
    swap[[0, 1]] = swap[[1, 0]]
    other = case.cost[swap, torch.arange(n)].mean().item()
    assert other - case.value >= case.gap - 1e-12


def test_permutation_cost_has_a_unique_optimum():
    case = G.permutation_cost(_gen(8), 12)
    plan = ot.emd(ot.unif(12), ot.unif(12), case.cost.numpy())
    np.testing.assert_allclose(plan, case.plan.numpy(), atol=1e-12)
    assert float((plan * case.cost.numpy()).sum()) == pytest.approx(case.value, rel=1e-12)


@pytest.mark.parametrize("weighted", [True, False])
def test_dirac_answer_is_the_emd(weighted):
    case = G.dirac_against_cloud(_gen(9), 15, 3, weighted=weighted)
    cost = ot.dist(case.x.numpy(), case.z.numpy())
    assert ot.emd2(case.a.numpy(), np.ones(1), cost) == pytest.approx(case.value, rel=1e-12)
    torch.testing.assert_close(case.plan.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize(("n", "m", "weighted"), [(30, 30, False), (17, 23, False), (20, 20, True), (9, 31, True)])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_one_dimensional_answer_is_the_emd(n, m, weighted, p):
    case = G.one_dimensional(_gen(10), n, m, p=p, weighted=weighted)
    assert case.exact == (n == m and not weighted)
    a = ot.unif(n) if case.a is None else case.a.numpy()
    b = ot.unif(m) if case.b is None else case.b.numpy()
    cost = np.abs(case.x.numpy() - case.y.numpy().T) ** p
    assert ot.emd2(a, b, cost) == pytest.approx(case.value, rel=1e-10)
    # the reference itself, against a second numpy implementation (POT's 1-D solver)
    pot_1d = ot.wasserstein_1d(case.x.numpy().ravel(), case.y.numpy().ravel(), a, b, p=p)
    reference = G.wasserstein_1d_reference(case.x.numpy(), case.y.numpy(), a, b, p)
    assert reference == pytest.approx(float(pot_1d), rel=1e-10)


def test_one_dimensional_reference_on_hand_computed_cases():
    # sizes 2 and 3: quantile levels 1/3, 1/2, 2/3, 1 with steps 1/3, 1/6, 1/6, 1/3
    assert G.wasserstein_1d_reference([0.0, 1.0], [0.0, 0.0, 3.0]) == pytest.approx(1 / 6 + 4 / 3)
    assert G.wasserstein_1d_reference([0.0], [1.0, 3.0]) == pytest.approx(5.0)
    assert G.wasserstein_1d_reference([0.0, 1.0], [0.0, 1.0], [0.25, 0.75], [0.75, 0.25]) == pytest.approx(0.5)


def test_gaussian_classes_and_blobs_are_seeded():
    a, b = G.gaussian_classes(_gen(11)), G.gaussian_classes(_gen(11))
    assert torch.equal(a.x, b.x) and a.labels == b.labels and a.num_classes == 3 and len(a) == 36
    blobs = G.labeled_blobs((4, 6), dim=2, shift=1.0, seed=3)
    assert torch.equal(blobs.x, G.labeled_blobs((4, 6), dim=2, shift=1.0, seed=3).x)
    assert blobs.class_counts().tolist() == [4, 6]


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.3, 2.0)])
def test_translated_copy_bounds_bracket_the_exact_value(weights):
    data = G.gaussian_classes(_gen(12), spread=1.0)  # overlapping classes: no separation is needed
    case = G.translated_copy(data, [0.3, -0.2, 0.1, 0.4], feature_weight=weights[0], label_weight=weights[1])
    assert case.distance_squared == pytest.approx(sum(weights) * 0.3, rel=1e-12)
    # the identity coupling attains it, and the feature-plus-label lower bound does not exceed it
    assert case.upper == pytest.approx(case.distance_squared, rel=1e-9)
    assert case.lower <= case.distance_squared * (1 + 1e-9)
    assert torch.equal(case.target.y, data.y) and torch.allclose(case.target.x - data.x, case.target.x[:1] - data.x[:1])


def test_relabelled_copy_is_a_renamed_shuffled_copy():
    data = G.gaussian_classes(_gen(13))
    case = G.relabelled_copy(data, _gen(18))
    assert list(case.correspondence.values()) != sorted(case.correspondence.values())  # a real renaming
    assert case.distance_squared == 0.0 and case.lower == pytest.approx(0.0, abs=1e-9)
    assert case.upper == pytest.approx(0.0, abs=1e-9)  # the pairing of every point with its copy
    assert sorted(case.correspondence.values()) == list(case.target.classes)
    for name, renamed in case.correspondence.items():
        source_points = data.x[data.y == data.classes.index(name)]
        target_points = case.target.x[case.target.y == case.target.classes.index(renamed)]
        assert sorted(map(tuple, source_points.tolist())) == sorted(map(tuple, target_points.tolist()))
    noisy = G.relabelled_copy(data, _gen(18), noise=0.1)
    assert noisy.distance_squared is None and 0.0 < noisy.lower <= noisy.upper + 1e-12
