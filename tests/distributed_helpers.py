"""``run_distributed(fn, world_size)``: run ``fn`` on 2-3 gloo ranks on 127.0.0.1 and collect the results.

Every rank is a fresh process (``spawn``) that joins the group through
:func:`datasetflow.distributed.init_from_env`, exactly as under ``torchrun``: ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT`` are set in its environment. ``fn(world, *args)``
must be a module-level function (it is pickled); its return value (tensors are moved to the CPU)
comes back in rank order. A rank that fails re-raises its traceback here; the whole run is killed
after ``timeout`` seconds.
"""

from __future__ import annotations

import io
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _child(rank: int, size: int, port: int, timeout: float, fn: Callable, args: tuple, results: Any) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
    )
    torch.set_num_threads(1)
    try:
        from datasetflow.distributed import init_from_env

        world = init_from_env(timeout=timeout)
        buffer = io.BytesIO()
        torch.save(_to_cpu(fn(world, *args)), buffer)  # by value: the child may exit before the parent reads
        results.put((rank, "ok", buffer.getvalue()))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(
    fn: Callable, world_size: int, *args: Any, timeout: float = 120.0, collective_timeout: float = 30.0
) -> list[Any]:
    """Run ``fn(world, *args)`` on ``world_size`` gloo ranks; returns the results in rank order.

    Args:
        fn: a module-level function of the :class:`~datasetflow.distributed.World` and ``args``.
        world_size: 2 or 3 in the tests.
        timeout: seconds for the whole run before every rank is killed.
        collective_timeout: the process group's collective timeout (seconds).

    Raises:
        AssertionError: a rank failed (its traceback is in the message) or the run timed out.
    """
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    procs = [
        context.Process(target=_child, args=(rank, world_size, port, collective_timeout, fn, args, results))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    out: dict[int, Any] = {}
    errors: list[str] = []
    try:
        for _ in range(world_size):
            rank, status, value = results.get(timeout=timeout)
            if status == "ok":
                out[rank] = torch.load(io.BytesIO(value), weights_only=False)
            else:
                errors.append(f"rank {rank}:\n{value}")
    except queue.Empty:
        errors.append(f"timed out after {timeout} s with results from ranks {sorted(out)}")
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert not errors, "\n".join(errors)
    return [out[rank] for rank in range(world_size)]


def run_ranks_raw(fn: Callable, world_size: int, *args: Any, timeout: float = 120.0, collective_timeout: float = 10.0):
    """Like :func:`run_distributed` but returns ``(statuses, values)`` per rank without asserting, and the exit
    codes of the processes (for fault tests where ranks are expected to fail)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    procs = [
        context.Process(target=_child, args=(rank, world_size, port, collective_timeout, fn, args, results))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    out: dict[int, tuple[str, Any]] = {}
    deadline = time.monotonic() + timeout
    deadline_hit = False
    try:
        while len(out) < world_size:
            try:
                rank, status, value = results.get(timeout=0.5)
            except queue.Empty:
                if not any(proc.is_alive() for proc in procs):
                    break  # every process ended; the missing ranks died without a result
                if time.monotonic() > deadline:
                    deadline_hit = True
                    break
                continue
            out[rank] = (status, torch.load(io.BytesIO(value), weights_only=False) if status == "ok" else value)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return out, [proc.exitcode for proc in procs], deadline_hit
