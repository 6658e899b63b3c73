"""Sliced Wasserstein, SW kernels, the MMD-SW functional and the WoW distance."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import generators as G
from datasetflow import (
    LabeledDataset,
    class_sliced_wasserstein,
    mmd_sw,
    mmd_sw_to,
    otdd_to,
    potential,
    run_flow,
    sliced_wasserstein,
    wow,
)
from datasetflow.errors import EmptyDatasetError, InvalidArgumentError, ShapeMismatchError
from datasetflow.solvers.sliced import draw_directions

KERNELS = ["riesz", "gaussian", "riesz-r", "laplace", "imq"]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- sliced Wasserstein
@pytest.mark.parametrize("sizes", [(40, 40), (40, 27), (1, 13)])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_sliced_matches_pot_with_same_projections(sizes, p):
    g = _gen(1)
    x = torch.randn(sizes[0], 4, generator=g, dtype=torch.float64)
    y = torch.randn(sizes[1], 4, generator=g, dtype=torch.float64) * 1.5 + 0.3
    theta = draw_directions(30, 4, generator=g, dtype=torch.float64)
    ours = sliced_wasserstein(x, y, projections=theta, p=p)
    pot = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), projections=theta.T.numpy(), p=p) ** p
    assert float(ours) == pytest.approx(pot, rel=1e-10)


def test_sliced_matches_pot_with_weights():
    g = _gen(2)
    x = torch.randn(25, 3, generator=g, dtype=torch.float64)
    y = torch.randn(31, 3, generator=g, dtype=torch.float64) + 1
    a = torch.rand(25, generator=g, dtype=torch.float64)
    b = torch.rand(31, generator=g, dtype=torch.float64)
    theta = draw_directions(12, 3, generator=g, dtype=torch.float64)
    ours = sliced_wasserstein(x, y, projections=theta, x_weights=a, y_weights=b)
    pot = ot.sliced_wasserstein_distance(
        x.numpy(), y.numpy(), (a / a.sum()).numpy(), (b / b.sum()).numpy(), projections=theta.T.numpy()
    )
    assert float(ours) == pytest.approx(pot**2, rel=1e-10)


def test_one_dimensional_closed_forms():
    # equal sizes: the sorted matching
    x = torch.tensor([[3.0], [0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[2.0], [-1.0], [5.0]], dtype=torch.float64)
    one = torch.ones(1, 1, dtype=torch.float64)
    assert float(sliced_wasserstein(x, y, projections=one)) == pytest.approx(((0 + 1) ** 2 + 1 + 4) / 3)
    # a Dirac against two points: the mean squared distance
    dirac = torch.zeros(1, 1, dtype=torch.float64)
    pair = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    assert float(sliced_wasserstein(dirac, pair, projections=one)) == pytest.approx(5.0)
    # sizes 2 and 3: quantile levels 1/3, 1/2, 2/3, 1 with steps 1/3, 1/6, 1/6, 1/3
    two = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    three = torch.tensor([[0.0], [0.0], [3.0]], dtype=torch.float64)
    expected = (1 / 3) * 0 + (1 / 6) * 0 + (1 / 6) * 1 + (1 / 3) * 4
    assert float(sliced_wasserstein(two, three, projections=one)) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "m", "weighted"), [(25, 25, False), (25, 25, True), (13, 31, False), (1, 9, True)])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_one_dimensional_generated_cases(n, m, weighted, p):
    """In 1-D (one unit direction) SW_p^p is W_p^p: sorting for equal uniform sizes, the quantile
    integral otherwise."""
    case = G.one_dimensional(_gen(20 + n), n, m, p=p, weighted=weighted)
    one = torch.ones(1, 1, dtype=torch.float64)
    value = sliced_wasserstein(case.x, case.y, projections=one, p=p, x_weights=case.a, y_weights=case.b)
    assert float(value) == pytest.approx(case.value, rel=1e-10)


def test_dirac_against_a_weighted_cloud():
    """Every projection of the transport to a Dirac costs the weighted mean squared projected distance."""
    case = G.dirac_against_cloud(_gen(21), 30, 4)
    theta = draw_directions(20, 4, generator=_gen(22), dtype=torch.float64)
    expected = (case.a[None] * ((case.x - case.z) @ theta.T).T ** 2).sum(1).mean()
    value = sliced_wasserstein(case.x, case.z, projections=theta, x_weights=case.a)
    assert float(value) == pytest.approx(float(expected), rel=1e-12)
    full = sliced_wasserstein(case.x, case.z, projections=torch.eye(4, dtype=torch.float64), x_weights=case.a)
    assert float(full) == pytest.approx(case.value / 4, rel=1e-12)  # the axes: W2^2 / d


def test_shifted_cloud_has_closed_form():
    g = _gen(3)
    x = torch.randn(50, 5, generator=g, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    theta = draw_directions(40, 5, generator=g, dtype=torch.float64)
    expected = ((theta @ shift) ** 2).mean()
    assert float(sliced_wasserstein(x, x + shift, projections=theta)) == pytest.approx(float(expected), rel=1e-12)


def test_class_pairs_equal_individual_calls_with_unequal_sizes():
    source, target = G.labeled_blobs((12, 20, 7)), G.labeled_blobs((9, 15), shift=0.5, seed=1)
    theta = draw_directions(25, 3, generator=_gen(4), dtype=torch.float64)
    for p in (1, 2):
        matrix = class_sliced_wasserstein(source, target, projections=theta, p=p)
        assert matrix.shape == (3, 2)
        for c in range(3):
            for k in range(2):
                single = sliced_wasserstein(source.x[source.y == c], target.x[target.y == k], projections=theta, p=p)
                assert float(matrix[c, k]) == pytest.approx(float(single), rel=1e-10, abs=1e-12)
    self_matrix = class_sliced_wasserstein(source, projections=theta)
    assert torch.equal(torch.diagonal(self_matrix), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(self_matrix, self_matrix.T)


def test_directions_are_seeded_and_unit():
    a = draw_directions(7, 4, generator=_gen(5))
    b = draw_directions(7, 4, generator=_gen(5))
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=1), torch.ones(7))
    x, y = torch.randn(10, 4, generator=_gen(6)), torch.randn(10, 4, generator=_gen(7))
    assert float(sliced_wasserstein(x, y, seed=3)) == float(sliced_wasserstein(x, y, seed=3))
    gen = _gen(8)
    assert float(sliced_wasserstein(x, y, generator=gen)) != float(sliced_wasserstein(x, y, generator=gen))


# ---------------------------------------------------------------------- MMD-SW
@pytest.mark.parametrize("kernel", KERNELS)
def test_mmd_of_a_dataset_with_itself_is_zero(kernel):
    data = G.labeled_blobs((10, 14, 6))
    assert abs(float(mmd_sw(data, data, kernel=kernel, n_projections=20))) < 1e-14
    x = data.x.clone().requires_grad_()
    mmd_sw(data.with_features(x), data, kernel=kernel, n_projections=20).backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().max()) < 1e-12


@pytest.mark.parametrize("kernel", KERNELS)
def test_mmd_gradcheck_float64(kernel):
    source, target = G.labeled_blobs((4, 5), dim=2), G.labeled_blobs((3, 6), dim=2, shift=0.7, seed=2)
    theta = draw_directions(6, 2, generator=_gen(9), dtype=torch.float64)
    bandwidth = 1.5 if kernel in ("gaussian", "laplace", "imq") else None

    def f(x):
        return mmd_sw(source.with_features(x), target, kernel=kernel, bandwidth=bandwidth, projections=theta)

    assert torch.autograd.gradcheck(f, (source.x.clone().requires_grad_(),), eps=1e-6, atol=1e-6)


def test_riesz_gradient_is_finite_for_coincident_classes():
    # two source classes equal to one another: their SW is 0 and the Riesz kernel must not give NaN
    g = _gen(10)
    cloud = torch.randn(6, 2, generator=g, dtype=torch.float64)
    source = LabeledDataset(torch.cat([cloud, cloud]), [0] * 6 + [1] * 6)
    target = G.labeled_blobs((6, 6), dim=2, shift=1.0)
    x = source.x.clone().requires_grad_()
    mmd_sw(source.with_features(x), target, kernel="riesz", n_projections=8).backward()
    assert torch.isfinite(x.grad).all()


def test_mmd_invariant_to_point_and_class_order():
    source, target = G.labeled_blobs((8, 11, 5)), G.labeled_blobs((7, 9), shift=0.3, seed=3)
    theta = draw_directions(16, 3, generator=_gen(11), dtype=torch.float64)
    base = float(mmd_sw(source, target, projections=theta, kernel="gaussian", bandwidth=2.0))
    perm = torch.randperm(len(source), generator=_gen(12))
    shuffled = LabeledDataset(source.x[perm], [source.labels[i] for i in perm.tolist()])
    relabelled = LabeledDataset(source.x, [{0: "c", 1: "a", 2: "b"}[c] for c in source.labels], classes=["a", "b", "c"])
    for other in (shuffled, relabelled):
        value = float(mmd_sw(other, target, projections=theta, kernel="gaussian", bandwidth=2.0))
        assert value == pytest.approx(base, rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 9), st.integers(2, 9), st.integers(0, 1000))
def test_mmd_is_symmetric(n1, n2, seed):
    source, target = (
        G.labeled_blobs((n1, n2), dim=2, seed=seed),
        G.labeled_blobs((n2, 3), dim=2, shift=0.4, seed=seed + 1),
    )
    theta = draw_directions(5, 2, generator=_gen(seed), dtype=torch.float64)
    forward = float(mmd_sw(source, target, projections=theta))
    backward = float(mmd_sw(target, source, projections=theta))
    assert forward == pytest.approx(backward, rel=1e-9, abs=1e-12)
    assert forward >= -1e-12


def test_class_weights_are_respected():
    source, target = G.labeled_blobs((10, 10)), G.labeled_blobs((10, 10), shift=1.0)
    theta = draw_directions(10, 3, generator=_gen(13), dtype=torch.float64)
    # all the mass on class 0 equals comparing that class alone
    heavy = source.with_class_weights([1.0, 0.0])
    alone = source.subset(source.y == 0)
    assert float(mmd_sw(heavy, target, projections=theta)) == pytest.approx(
        float(mmd_sw(alone, target, projections=theta)), rel=1e-12
    )
    unbalanced = LabeledDataset(source.x, source.labels, weights=torch.rand(20, generator=_gen(14)))
    with pytest.raises(InvalidArgumentError, match="with_class_weights"):
        mmd_sw(unbalanced, target)


def test_euler_flow_with_fixed_directions_decreases_monotonically():
    source = G.labeled_blobs((15, 10, 12), dim=2).with_class_weights("uniform")
    target = G.labeled_blobs((10, 10, 10), dim=2, shift=3.0, seed=5)
    functional = mmd_sw_to(target, n_projections=30, resample=False, seed=1)
    result = run_flow(functional, source, step_size=0.05, steps=20)
    objective = np.array(result.objective)
    assert np.all(np.diff(objective) < 0), objective
    assert objective[-1] < 0.8 * objective[0]


def test_flow_velocity_is_the_wow_gradient():
    """One Euler step moves particle i of class c by tau * (n_c / p_c) * dF/dx_i (uniform class weights)."""
    source = G.labeled_blobs((4, 9), dim=2).with_class_weights("uniform")
    target = G.labeled_blobs((5, 5), dim=2, shift=1.0, seed=6)
    theta = draw_directions(12, 2, generator=_gen(15), dtype=torch.float64)
    x = source.x.clone().requires_grad_()
    mmd_sw(source.with_features(x), target, projections=theta).backward()
    counts = source.class_counts().to(x.dtype)
    rescale = (counts / 0.5)[source.y][:, None]  # n_c / p_c with p_c = 1/2
    tau = 0.1
    result = run_flow(mmd_sw_to(target, projections=theta), source, step_size=tau, steps=1)
    assert torch.allclose(result.final.x, source.x - tau * rescale * x.grad, atol=1e-12)


def test_mmd_composes_with_otdd_and_potential_terms():
    source = G.labeled_blobs((12, 12), dim=2).with_class_weights("uniform")
    target = G.labeled_blobs((12, 12), dim=2, shift=2.0, seed=7)
    functional = (
        mmd_sw_to(target, n_projections=20)
        + 0.5 * otdd_to(target, outer="exact")
        + 0.01 * potential(lambda x, y: (x**2).sum(1))
    )
    result = run_flow(functional, source, step_size=0.05, steps=15)
    assert set(result.terms) == {"mmd_sw", "otdd", "potential"}
    assert result.terms["mmd_sw"][-1] < result.terms["mmd_sw"][0]
    assert result.terms["otdd"][-1] < result.terms["otdd"][0]


def test_fresh_directions_and_minibatches_resume_bit_identically(tmp_path):
    source = G.labeled_blobs((10, 8), dim=3).with_class_weights("uniform")
    target = G.labeled_blobs((30, 25), dim=3, shift=1.0, seed=8)

    def make():
        return mmd_sw_to(target, kernel="gaussian", n_projections=16, target_batch=6, seed=4)

    full = run_flow(make(), source, step_size=0.05, steps=8, optimizer="momentum")
    run_flow(make(), source, step_size=0.05, steps=4, optimizer="momentum", checkpoint_every=4, checkpoint_dir=tmp_path)
    resumed = run_flow(
        make(), source, step_size=0.05, steps=8, optimizer="momentum", checkpoint_dir=tmp_path, resume=True
    )
    assert torch.equal(full.final.x, resumed.final.x)
    assert full.objective == resumed.objective


def test_median_bandwidth_is_fitted_once_and_reported():
    source, target = G.labeled_blobs((6, 6)), G.labeled_blobs((6, 6), shift=1.0)
    functional = mmd_sw_to(target, kernel="gaussian", n_projections=10)
    assert functional.kernel.bandwidth is None
    run_flow(functional, source.with_class_weights("uniform"), step_size=0.01, steps=2)
    assert functional.kernel.bandwidth is not None and functional.kernel.bandwidth > 0
    assert "bandwidth=" in repr(functional)


# ---------------------------------------------------------------------- WoW distance
def test_wow_matches_pot_on_hand_built_cost():
    source, target = G.labeled_blobs((10, 13, 8)), G.labeled_blobs((9, 12), shift=0.8, seed=9)
    costs = np.zeros((3, 2))
    for c in range(3):
        for k in range(2):
            xs, xt = source.x[source.y == c].numpy(), target.x[target.y == k].numpy()
            costs[c, k] = ot.emd2(np.full(len(xs), 1 / len(xs)), np.full(len(xt), 1 / len(xt)), ot.dist(xs, xt))
    p, q = source.class_weights().numpy(), target.class_weights().numpy()
    result = wow(source, target, inner="exact")
    assert np.allclose(result.class_costs.numpy(), costs, rtol=1e-10)
    assert float(result.distance_squared) == pytest.approx(ot.emd2(p, q, costs), rel=1e-10)
    assert np.allclose(result.coupling.sum(1).numpy(), p) and np.allclose(result.coupling.sum(0).numpy(), q)


@pytest.mark.parametrize("ground", ["exact", "bures", "sliced"])
def test_wow_matching_recovers_a_class_permutation(ground):
    target = G.labeled_blobs((15, 15, 15, 15), dim=2, seed=10)
    case = G.relabelled_copy(target, _gen(11), noise=0.05, prefix="s")
    source, renamed_from = case.target, {renamed: name for name, renamed in case.correspondence.items()}
    assert any(renamed_from[f"s{k}"] != k for k in range(4))  # a real renaming
    result = wow(source, target, inner=ground)
    assert result.matched_classes == [target.classes.index(renamed_from[name]) for name in source.classes]
    relabelled = result.relabel(source)
    assert relabelled.labels == [renamed_from[name] for name in source.labels]
    assert float(wow(target, target, inner=ground).distance) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------- bad input
def test_bad_input_errors():
    source, target = G.labeled_blobs((5, 5)), G.labeled_blobs((5, 5), shift=1.0)
    with pytest.raises(ShapeMismatchError, match=r"\(L, d\) = \(L, 3\)"):
        mmd_sw(source, target, projections=torch.randn(10, 4, dtype=torch.float64))
    with pytest.raises(ShapeMismatchError):
        sliced_wasserstein(torch.randn(5, 3), torch.randn(5, 2))
    with pytest.raises(InvalidArgumentError, match="L >= 1"):
        mmd_sw(source, target, n_projections=0)
    with pytest.raises(InvalidArgumentError, match="L = 0"):
        sliced_wasserstein(source.x, target.x, projections=torch.zeros(0, 3))
    with pytest.raises(InvalidArgumentError, match="L >= 1"):
        mmd_sw_to(target, n_projections=0)
    for bad in (0.0, -1.0):
        with pytest.raises(InvalidArgumentError, match="positive"):
            mmd_sw(source, target, kernel="gaussian", bandwidth=bad)
    with pytest.raises(InvalidArgumentError, match="has no bandwidth"):
        mmd_sw(source, target, kernel="riesz", bandwidth=1.0)
    with pytest.raises(InvalidArgumentError, match=r"valid kernels are \['gaussian', 'imq', 'laplace'"):
        mmd_sw(source, target, kernel="polynomial")
    with pytest.raises(InvalidArgumentError, match=r"\(0, 2\)"):
        mmd_sw(source, target, kernel="riesz-r", exponent=2.5)
    with pytest.raises(EmptyDatasetError):
        LabeledDataset(torch.randn(4, 3), [0, 0, 1, 1], classes=[0, 1, 2])
    with pytest.raises(EmptyDatasetError):
        sliced_wasserstein(torch.zeros(0, 3), target.x)
    with pytest.raises(InvalidArgumentError, match="label cost must be one of"):
        wow(source, target, inner="gromov")
    with pytest.raises(ShapeMismatchError):
        wow(source, G.labeled_blobs((4, 4), dim=2))


def test_target_term_is_computed_once_with_fixed_directions_and_values_stay_non_negative():
    source = G.labeled_blobs((10, 10), dim=2).with_class_weights("uniform")
    target = G.labeled_blobs((12, 12), dim=2, shift=0.5, seed=12)
    fixed = mmd_sw_to(target, n_projections=10, resample=False)
    run_flow(fixed, source, step_size=0.05, steps=3)
    term, cache = fixed._target_term, fixed._target_cache
    assert term is not None and cache is not None
    fixed.value(_state(source))  # later evaluations reuse the target's sorted projections and term
    assert fixed._target_cache is cache and torch.equal(fixed._target_term, term)
    fresh = run_flow(
        mmd_sw_to(target, kernel="gaussian", bandwidth=0.05, n_projections=8), source, step_size=0.1, steps=60
    )
    assert min(fresh.objective) >= 0.0


def _state(dataset):
    from datasetflow.flows import FlowState

    state = FlowState.from_dataset(dataset)
    state.x.requires_grad_()
    return state


def test_median_bandwidth_comes_from_the_source_target_matrix():
    source, target = G.labeled_blobs((8, 9)), G.labeled_blobs((7, 10), shift=0.6, seed=13)
    theta = draw_directions(12, 3, generator=_gen(16), dtype=torch.float64)
    cross = class_sliced_wasserstein(source, target, projections=theta)
    median = float(cross[cross > 0].median())
    assert float(mmd_sw(source, target, kernel="gaussian", projections=theta)) == pytest.approx(
        float(mmd_sw(source, target, kernel="gaussian", bandwidth=median, projections=theta)), rel=1e-12
    )


def test_building_the_functional_leaves_the_global_random_state_alone():
    target = G.labeled_blobs((5, 5))
    before = torch.random.get_rng_state()
    mmd_sw_to(target, n_projections=20)
    assert torch.equal(torch.random.get_rng_state(), before)
