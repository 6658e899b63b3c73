"""Sharded objectives (row-sharded Sinkhorn OTDD, exact sliced objectives) on 2-3 gloo ranks against one process.

Float64 throughout; values and gradients to 1e-10, 20-step flows to 1e-10. Every spawn groups several checks
(spawning costs seconds). Deselect with ``-m "not distributed"``.
"""

from __future__ import annotations

import pytest
import torch

from datasetflow import LabeledDataset, otdd, run_flow
from datasetflow.data import shard
from datasetflow.distributed import World, shard_range
from datasetflow.functionals import otdd_to
from distributed_helpers import run_distributed

pytestmark = [pytest.mark.distributed]


def _labeled(n_per_class: list[int], dim: int, seed: int, shift: float) -> LabeledDataset:
    gen = torch.Generator().manual_seed(seed)
    parts, labels = [], []
    for c, count in enumerate(n_per_class):
        parts.append(torch.randn(count, dim, generator=gen, dtype=torch.float64) * (0.5 + 0.3 * c) + shift * c)
        labels += [c] * count
    return LabeledDataset(torch.cat(parts), labels)


def _otdd_problem() -> tuple[LabeledDataset, LabeledDataset]:
    # 23 source points (uneven shards on 2 and 3 ranks), one class smaller than d, target of another size
    return _labeled([9, 3, 11], 4, seed=5, shift=1.5), _labeled([6, 7, 6], 4, seed=6, shift=2.0)


OTDD_CASES = {
    "debiased": {"tol": 1e-11},
    "plain": {"debiased": False, "reg": 0.7, "tol": 1e-11},
    "features": {"label_weight": 0.0, "tol": 1e-11},
    "chunked": {"backend": "chunked", "tol": 1e-11},
}
FLOW = {"steps": 20, "step_size": 0.5}
# converged outer problems: at the default tol=1e-5 the sharded flow agrees to the solver tolerance only
# (measured 1.1e-5 over 20 steps: the reductions change the rounding, and with it where Sinkhorn stops)
FLOW_OTDD = {"tol": 1e-11}


def _otdd_grad(source: LabeledDataset, target: LabeledDataset, world: World | None, **options) -> tuple:
    x = source.x.clone().requires_grad_()
    result = otdd(source.with_features(x), target, world=world, **options)
    (grad,) = torch.autograd.grad(result.distance_squared, x)
    return result.distance_squared.detach(), grad, result.label_distances.detach()


def _sharded_otdd(world: World) -> dict:
    source, target = _otdd_problem()
    part = shard(source, world)
    out = {name: _otdd_grad(part, target, world, **options) for name, options in OTDD_CASES.items()}
    out["flow"] = run_flow(otdd_to(target, **FLOW_OTDD), part, **FLOW).final.x
    return out


@pytest.mark.parametrize("size", [2, 3])
def test_row_sharded_sinkhorn_otdd_equals_one_process(size):
    source, target = _otdd_problem()
    expected = {name: _otdd_grad(source, target, None, **options) for name, options in OTDD_CASES.items()}
    flow = run_flow(otdd_to(target, **FLOW_OTDD), source, **FLOW).final.x
    results = run_distributed(_sharded_otdd, size, timeout=240)
    for rank, res in enumerate(results):
        start, stop = shard_range(len(source), World(rank=rank, size=size))
        for name in OTDD_CASES:
            value, grad, labels = res[name]
            assert abs(float(value) - float(expected[name][0])) < 1e-10, (name, float(value), float(expected[name][0]))
            assert torch.allclose(grad, expected[name][1][start:stop], rtol=0, atol=1e-10), name
            assert torch.allclose(labels, expected[name][2], rtol=0, atol=1e-10), name
    assert float(expected["debiased"][0]) > 0.1  # a problem far from trivial
    gap = float((torch.cat([r["flow"] for r in results]) - flow).abs().max())
    assert gap < 1e-10, gap
    assert not torch.allclose(flow, source.x, atol=1e-2)  # the particles moved


# ---------------------------------------------------------------------- exact sliced objectives
def _sliced_problem() -> tuple[LabeledDataset, LabeledDataset]:
    # 25 particles: classes of 8, 5 and 12 (uneven class sizes: the merged-grid path), class masses uniform inside
    source = _labeled([8, 5, 12], 3, seed=7, shift=1.0).with_class_weights("uniform")
    return source, _labeled([7, 9, 6], 3, seed=8, shift=1.5).with_class_weights("uniform")


def _mmd_grad(source: LabeledDataset, target: LabeledDataset, world: World | None, **options) -> tuple:
    from datasetflow.flows import FlowState
    from datasetflow.functionals import mmd_sw_to

    state = FlowState.from_dataset(source)
    state.world = world if world is not None else World()
    state.x.requires_grad_()
    functional = mmd_sw_to(target, **{"n_projections": 40, "seed": 3, **options})
    value = functional(state)
    (grad,) = torch.autograd.grad(value, state.x)
    return value.detach(), grad, functional.last_error_bound


def _sw_grad(source: LabeledDataset, target: LabeledDataset, world: World | None) -> tuple:
    from datasetflow import sliced_wasserstein

    x = source.x.clone().requires_grad_()
    value = sliced_wasserstein(x, target.x, n_projections=30, seed=2, x_weights=source.weights, world=world)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


SLICED_FLOW = {"steps": 20, "step_size": 2.0}


def _mmd_flow(source: LabeledDataset, target: LabeledDataset) -> torch.Tensor:
    from datasetflow.functionals import mmd_sw_to

    return run_flow(mmd_sw_to(target, n_projections=40, seed=4), source, **SLICED_FLOW).final.x


def _sharded_sliced(world: World) -> dict:
    source, target = _sliced_problem()
    part = shard(source, world)
    return {
        "sw": _sw_grad(part, target, world),
        "mmd": _mmd_grad(part, target, world),
        "sketch": _mmd_grad(part, target, world, quantiles=8),
        "flow": _mmd_flow(part, target),
    }


@pytest.mark.parametrize("size", [2, 3])
def test_exact_sliced_objectives_equal_one_process(size):
    source, target = _sliced_problem()
    expected = {
        "sw": _sw_grad(source, target, None),
        "mmd": _mmd_grad(source, target, None)[:2],
        "sketch": _mmd_grad(source, target, None, quantiles=8)[:2],  # the merged sketch is exact: as one process
    }
    flow = _mmd_flow(source, target)
    results = run_distributed(_sharded_sliced, size, timeout=240)
    for rank, res in enumerate(results):
        start, stop = shard_range(len(source), World(rank=rank, size=size))
        assert abs(float(res["sketch"][0]) - float(expected["mmd"][0])) <= res["sketch"][2]  # within the bound
        for name, (value, grad) in expected.items():
            assert abs(float(res[name][0]) - float(value)) < 1e-10, name
            assert torch.allclose(res[name][1], grad[start:stop], rtol=0, atol=1e-10), name
    assert float(expected["mmd"][0]) > 1e-2 and float(expected["mmd"][1].abs().max()) > 1e-3
    gap = float((torch.cat([r["flow"] for r in results]) - flow).abs().max())
    assert gap < 1e-10, gap
    assert not torch.allclose(flow, source.x, atol=1e-2)


# ---------------------------------------------------------------------- the scalable (sketched) mode, one process
def test_quantile_sketches_stay_within_their_stated_bound():
    source = _labeled([300, 200, 500], 5, seed=1, shift=1.0).with_class_weights("uniform")
    target = _labeled([250, 300, 280], 5, seed=2, shift=1.6).with_class_weights("uniform")
    exact, exact_grad, _ = _mmd_grad(source, target, None, n_projections=50)
    errors, bounds = [], []
    for bins in (16, 64, 256):
        value, grad, bound = _mmd_grad(source, target, None, n_projections=50, quantiles=bins)
        errors.append(abs(float(value) - float(exact)))
        bounds.append(bound)
        assert errors[-1] <= bound
        cosine = float((grad * exact_grad).sum() / (grad.norm() * exact_grad.norm()))
        assert cosine > 0.99, (bins, cosine)  # the sketch's gradient points where the exact one does
    assert bounds[0] > bounds[1] > bounds[2] and errors[2] < errors[0]  # finer sketches, smaller errors
    assert bounds[2] < 0.5 * float(exact)  # the bound says something at Q = 256


def test_quantile_sketch_class_bound_holds_for_every_pair():
    from datasetflow.solvers.sliced import common_grid, on_grid, pairwise_sliced, sketch_class_quantiles, sort_classes

    data = _labeled([40, 7, 90], 3, seed=9, shift=2.0)
    theta = torch.nn.functional.normalize(
        torch.randn(20, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=1
    )
    exact = sort_classes(data.x, data.y, 3, theta)
    for bins in (4, 32):
        sketch = sketch_class_quantiles(data.x, data.y, 3, theta, bins=bins)
        steps, (i1, i2) = common_grid(sketch.sorted.counts, exact.counts)
        moved = pairwise_sliced(on_grid(sketch.sorted, i1), on_grid(exact, i2), steps, 2.0).sqrt()
        # SW_2(sketch_c, mu_c) <= delta_c: the diagonal of the sketch-vs-exact matrix
        assert bool((moved.diagonal() <= sketch.class_error + 1e-12).all()), (moved.diagonal(), sketch.class_error)
        assert torch.equal(sketch.counts, exact.counts.double())


def _torchrun_json(args: list[str]) -> dict:
    """``torchrun --nproc-per-node 2 -m datasetflow ARGS``: the one JSON object printed (only by rank 0)."""
    import json
    import os
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "datasetflow"]
        + list(args),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DATASETFLOW_COLLECTIVE_TIMEOUT": "60", "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, run.stdout  # only rank 0 prints
    return json.loads(lines[0])


# ---------------------------------------------------------------------- `distance` under torchrun
def test_torchrun_distance_shards_the_otdd_and_rank_0_prints_it_once(tmp_path):
    import json
    import os
    import subprocess
    import sys

    import numpy as np

    from conftest import invoke_cli

    source, target = _otdd_problem()
    for name, data in (("s", source), ("t", target)):
        np.savez(tmp_path / f"{name}.npz", x=data.x.numpy(), y=data.y.numpy())
    common = ["distance", str(tmp_path / "s.npz"), str(tmp_path / "t.npz"), "--dtype", "float64", "--json"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = _torchrun_json(common)
    one = json.loads(invoke_cli(*common).output)
    assert two["settings"]["world_size"] == 2 and two["config"]["n_source"] == len(source)
    assert abs(two["distance_squared"] - one["distance_squared"]) < 1e-8
    assert np.allclose(two["label_distances"], one["label_distances"], rtol=0, atol=1e-10)
    # settings that do not shard: rank 0 computes alone and says why
    wow = subprocess.run(
        [*launcher, "-m", "datasetflow", *common, "--method", "wow"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert wow.returncode == 0, wow.stderr[-3000:]
    (line,) = [line for line in wow.stdout.splitlines() if line.startswith("{")]
    payload = json.loads(line)
    assert any("does not split over ranks" in w for w in payload["warnings"])
    assert payload["distance"] == pytest.approx(json.loads(invoke_cli(*common, "--method", "wow").output)["distance"])


# ---------------------------------------------------------------------- refusals (checked before any collective)
@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"outer": "exact"}, ["outer='sinkhorn'", "network simplex"]),
        ({"inner": "exact"}, ["statistics-based", "gaussian"]),
        ({"inner": "sliced"}, ["statistics-based", "gaussian"]),
        ({"grad": "autodiff", "reg": 1.0}, []),
    ],
)
def test_sharded_otdd_refuses_what_does_not_shard(options, words):
    from datasetflow.errors import InvalidArgumentError

    source, target = _otdd_problem()
    pretend = World(rank=0, size=2)  # refused before the first collective, so no process group is needed
    if options.get("grad") == "autodiff":
        from datasetflow.solvers.sharded import sharded_sinkhorn

        with pytest.raises(InvalidArgumentError, match="grad='envelope' or 'detach'"):
            sharded_sinkhorn(None, source.weights, target.weights, 1.0, pretend, grad="autodiff")
        return
    with pytest.raises(InvalidArgumentError) as info:
        otdd(source, target, world=pretend, **options)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_quantile_sketches_need_the_sliced_label_cost():
    from datasetflow.errors import InvalidArgumentError
    from datasetflow.functionals import mmd_sw_to

    _, target = _sliced_problem()
    with pytest.raises(InvalidArgumentError, match="sliced label cost only"):
        mmd_sw_to(target, inner="gaussian", quantiles=16)
    with pytest.raises(InvalidArgumentError, match="positive int"):
        mmd_sw_to(target, quantiles=0)


# ---------------------------------------------------------------------- distance matrices over ranks
def _matrix_datasets() -> list[LabeledDataset]:
    return [_labeled([5 + k, 4, 6 - k], 3, seed=20 + k, shift=1.0 + 0.5 * k) for k in range(4)]


MATRIX_CASES = {
    "sotdd": {"method": "sotdd", "n_projections": 40, "chunk": 7},
    "busemann": {"method": "busemann", "n_projections": 40, "chunk": 7},
    "otdd": {"method": "otdd", "otdd_options": {"tol": 1e-11}},
}


def _sharded_matrices(world: World) -> dict:
    from datasetflow import distance_matrix

    return {name: distance_matrix(_matrix_datasets(), world=world, **o).matrix_pow for name, o in MATRIX_CASES.items()}


@pytest.mark.parametrize("size", [2, 3])
def test_distance_matrix_split_over_ranks_equals_one_process(size):
    from datasetflow import distance_matrix

    expected = {name: distance_matrix(_matrix_datasets(), **o).matrix_pow for name, o in MATRIX_CASES.items()}
    for rank, result in enumerate(run_distributed(_sharded_matrices, size, timeout=240)):
        for name, matrix in result.items():
            assert torch.allclose(matrix, expected[name], rtol=1e-12, atol=1e-12), (size, rank, name)


def test_torchrun_distance_matrix_prints_once_and_equals_one_process(tmp_path):
    import json

    import numpy as np

    from conftest import invoke_cli

    paths = []
    for k, data in enumerate(_matrix_datasets()[:3]):
        paths.append(str(tmp_path / f"d{k}.npz"))
        np.savez(paths[-1], x=data.x.numpy(), y=data.y.numpy())
    common = ["distance-matrix", *paths, "--dtype", "float64", "--projections", "64", "--json"]
    two, one = _torchrun_json(common), json.loads(invoke_cli(*common).output)
    assert two["settings"]["world_size"] == 2 and "world_size" not in one["settings"]
    assert np.allclose(two["matrix"], one["matrix"], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- s-OTDD and Busemann on shards
SLICED_DISTANCE_CASES = {
    "sotdd": ("sotdd", {"n_projections": 30, "chunk": 8}),
    "swb1dg": ("busemann", {"variant": "swb1dg", "n_projections": 30}),
    "swbg": ("busemann", {"variant": "swbg", "n_projections": 30}),
}


def _sliced_distance_grad(source, target, world, function: str, options: dict) -> tuple:
    import datasetflow

    x = source.x.clone().requires_grad_()
    value = getattr(datasetflow, function)(source.with_features(x), target, world=world, **options).value_pow
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def _sharded_sliced_distances(world: World) -> dict:
    from datasetflow import sotdd_to

    source, target = _otdd_problem()
    part = shard(source, world)
    out = {name: _sliced_distance_grad(part, target, world, *case) for name, case in SLICED_DISTANCE_CASES.items()}
    flow = run_flow(sotdd_to(target, n_projections=20, seed=3), part, steps=20, step_size=0.5)
    out["flow"], out["objective"] = flow.final.x, flow.objective
    return out


@pytest.mark.parametrize("size", [2, 3])
def test_sotdd_and_busemann_on_shards_equal_one_process(size):
    from datasetflow import sotdd_to

    source, target = _otdd_problem()
    expected = {
        name: _sliced_distance_grad(source, target, None, *case) for name, case in SLICED_DISTANCE_CASES.items()
    }
    single = run_flow(sotdd_to(target, n_projections=20, seed=3), source, steps=20, step_size=0.5)
    results = run_distributed(_sharded_sliced_distances, size, timeout=240)
    for rank, result in enumerate(results):
        start, stop = shard_range(len(source), World(rank=rank, size=size))
        for name in SLICED_DISTANCE_CASES:
            value, grad = result[name]
            assert torch.allclose(value, expected[name][0], rtol=1e-10, atol=1e-12), (size, rank, name)
            assert torch.allclose(grad, expected[name][1][start:stop], rtol=1e-10, atol=1e-10), (size, rank, name)
        assert result["objective"] == pytest.approx(single.objective, rel=1e-10, abs=1e-12)
    flowed = torch.cat([r["flow"] for r in results])
    assert torch.allclose(flowed, single.final.x, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------- low-rank and minibatch OTDD on shards
LARGE_N_CASES = {
    "minibatch": {"outer": "minibatch", "batch_size": 8, "n_batches": 3, "seed": 2},
    "lowrank": {"outer": "lowrank", "rank": 6, "seed": 1},
}


def _flow_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k != "n_batches"}  # flows cover the particles with n // B batches


def _sharded_large_n(world: World) -> dict:
    source, target = _otdd_problem()
    part = shard(source, world)
    out = {name: _otdd_grad(part, target, world, **options)[:2] for name, options in LARGE_N_CASES.items()}
    for name, options in MINIBATCH_SPLIT_CASES.items():
        x = part.x.clone().requires_grad_()
        result = otdd(part.with_features(x), target, world=world, outer="minibatch", **options)
        (grad,) = torch.autograd.grad(result.distance_squared, x)
        out[name] = (result.distance_squared.detach(), grad, result.ot.config["solved_here"], result.ot.stderr)
    for name, options in LARGE_N_CASES.items():
        out[f"flow-{name}"] = run_flow(otdd_to(target, **_flow_options(options)), part, steps=5, step_size=0.5).final.x
    return out


# the minibatch pairs split over the ranks: K = 7 pairs (uneven over 2 and 3 ranks), K = 2 < 3 ranks (a rank without
# a pair still joins the backward's collectives), entropic minibatches
MINIBATCH_SPLIT_CASES = {
    "split-7": {"batch_size": 6, "n_batches": 7, "seed": 4},
    "split-2": {"batch_size": 5, "n_batches": 2, "seed": 5},
    # C/reg up to 280 and unequal class masses: up to about 2,600 sweeps (plain Sinkhorn after the Anderson safeguard)
    "split-reg": {"batch_size": 6, "n_batches": 5, "seed": 6, "reg": 0.5, "tol": 1e-11, "max_iter": 5000},
}


@pytest.mark.parametrize("size", [2, 3])
def test_lowrank_and_minibatch_otdd_on_shards_equal_one_process(size):
    source, target = _otdd_problem()
    expected = {name: _otdd_grad(source, target, None, **options)[:2] for name, options in LARGE_N_CASES.items()}
    for name, options in MINIBATCH_SPLIT_CASES.items():
        x = source.x.clone().requires_grad_()
        result = otdd(source.with_features(x), target, outer="minibatch", **options)
        (grad,) = torch.autograd.grad(result.distance_squared, x)
        expected[name] = (result.distance_squared.detach(), grad, options["n_batches"], result.ot.stderr)
    flows = {
        name: run_flow(otdd_to(target, **_flow_options(o)), source, steps=5, step_size=0.5).final.x
        for name, o in LARGE_N_CASES.items()
    }
    results = run_distributed(_sharded_large_n, size, timeout=240)
    for rank, result in enumerate(results):
        start, stop = shard_range(len(source), World(rank=rank, size=size))
        for name in LARGE_N_CASES:
            value, grad = result[name]
            assert torch.allclose(value, expected[name][0], rtol=1e-10, atol=1e-12), (size, rank, name)
            assert torch.allclose(grad, expected[name][1][start:stop], rtol=1e-10, atol=1e-10), (size, rank, name)
    for name in LARGE_N_CASES:
        assert torch.allclose(torch.cat([r[f"flow-{name}"] for r in results]), flows[name], rtol=0, atol=1e-10), name
    for name in MINIBATCH_SPLIT_CASES:
        K = expected[name][2]
        assert sum(r[name][2] for r in results) == K  # every pair solved once, on one rank: ~K / size each
        for rank, result in enumerate(results):
            start, stop = shard_range(len(source), World(rank=rank, size=size))
            value, grad, solved, stderr = result[name]
            assert solved == len(range(rank, K, size)), (name, rank, solved)
            assert torch.allclose(value, expected[name][0], rtol=1e-10, atol=1e-12), (size, rank, name)
            assert torch.allclose(grad, expected[name][1][start:stop], rtol=1e-10, atol=1e-10), (size, rank, name)
            assert stderr == pytest.approx(expected[name][3], rel=1e-9), (size, rank, name)
        assert float(expected[name][1].abs().max()) > 1e-3


# ---------------------------------------------------------------------- s-OTDD and Busemann, scalable mode
SKETCH_CASES = {
    "sotdd": ("sotdd", {"n_projections": 30, "chunk": 8, "quantiles": 8}),
    "sotdd-joint": ("sotdd", {"n_projections": 20, "quantiles": 4, "standardize": "joint"}),
    "swb1dg": ("busemann", {"variant": "swb1dg", "n_projections": 30, "quantiles": 8}),
    "swbg": ("busemann", {"variant": "swbg", "n_projections": 30, "quantiles": 8}),
    "swbg-pca": (
        "busemann",
        {"variant": "swbg", "n_projections": 20, "quantiles": 8, "label_map": "pca", "label_dim": 2},
    ),
}
SKETCH_FLOW = {"n_projections": 20, "seed": 3, "quantiles": 8}


def _sketched_grad(source, target, world, function: str, options: dict) -> tuple:
    import datasetflow

    x = source.x.clone().requires_grad_()
    result = getattr(datasetflow, function)(source.with_features(x), target, world=world, **options)
    (grad,) = torch.autograd.grad(result.value_pow, x)
    return result.value_pow.detach(), grad, result.error_bound_pow


def _sharded_sketches(world: World) -> dict:
    from datasetflow import busemann_to, sotdd_to

    source, target = _otdd_problem()
    part = shard(source, world)
    out = {name: _sketched_grad(part, target, world, *case) for name, case in SKETCH_CASES.items()}
    functional = sotdd_to(target, **SKETCH_FLOW)
    flow = run_flow(functional, part, steps=20, step_size=0.5)
    out["flow"], out["objective"], out["flow_bound"] = flow.final.x, flow.objective, functional.last_error_bound
    out["busemann-flow"] = run_flow(busemann_to(target, **SKETCH_FLOW), part, steps=5, step_size=0.5).final.x
    return out


@pytest.mark.parametrize("size", [2, 3])
def test_sketched_sotdd_and_busemann_on_shards_equal_one_process_sketches(size):
    """The merge is exact (integer bin counts, MIN/MAX ranges, float64 class sums), so the scalable mode on 2 and 3
    uneven ranks equals the scalable mode in one process to 1e-10: values, gradients, a 20-step flow."""
    from datasetflow import busemann_to, sotdd_to

    source, target = _otdd_problem()
    expected = {name: _sketched_grad(source, target, None, *case) for name, case in SKETCH_CASES.items()}
    single = run_flow(sotdd_to(target, **SKETCH_FLOW), source, steps=20, step_size=0.5)
    busemann_flow = run_flow(busemann_to(target, **SKETCH_FLOW), source, steps=5, step_size=0.5).final.x
    results = run_distributed(_sharded_sketches, size, timeout=240)
    for rank, result in enumerate(results):
        start, stop = shard_range(len(source), World(rank=rank, size=size))
        for name in SKETCH_CASES:
            value, grad, bound = result[name]
            assert torch.allclose(value, expected[name][0], rtol=1e-10, atol=1e-12), (size, rank, name)
            assert torch.allclose(grad, expected[name][1][start:stop], rtol=1e-10, atol=1e-10), (size, rank, name)
            assert bound == pytest.approx(expected[name][2], rel=1e-9), (size, rank, name)
        assert result["objective"] == pytest.approx(single.objective, rel=1e-10, abs=1e-12)
        assert result["flow_bound"] is not None and result["flow_bound"] > 0
    assert torch.allclose(torch.cat([r["flow"] for r in results]), single.final.x, rtol=0, atol=1e-10)
    assert torch.allclose(torch.cat([r["busemann-flow"] for r in results]), busemann_flow, rtol=0, atol=1e-10)
    assert not torch.allclose(single.final.x, source.x, atol=1e-2)  # the particles moved


@pytest.mark.parametrize(
    ("function", "options"),
    [("sotdd", {}), ("busemann", {"variant": "swb1dg"}), ("busemann", {"variant": "swbg"})],
)
def test_sketched_sliced_distances_stay_within_their_stated_bound(function, options):
    """Against the exact mode with the same directions: the value within ``error_bound`` (the root) and
    ``error_bound_pow``, bounds that shrink with Q, a measured error far below them, aligned gradients."""
    source = _labeled([300, 200, 500], 5, seed=1, shift=1.0).with_class_weights("uniform")
    target = _labeled([250, 300, 280], 5, seed=2, shift=1.6).with_class_weights("uniform")
    exact_pow, exact_grad, none = _sketched_grad(source, target, None, function, {"n_projections": 50, **options})
    assert none is None  # the exact mode states no bound
    bounds, errors = [], []
    for bins in (16, 64, 256):
        value_pow, grad, bound_pow = _sketched_grad(
            source, target, None, function, {"n_projections": 50, "quantiles": bins, **options}
        )
        error = abs(float(value_pow) - float(exact_pow))
        assert error <= bound_pow, (bins, error, bound_pow)
        assert error <= 0.05 * bound_pow + 1e-12, (bins, error, bound_pow)  # measured: far below the worst case
        bounds.append(bound_pow)
        errors.append(error)
        cosine = float((grad * exact_grad).sum() / (grad.norm() * exact_grad.norm()))
        assert cosine > 0.999, (bins, cosine)
    assert bounds[0] > bounds[1] > bounds[2]
    assert bounds[2] < 0.2 * float(exact_pow)  # the bound says something at Q = 256


def test_sketched_mode_error_bound_of_the_root():
    from datasetflow import sotdd

    source = _labeled([60, 40], 3, seed=3, shift=1.0)
    target = _labeled([50, 55], 3, seed=4, shift=2.0)
    exact = sotdd(source, target, n_projections=40)
    for bins in (4, 32):
        sketch = sotdd(source, target, n_projections=40, quantiles=bins)
        assert abs(float(sketch.value) - float(exact.value)) <= sketch.error_bound
        assert sketch.config["mode"] == "sketch" and sketch.config["quantiles"] == bins


def test_sketched_mode_refusals():
    from datasetflow import sotdd, sotdd_to
    from datasetflow.errors import InvalidArgumentError

    source, target = _otdd_problem()
    weighted = LabeledDataset(source.x, source.y, weights=torch.linspace(1.0, 2.0, len(source), dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="uniform weights inside every source class"):
        sotdd(weighted, target, n_projections=4, quantiles=8)
    with pytest.raises(InvalidArgumentError, match="positive int Q"):
        sotdd(source, target, quantiles=0)
    with pytest.raises(InvalidArgumentError, match="positive int Q"):
        sotdd_to(target, quantiles=2.5)


def test_torchrun_flow_with_a_sketched_sotdd_term_equals_one_process(tmp_path):
    """The CLI takes the scalable mode from the config (``quantiles``, as for ``mmd_sw``): under torchrun the
    particles are sharded and never gathered for the objective, and the flow equals the one-process command."""
    import os
    import subprocess
    import sys

    import numpy as np

    from conftest import invoke_cli

    source, target = _otdd_problem()
    for name, data in (("s", source), ("t", target)):
        np.savez(tmp_path / f"{name}.npz", x=data.x.numpy(), y=data.y.numpy())
    (tmp_path / "cfg.yaml").write_text(
        "source: s.npz\ntarget: t.npz\nsteps: 6\nstep_size: 0.5\ndtype: float64\nfunctional:\n"
        "  - {type: sotdd, n_projections: 16, quantiles: 8, seed: 2}\n"
    )
    common = ["flow", "--config", str(tmp_path / "cfg.yaml"), "--no-figures", "-q"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run = subprocess.run(
        [*launcher, "-m", "datasetflow", *common, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DATASETFLOW_COLLECTIVE_TIMEOUT": "60", "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert invoke_cli(*common, "--out", tmp_path / "one").exit_code == 0
    with np.load(tmp_path / "two" / "final.npz") as two, np.load(tmp_path / "one" / "final.npz") as one:
        assert two["x"].shape == tuple(source.x.shape)
        assert np.allclose(two["x"], one["x"], rtol=0, atol=1e-10)
        assert not np.allclose(one["x"], source.x.numpy(), atol=1e-3)  # the particles moved
