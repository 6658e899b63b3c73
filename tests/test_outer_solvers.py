"""Outer solvers that never form n x m: low-rank OT and minibatch OT, against POT's exact OT."""

from __future__ import annotations

import itertools
import math
import warnings

import ot
import pytest
import torch

import generators as G
from datasetflow import OTDDCost, otdd, solve
from datasetflow.costs import DenseCost
from datasetflow.errors import DatasetflowWarning, InvalidArgumentError
from datasetflow.solvers.lowrank import default_rank

pytestmark = pytest.mark.fast
F64 = torch.float64


def _otdd_cost(gen, n=30, m=24, dim=3, classes=3, requires_grad=False):
    x = torch.randn(n, dim, generator=gen, dtype=F64)
    xt = torch.randn(m, dim, generator=gen, dtype=F64) + 0.7
    y = torch.arange(n) % classes
    yt = torch.arange(m) % classes
    label = torch.rand(classes, classes, generator=gen, dtype=F64) * 4
    x.requires_grad_(requires_grad)
    label.requires_grad_(requires_grad)
    return OTDDCost(x, xt, y, yt, label), x, label


def _uniform(k):
    return torch.full((k,), 1.0 / k, dtype=F64)


def _exact(cost, a, b):
    return float(ot.emd2(a.numpy(), b.numpy(), cost.dense().detach().numpy()))


def test_factors_reproduce_the_cost(gen):
    cost, _, _ = _otdd_cost(gen)
    big_a, big_b = cost.factors()
    assert big_a.shape == (30, 3 + 2 + 3) and big_b.shape == (24, 3 + 2 + 3)
    torch.testing.assert_close(big_a @ big_b.mT, cost.dense(), rtol=1e-12, atol=1e-12)


def test_lowrank_full_rank_approaches_exact_and_is_an_upper_bound(gen):
    cost, _, _ = _otdd_cost(gen, n=24, m=24)
    a = b = _uniform(24)
    exact = _exact(cost, a, b)
    values = {}
    for rank in (3, 8, 24):
        res = solve(cost, a, b, method="lowrank", rank=rank, max_iter=400)
        values[rank] = float(res.value)
        # every rank-r coupling is feasible: never below exact OT (up to round-off)
        assert values[rank] >= exact * (1 - 1e-9)
        q, g, r = res.plan_factors
        plan = (q / g) @ r.mT
        torch.testing.assert_close(plan.sum(1), a, atol=1e-9, rtol=0)
        torch.testing.assert_close(plan.sum(0), b, atol=1e-9, rtol=0)
        assert float((plan * cost.dense()).sum()) == pytest.approx(values[rank], rel=1e-10)
    assert values[24] <= exact * 1.03  # at full rank, within 3 % of exact OT
    assert values[24] <= values[3]


def test_lowrank_on_dense_matrix_matches_factored(gen):
    cost, _, _ = _otdd_cost(gen)
    a, b = _uniform(30), _uniform(24)
    factored = solve(cost, a, b, method="lowrank", rank=6)
    dense = solve(DenseCost(cost.dense().detach()), a, b, method="lowrank", rank=6)
    assert factored.backend == "factored" and dense.backend == "dense"
    assert float(factored.value) == pytest.approx(float(dense.value), rel=1e-8)


def test_lowrank_envelope_gradient_equals_autodiff(gen):
    """The factorised envelope gradient equals autodiff of <P, C(x, L)> with the plan held fixed (float64)."""
    cost, x, label = _otdd_cost(gen, requires_grad=True)
    a, b = _uniform(30), _uniform(24)
    res = solve(cost, a, b, method="lowrank", rank=6)
    gx, gl = torch.autograd.grad(res.value, [x, label])
    q, g, r = res.plan_factors
    plan = ((q / g) @ r.mT).detach()
    rx, rl = torch.autograd.grad((plan * cost.dense()).sum(), [x, label])
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gl, rl, rtol=1e-10, atol=1e-12)


def test_lowrank_bad_rank_and_rank_below_classes(gen):
    cost, _, _ = _otdd_cost(gen, classes=4)
    a, b = _uniform(30), _uniform(24)
    for bad in (0, -1, 25, 2.5):
        with pytest.raises(InvalidArgumentError, match="rank"):
            solve(cost, a, b, method="lowrank", rank=bad)
    with pytest.warns(DatasetflowWarning, match="below the number of classes"):
        solve(cost, a, b, method="lowrank", rank=2)
    with pytest.raises(InvalidArgumentError, match="reg"):
        solve(cost, a, b, reg=0.1, method="lowrank")
    with pytest.raises(InvalidArgumentError, match="rank"):
        solve(cost, a, b, method="exact", rank=3)


def test_default_rank_scales_with_classes():
    assert default_rank(10_000, 10_000, 10) == 40
    assert default_rank(10_000, 10_000, 100) == 400
    assert default_rank(10_000, 10_000, 0) == 10
    assert default_rank(5, 8, 10) == 5


def test_minibatch_full_batch_equals_exact(gen):
    cost, _, _ = _otdd_cost(gen)
    a = torch.rand(30, generator=gen, dtype=F64) + 0.5
    b = torch.rand(24, generator=gen, dtype=F64) + 0.5
    a, b = a / a.sum(), b / b.sum()
    exact = solve(cost, a, b)
    for stratify_seed in (0, 1):
        res = solve(cost, a, b, method="minibatch", batch_size=24, n_batches=3, seed=stratify_seed)
        if cost.shape[0] == 24:
            assert float(res.value) == pytest.approx(float(exact.value), rel=1e-10)
    square, _, _ = _otdd_cost(gen, n=24, m=24)
    a24 = _uniform(24)
    full = solve(square, a24, a24)
    res = solve(square, a24, a24, method="minibatch", batch_size=24, n_batches=3)
    assert float(res.value) == pytest.approx(float(full.value), rel=1e-10)
    assert res.stderr == pytest.approx(0.0, abs=1e-10)


def test_minibatch_mean_matches_its_expectation(gen):
    """Tiny problem: the expectation over all pairs of minibatches is enumerated exactly."""
    n, size = 6, 3
    x = torch.randn(n, 2, generator=gen, dtype=F64)
    xt = torch.randn(n, 2, generator=gen, dtype=F64) + 0.5
    cost = OTDDCost(x, xt)
    a = _uniform(n)
    dense = cost.dense().numpy()
    subsets = list(itertools.combinations(range(n), size))
    w = [1.0 / size] * size
    expectation = sum(ot.emd2(w, w, dense[list(i)][:, list(j)]) for i in subsets for j in subsets) / len(subsets) ** 2
    res = solve(cost, a, a, method="minibatch", batch_size=size, n_batches=400, seed=3)
    assert abs(float(res.value) - expectation) < 3.5 * res.stderr
    assert res.stderr > 0
    # above exact OT, and the self-distance is not 0
    assert expectation > _exact(cost, a, a)
    self_cost = OTDDCost(x, x)
    assert float(solve(self_cost, a, a, method="minibatch", batch_size=size, n_batches=20).value) > 0


def test_minibatch_seeded_and_gradient(gen):
    cost, x, _ = _otdd_cost(gen, requires_grad=True)
    a, b = _uniform(30), _uniform(24)
    one = solve(cost, a, b, method="minibatch", batch_size=10, n_batches=4, seed=5)
    two = solve(cost, a, b, method="minibatch", batch_size=10, n_batches=4, seed=5)
    assert float(one.value.detach()) == float(two.value.detach())
    assert len(one.errors) == 4 and one.config["stratified"]
    (grad,) = torch.autograd.grad(one.value, [x])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        solve(cost, a, b, method="minibatch", batch_size=25)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        solve(cost, a, b, method="minibatch", batch_size=0)
    with pytest.raises(InvalidArgumentError, match="n_batches"):
        solve(cost, a, b, method="minibatch", n_batches=0)


def test_stratified_minibatch_keeps_class_proportions(gen):
    cost, _, _ = _otdd_cost(gen, n=30, m=30, classes=3)
    from datasetflow.solvers.minibatch import draw_minibatch

    g = torch.Generator().manual_seed(0)
    index, weights = draw_minibatch(_uniform(30), 9, g, cost.labels)
    assert torch.bincount(cost.labels[index], minlength=3).tolist() == [3, 3, 3]
    assert float(weights.sum()) == pytest.approx(1.0)
    assert len(set(index.tolist())) == 9


@pytest.mark.parametrize("outer", ["lowrank", "minibatch"])
def test_otdd_outer_front_door(outer):
    source = G.labeled_blobs([20, 25, 15], dim=3, seed=1)
    target = G.labeled_blobs([18, 22, 20], dim=3, shift=0.5, seed=2)
    source = source.to(dtype=F64)
    x = source.x.clone().requires_grad_(True)
    source = type(source)(x, source.y, classes=source.classes)
    exact = otdd(source, target, outer="exact")
    options = {"rank": 12, "max_iter": 2000} if outer == "lowrank" else {"batch_size": 40, "n_batches": 4}
    res = otdd(source, target, outer=outer, **options)
    assert res.ot.method == outer and res.ot.plan is None
    if outer == "lowrank":
        assert float(res.distance_squared) >= float(exact.distance_squared) * (1 - 1e-9)
    else:
        assert res.ot.stderr is not None and math.isfinite(res.ot.stderr)
    (grad,) = torch.autograd.grad(res.distance_squared, [x])
    assert torch.isfinite(grad).all()
    assert res.config["outer"] == outer
    with pytest.raises(InvalidArgumentError, match="reg"):
        otdd(source, target, outer="lowrank", reg=0.5)


def test_lowrank_follows_device_and_dtype(gen):
    cost, _, _ = _otdd_cost(gen)
    cost32 = OTDDCost(cost.x.float(), cost.x_target.float(), cost.labels, cost.labels_target, cost.label_matrix.float())
    a, b = _uniform(30).float(), _uniform(24).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = solve(cost32, a, b, method="lowrank", rank=5)
    assert res.value.dtype == torch.float32 and res.value.device == cost32.x.device
    assert all(t.dtype == torch.float32 for t in res.plan_factors)


def test_diagonal_class_stats_match_torch_var():
    data = G.labeled_blobs([12, 9, 15], dim=4, seed=3)
    stats = data.class_stats(diagonal=True)
    full = data.class_stats()
    assert stats.factors is None and stats.variances.shape == (3, 4)
    for c in range(3):
        members = data.x[data.y == c]
        torch.testing.assert_close(stats.variances[c], members.var(0, unbiased=True))
    torch.testing.assert_close(stats.means, full.means)
    torch.testing.assert_close(stats.variances, full.diagonal_variances())


def test_minibatch_pairs_solved_on_threads_equal_one_loop(gen):
    """The exact minibatch pairs are solved on ``torch.get_num_threads()`` threads: the values, the per-pair
    values and the gradient equal those of one sequential loop (one thread) bit for bit."""
    cost, x, label = _otdd_cost(gen, n=40, m=36, requires_grad=True)
    a, b = _uniform(40), _uniform(36)
    threads = torch.get_num_threads()
    outcomes = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            res = solve(cost, a, b, method="minibatch", batch_size=8, n_batches=5, seed=3)
            outcomes.append((res.value.detach(), res.errors, torch.autograd.grad(res.value, [x, label])))
    finally:
        torch.set_num_threads(threads)
    (v1, e1, g1), (v3, e3, g3) = outcomes
    assert torch.equal(v1, v3) and e1 == e3
    assert all(torch.equal(p, q) for p, q in zip(g1, g3, strict=True))
    assert g1[0].abs().sum() > 0


def test_subsets_share_one_gather_and_equal_one_subset_per_pair(gen):
    """OTDDCost.subsets (one gather per side for all minibatch pairs) gives the dense costs and the gradients of one
    subset() per pair, overlapping rows included."""
    cost, x, label = _otdd_cost(gen, n=40, m=36, requires_grad=True)
    rows = [torch.randperm(40, generator=gen)[:7] for _ in range(3)]
    cols = [torch.randperm(36, generator=gen)[:5] for _ in range(3)]
    shared = cost.subsets(rows, cols)
    single = [cost.subset(r, c) for r, c in zip(rows, cols, strict=True)]
    for s, t in zip(shared, single, strict=True):
        torch.testing.assert_close(s.dense(), t.dense(), rtol=0, atol=0)
    weights = torch.rand(3, 7, 5, generator=gen, dtype=x.dtype)
    total = [sum((w * c.dense()).sum() for w, c in zip(weights, costs, strict=True)) for costs in (shared, single)]
    grads = [torch.autograd.grad(t, [x, label]) for t in total]
    for p, q in zip(*grads, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    assert cost.subsets([], []) == []
