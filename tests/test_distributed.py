"""Sharding over gloo ranks on 127.0.0.1 (2-3 processes), checked against the single-process result in float64.

These tests spawn processes; deselect them with ``-m "not distributed"``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from datasetflow import LabeledDataset, class_repulsion, potential, run_flow
from datasetflow.data import shard
from datasetflow.distributed import (
    CollectiveError,
    World,
    all_reduce_sum,
    barrier,
    gather_rows,
    get_world,
    heartbeat,
    shard_range,
)
from datasetflow.flows import CheckpointError, load_checkpoint
from datasetflow.functionals import Functional
from distributed_helpers import run_distributed, run_ranks_raw

pytestmark = [pytest.mark.distributed]


# ---------------------------------------------------------------------- the collectives
def _collectives(world: World, n: int) -> dict:
    start, stop = shard_range(n, world)
    x = torch.arange(n, dtype=torch.float64)[start:stop].clone().requires_grad_()
    total = all_reduce_sum((x**2).sum(), world)
    (grad,) = torch.autograd.grad(3.0 * total, x)
    rows, sizes = gather_rows(x[:, None] * torch.ones(1, 2, dtype=torch.float64), world)
    (row_grad,) = torch.autograd.grad(rows.sum(), x)
    return {"total": total.detach(), "grad": grad, "rows": rows.detach(), "sizes": sizes, "row_grad": row_grad}


@pytest.mark.parametrize("size", [2, 3])
def test_collectives_match_one_process(size):
    n = 7  # uneven shards
    results = run_distributed(_collectives, size, n)
    full = torch.arange(n, dtype=torch.float64)
    for rank, res in enumerate(results):
        start, stop = shard_range(n, World(rank=rank, size=size))
        assert float(res["total"]) == float((full**2).sum())
        assert torch.equal(res["grad"], 6.0 * full[start:stop])  # the local part of the replicated gradient
        assert torch.equal(res["rows"][:, 0], full) and sum(res["sizes"]) == n
        assert torch.equal(res["row_grad"], torch.full((stop - start,), 2.0, dtype=torch.float64))


def test_single_process_mode_needs_no_group():
    world = get_world()
    assert world.size == 1 and world.is_main and not world.distributed
    x = torch.ones(3, requires_grad=True)
    assert all_reduce_sum(x.sum(), world) is not None and gather_rows(x, world)[1] == [3]
    assert shard_range(5, world) == (0, 5)


# ---------------------------------------------------------------------- faults
def _one_rank_dies(world: World) -> str:
    heartbeat(world, step=0)
    if world.rank == 1:
        time.sleep(0.5)
        os._exit(17)  # killed: no clean shutdown
    heartbeat(world, step=1)
    start = time.perf_counter()
    try:
        for _ in range(50):
            all_reduce_sum(torch.ones(1), world)
            time.sleep(0.05)
    except CollectiveError as exc:
        return f"{time.perf_counter() - start:.1f}|{exc}"
    return "no error"


def _one_rank_hangs(world: World) -> str:
    heartbeat(world, step=0)
    if world.rank == 1:
        time.sleep(60)  # alive but stuck
        return "woke up"
    heartbeat(world, step=3)
    start = time.perf_counter()
    try:
        all_reduce_sum(torch.ones(1), world)
    except CollectiveError as exc:
        return f"{time.perf_counter() - start:.1f}|{exc}"
    return "no error"


def test_a_dead_rank_stops_the_others_with_an_error_that_names_it():
    out, codes, deadline_hit = run_ranks_raw(_one_rank_dies, 3, timeout=60, collective_timeout=10)
    assert not deadline_hit and codes[1] == 17
    for rank in (0, 2):
        status, value = out[rank]
        assert status == "ok" and value != "no error", value
        seconds, message = value.split("|", 1)
        assert float(seconds) < 15 and "rank 1" in message and "stopped responding" in message


def test_a_hung_rank_times_out_instead_of_hanging_the_others():
    out, codes, deadline_hit = run_ranks_raw(_one_rank_hangs, 2, timeout=40, collective_timeout=4)
    status, value = out[0]
    assert status == "ok" and value != "no error", value
    seconds, message = value.split("|", 1)
    assert float(seconds) < 10 and "rank 1" in message


# ---------------------------------------------------------------------- sharded flows, checkpoints and faults
def _blobs() -> LabeledDataset:
    gen = torch.Generator().manual_seed(3)
    x = torch.cat(
        [
            torch.randn(31, 2, generator=gen, dtype=torch.float64),
            3 + torch.randn(29, 2, generator=gen, dtype=torch.float64),
        ]
    )
    return LabeledDataset(x, [0] * 31 + [1] * 29)


def _energy() -> Functional:
    return potential(lambda x, y: 0.5 * (x**2).sum(1)) + 0.3 * class_repulsion(scale=1.0)


def _kill_at(rank: int, step: int):
    def callback(now, state, info):
        if state.world.rank == rank and now == step:
            os._exit(1)

    return callback


def _sharded_runs(world: World, root: str) -> dict:
    data = shard(_blobs(), world)
    options = {"steps": 20, "step_size": 0.2, "optimizer": "momentum"}
    straight = run_flow(_energy(), data, **options, checkpoint_dir=f"{root}/straight", checkpoint_every=5)
    first = run_flow(_energy(), data, **{**options, "steps": 10}, checkpoint_dir=f"{root}/part", checkpoint_every=5)
    resumed = run_flow(_energy(), data, **options, checkpoint_dir=f"{root}/part", checkpoint_every=5, resume=True)
    barrier(world)  # every rank has removed its older shard files (each does so after its last save)
    files = sorted(p.name for p in Path(f"{root}/part").iterdir())
    return {
        "straight": straight.final.x,
        "objective": straight.objective,
        "first": len(first.objective),
        "resumed": resumed.final.x,
        "resumed_objective": resumed.objective,
        "files": files,
    }


def _resume_with(world: World, root: str) -> str:
    try:
        run_flow(
            _energy(),
            shard(_blobs(), world),
            steps=30,
            step_size=0.2,
            optimizer="momentum",
            checkpoint_dir=f"{root}/straight",
            checkpoint_every=5,
            resume=True,
        )
    except CheckpointError as exc:
        return str(exc)
    return "resumed"


def test_a_sharded_flow_equals_one_process_and_resumes_bit_identically(tmp_path):
    data = _blobs()
    single = run_flow(_energy(), data, steps=20, step_size=0.2, optimizer="momentum")
    results = run_distributed(_sharded_runs, 3, str(tmp_path))
    x = torch.cat([r["straight"] for r in results])
    assert torch.allclose(x, single.final.x, rtol=0, atol=1e-10)
    assert results[0]["objective"] == pytest.approx(single.objective, rel=1e-10, abs=1e-12)
    for r in results:
        assert (
            r["first"] == 10 and torch.equal(r["resumed"], r["straight"]) and r["resumed_objective"] == r["objective"]
        )
    # one complete set: the manifest and one shard file per rank, older sets removed
    assert results[0]["files"] == ["checkpoint.pt"] + [f"checkpoint.step00000020.rank{r}.pt" for r in range(3)]
    message = run_distributed(_resume_with, 2, str(tmp_path))[0]
    assert "written by 3 ranks" in message and "same number of ranks" in message


def _flow_killed(world: World, root: str, kill: bool) -> str:
    callbacks = [_kill_at(1, 13)] if kill else []
    try:
        run_flow(
            _energy(),
            shard(_blobs(), world),
            steps=20,
            step_size=0.2,
            optimizer="momentum",
            checkpoint_dir=root,
            checkpoint_every=5,
            callbacks=callbacks,
            resume=not kill,
        )
    except CollectiveError as exc:
        return f"error|{exc}"
    return "done"


def _straight(world: World, root: str):
    result = run_flow(
        _energy(),
        shard(_blobs(), world),
        steps=20,
        step_size=0.2,
        optimizer="momentum",
        checkpoint_dir=root,
        checkpoint_every=5,
    )
    return result.final.x


def test_a_killed_rank_stops_the_others_and_resume_finishes_bit_identically(tmp_path):
    out, codes, deadline_hit = run_ranks_raw(_flow_killed, 2, str(tmp_path / "run"), True, collective_timeout=10)
    assert not deadline_hit and codes[1] == 1
    status, value = out[0]
    assert status == "ok" and value.startswith("error|") and "rank 1" in value
    manifest = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert manifest["step"] == 10  # the last complete set; the kill came at step 13
    assert run_distributed(_flow_killed, 2, str(tmp_path / "run"), False) == ["done", "done"]
    resumed = [
        load_checkpoint(tmp_path / "run" / f"checkpoint.step00000020.rank{r}.pt")["params"]["x"] for r in range(2)
    ]
    straight = run_distributed(_straight, 2, str(tmp_path / "straight"))
    assert all(torch.equal(a, b) for a, b in zip(resumed, straight, strict=True))


# ---------------------------------------------------------------------- the CLI under torchrun
def test_torchrun_flow_equals_the_single_process_command(tmp_path):
    import subprocess
    import sys

    import numpy as np

    from conftest import invoke_cli

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", x=rng.normal(size=(41, 2)), y=np.repeat([0, 1], [20, 21]))
    (tmp_path / "cfg.yaml").write_text(
        "source: s.npz\nsteps: 12\nstep_size: 0.1\ndtype: float64\ncheckpoint_every: 4\nfunctional:\n"
        "  - {type: ball, weight: 0.5, center: [0, 1], radius: 0.5}\n  - {type: repulsion, weight: 0.5}\n"
    )
    common = ["flow", "--config", str(tmp_path / "cfg.yaml"), "--no-figures", "-q"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run = subprocess.run(
        [*launcher, "-m", "datasetflow", *common, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DATASETFLOW_COLLECTIVE_TIMEOUT": "60"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert invoke_cli(*common, "--out", tmp_path / "one").exit_code == 0
    with np.load(tmp_path / "two" / "final.npz") as two, np.load(tmp_path / "one" / "final.npz") as one:
        assert two["x"].shape == (41, 2) and np.allclose(two["x"], one["x"], rtol=0, atol=1e-12)
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert "checkpoint.step00000012.rank1.pt" in files and "history.json" in files
    resumed = subprocess.run(
        [*launcher, "-m", "datasetflow", *common, "--out", str(tmp_path / "one"), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode != 0 and "world_size=2 (was 1)" in resumed.stderr


# ---------------------------------------------------------------------- sharded class statistics
def _sharded_stats(world: World) -> dict:
    from datasetflow.data import sharded_class_stats

    data = _mixture()
    part = shard(data, world)
    x = part.x.clone().requires_grad_()
    stats = sharded_class_stats(part.with_features(x), world)
    cov = stats.covariance_matrices()
    loss = all_reduce_sum(torch.zeros((), dtype=torch.float64), world) + (stats.means**3).sum() + (cov**2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    return {"means": stats.means.detach(), "cov": cov.detach(), "counts": stats.counts, "grad": grad}


def _mixture() -> LabeledDataset:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(37, 5, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 2, 5, dtype=torch.float64)
    y = [0] * 12 + [1] * 3 + [2] * 22  # one class below d, one above, uneven shards
    return LabeledDataset(x + torch.tensor(y, dtype=torch.float64)[:, None], y)


@pytest.mark.parametrize("size", [2, 3])
def test_sharded_class_statistics_equal_one_process(size):
    data = _mixture()
    x = data.x.clone().requires_grad_()
    stats = data.with_features(x).class_stats()
    cov = stats.covariance_matrices()
    (grad,) = torch.autograd.grad((stats.means**3).sum() + (cov**2).sum(), x)
    results = run_distributed(_sharded_stats, size)
    for rank, res in enumerate(results):
        assert torch.allclose(res["means"], stats.means.detach(), rtol=0, atol=1e-12)
        assert torch.allclose(res["cov"], cov.detach(), rtol=0, atol=1e-10)
        assert torch.equal(res["counts"], stats.counts)
        start, stop = shard_range(len(data), World(rank=rank, size=size))
        assert torch.allclose(res["grad"], grad[start:stop], rtol=0, atol=1e-10)
