r"""Process groups and collectives for sharded flows and distances, on ``torch.distributed`` (c10d).

Every rank holds a shard of the particles. Quantities that depend on all of them (class statistics,
column potentials, sorted projections, the objective) are assembled with c10d collectives — gloo on
the CPU, NCCL on CUDA — and are then the same on every rank; gradients stay local. Nothing here is a
home-made protocol: the collectives, the store used for heartbeats and the launcher (``torchrun``)
are PyTorch's.

* :class:`World` describes this process's place: group, rank, size. Without an initialised process
  group every helper works in single-process mode (``size == 1``), so library code calls them
  unconditionally.
* :func:`init_from_env` joins the group ``torchrun`` describes in the environment, picks the backend
  from the device and sets a timeout on every collective.
* :func:`all_reduce_sum` is differentiable: its backward is the identity, which is right because the
  objective it feeds is the same on every rank (each rank back-propagates the replicated objective
  and keeps the gradient of its own shard).
* :func:`gather_rows` concatenates every rank's rows in rank order (padded to equal shapes for gloo),
  keeping the graph of this rank's rows.
* :func:`collective` turns a failed or timed-out collective into a :class:`CollectiveError` that names
  the rank(s) whose heartbeat stopped.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import DatasetflowError, InvalidArgumentError

__all__ = [
    "World",
    "CollectiveError",
    "DEFAULT_TIMEOUT",
    "get_world",
    "init_from_env",
    "launched_world_size",
    "shard_range",
    "all_reduce_sum",
    "mark_replicated",
    "all_reduce_max",
    "all_reduce_min",
    "gather_rows",
    "all_gather_object",
    "broadcast_object",
    "barrier",
    "heartbeat",
    "collective",
]

#: Seconds a collective may wait for the other ranks before it fails (``DATASETFLOW_COLLECTIVE_TIMEOUT``).
DEFAULT_TIMEOUT = float(os.environ.get("DATASETFLOW_COLLECTIVE_TIMEOUT", "300"))
_HEARTBEAT_PREFIX = "datasetflow/heartbeat/"


class CollectiveError(DatasetflowError, RuntimeError):
    """A collective failed or timed out: another rank died or hung. The message names it when known."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a flow.

    Attributes:
        group: the c10d process group (None: the default group, or single-process mode).
        rank: this process's rank in ``group`` (0 in single-process mode).
        size: the number of ranks (1 in single-process mode).
        store: the c10d store used for heartbeats (None when unknown).
    """

    group: Any = None
    rank: int = 0
    size: int = 1
    store: Any = None

    @property
    def distributed(self) -> bool:
        """Whether there is more than one rank."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the rank that writes shared outputs)."""
        return self.rank == 0


_STORE: Any = None  # the store of the group joined by init_from_env


def get_world(group: Any = None) -> World:
    """The :class:`World` of ``group`` (default: the default process group, or single-process mode)."""
    if isinstance(group, World):
        return group
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise InvalidArgumentError("a process group was given but torch.distributed is not initialised.")
        return World()
    return World(group=group, rank=dist.get_rank(group), size=dist.get_world_size(group), store=_STORE)


def launched_world_size() -> int:
    """``WORLD_SIZE`` from the environment (what ``torchrun`` sets); 1 when absent."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InvalidArgumentError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer.") from None


def init_from_env(device: torch.device | str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> World:
    """Join the process group that ``torchrun`` describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (and ``LOCAL_RANK`` on CUDA,
    which selects the GPU). The backend follows the device: NCCL for CUDA, gloo otherwise. Every
    collective of the group fails after ``timeout`` seconds instead of waiting forever.

    Returns:
        The :class:`World`; single-process mode when ``WORLD_SIZE`` is 1 or absent.

    Raises:
        InvalidArgumentError: a missing or malformed variable, or NCCL without CUDA.
    """
    global _STORE
    size = launched_world_size()
    if size <= 1:
        return World()
    if dist.is_initialized():
        return get_world()
    try:
        rank = int(os.environ["RANK"])
        address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except KeyError as exc:
        raise InvalidArgumentError(
            f"WORLD_SIZE={size} but {exc.args[0]} is not set; launch with torchrun (e.g. torchrun --nproc-per-node "
            f"{size} -m datasetflow ...)."
        ) from None
    except ValueError as exc:
        raise InvalidArgumentError(f"RANK and MASTER_PORT must be integers: {exc}.") from None
    device = torch.device(device) if device is not None else torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise InvalidArgumentError("--device cuda was asked for, but CUDA is not available on this rank.")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # the same store the env:// rendezvous would create (torchrun's agent may host it), kept for heartbeats
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        address, port, world_size=size, is_master=rank == 0 and not agent_store, timeout=timedelta(seconds=timeout)
    )
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timedelta(seconds=timeout))
    _STORE = store
    heartbeat(get_world(), step=-1)
    return get_world()


def shard_range(n: int, world: World) -> tuple[int, int]:
    """Rows ``[start, stop)`` of this rank in a balanced contiguous split of ``n`` rows (the first ``n % size``
    ranks get one row more)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return start, start + base + (1 if world.rank < extra else 0)


# ---------------------------------------------------------------------- faults
def heartbeat(world: World, step: int) -> None:
    """Record in the store that this rank reached ``step`` (used to name a rank that stops responding)."""
    if world.distributed and world.store is not None:
        with contextlib.suppress(Exception):  # a dead store is reported by the collectives themselves
            world.store.set(f"{_HEARTBEAT_PREFIX}{world.rank}", f"{step} {time.time():.3f}")


def _silent_ranks(world: World, wait: float = 3.0) -> str:
    """Which ranks look dead or stuck (best effort): every survivor of a failed collective marks itself in the
    store; the ranks that do not within ``wait`` seconds are named, with the last step of their heartbeat."""
    if world.store is None:
        return "another rank"
    store = world.store
    try:
        store.set_timeout(timedelta(seconds=2))
        store.set(f"{_HEARTBEAT_PREFIX}failed/{world.rank}", "1")
        deadline = time.monotonic() + wait
        silent = [r for r in range(world.size) if r != world.rank]
        while silent and time.monotonic() < deadline:
            silent = [r for r in silent if not store.check([f"{_HEARTBEAT_PREFIX}failed/{r}"])]
            time.sleep(0.2)
        if not silent:
            return "another rank"
        names = []
        for rank in silent:
            key = f"{_HEARTBEAT_PREFIX}{rank}"
            step = int(float(store.get(key).decode().split()[0])) if store.check([key]) else None
            names.append(f"rank {rank}" + (f" (last at step {step})" if step is not None and step >= 0 else ""))
        return ", ".join(names)
    except Exception:  # noqa: BLE001 - the store lives on rank 0 (or the launcher): it may be gone too
        return "rank 0 (which hosts the rendezvous store)" if world.rank != 0 else "another rank"


@contextlib.contextmanager
def collective(world: World, what: str) -> Iterator[None]:
    """Run collectives, turning a failure or a timeout into a :class:`CollectiveError` naming the silent rank."""
    try:
        yield
    except (RuntimeError, dist.DistError) as exc:
        if isinstance(exc, DatasetflowError):
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0][:160]
        raise CollectiveError(
            f"rank {world.rank}: {what} failed: {_silent_ranks(world)} stopped responding ({first}). The other ranks "
            "stop; resume from the last complete checkpoint with --resume."
        ) from None


# ---------------------------------------------------------------------- collectives
def _comm_device(group: Any) -> torch.device | None:
    """The device NCCL needs for this group's tensors (this rank's GPU); None for gloo (any device)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def _reduced_copy(tensor: torch.Tensor, group: Any, op: Any = None) -> torch.Tensor:
    """An all-reduced copy of ``tensor`` on ``tensor``'s device (moved to the GPU and back under NCCL)."""
    device = _comm_device(group)
    out = tensor.detach().clone() if device is None or tensor.device == device else tensor.detach().to(device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op is None else op, group=group)
    return out.to(tensor.device)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        return _reduced_copy(tensor, group)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        return grad_output, None  # the objective is replicated: every rank holds the whole gradient


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The sum over ranks of ``tensor`` (same shape on every rank), differentiable for replicated objectives."""
    if not world.distributed:
        return tensor
    with collective(world, "an all-reduce (sum)"):
        return _AllReduceSum.apply(tensor, world.group)


class _Replicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        return _reduced_copy(grad_output.contiguous(), ctx.group), None


def mark_replicated(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """``tensor``, the same on every rank, as consumed by rank-local work: its gradient is summed over ranks.

    The dual of :func:`all_reduce_sum`. A replicated quantity (class statistics, a label-distance matrix)
    that each rank uses only for its own rows receives a partial gradient on every rank; summing them
    gives the gradient of the whole objective, which then flows on to what the quantity was built from.
    """
    if not world.distributed or not tensor.requires_grad:
        return tensor
    return _Replicated.apply(tensor, world.group)


def _reduce(tensor: torch.Tensor, world: World, op: Any, what: str) -> torch.Tensor:
    if not world.distributed:
        return tensor
    with collective(world, what):
        return _reduced_copy(tensor, world.group, op)


def all_reduce_max(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The elementwise maximum over ranks (no gradient)."""
    return _reduce(tensor, world, dist.ReduceOp.MAX if world.distributed else None, "an all-reduce (max)")


def all_reduce_min(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The elementwise minimum over ranks (no gradient)."""
    return _reduce(tensor, world, dist.ReduceOp.MIN if world.distributed else None, "an all-reduce (min)")


def gather_rows(tensor: torch.Tensor, world: World) -> tuple[torch.Tensor, list[int]]:
    """Every rank's rows concatenated in rank order, and the row count of each rank.

    Shapes beyond the first must agree. Shards are padded to the largest (gloo's ``all_gather`` needs
    equal shapes) and the padding is removed. This rank's rows keep their graph; the others' are constants.
    """
    if not world.distributed:
        return tensor, [tensor.shape[0]]
    device = _comm_device(world.group) or tensor.device
    with collective(world, "an all-gather"):
        count = torch.tensor([tensor.shape[0]], device=device)
        counts = [torch.zeros_like(count) for _ in range(world.size)]
        dist.all_gather(counts, count, group=world.group)
        sizes = [int(c) for c in counts]
        padded = tensor.detach().new_zeros((max(sizes), *tensor.shape[1:]), device=device)
        padded[: tensor.shape[0]] = tensor.detach()
        parts = [torch.empty_like(padded) for _ in range(world.size)]
        dist.all_gather(parts, padded, group=world.group)
    pieces = [p[:s].to(tensor.device) for p, s in zip(parts, sizes, strict=True)]
    pieces[world.rank] = tensor
    return torch.cat(pieces), sizes


def all_gather_object(obj: Any, world: World) -> list[Any]:
    """Every rank's (picklable) ``obj``, in rank order."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    with collective(world, "an object all-gather"):
        dist.all_gather_object(out, obj, group=world.group)
    return out


def broadcast_object(obj: Any, world: World, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    with collective(world, "a broadcast"):
        dist.broadcast_object_list(box, src=src, group=world.group)
    return box[0]


def barrier(world: World) -> None:
    """Wait until every rank gets here (fails after the group's timeout)."""
    if world.distributed:
        with collective(world, "a barrier"):
            dist.barrier(group=world.group)
