"""Sharding over gloo ranks on 127.0.0.1 (2-3 processes), checked against the single-process result in float64.

These tests spawn processes; deselect them with ``-m "not distributed"``.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from datasetflow.distributed import (
    CollectiveError,
    World,
    all_reduce_sum,
    gather_rows,
    get_world,
    heartbeat,
    shard_range,
)
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
