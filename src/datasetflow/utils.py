"""Small helpers shared across layers: argument checks that raise the library's errors, seeding, batching.

Only torch and :mod:`datasetflow.errors` are imported; every layer may use this module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InvalidArgumentError, NonFiniteError, ShapeMismatchError

__all__ = [
    "check_choice",
    "check_positive_int",
    "check_positive_float",
    "check_matrix",
    "batched",
    "module_placement",
    "seeded",
    "missing_extra",
    "write_atomic",
    "deterministic",
    "lapack_threads",
    "available_memory",
    "check_memory",
]


def check_choice(argument: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else an error that lists them."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(f"{argument} must be one of {tuple(choices)}, got {value!r}.")
    return value


def check_positive_int(argument: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``, else an error naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{argument} must be an int >= {minimum}, got {value!r}.")
    return value


def check_positive_float(argument: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float ``> 0`` (``>= 0`` with ``allow_zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value != float("inf")
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidArgumentError(f"{argument} must be a finite float {bound}, got {value!r}.")
    return float(value)


def check_matrix(argument: str, cost: Any, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """A detached, finite, floating 2-d matrix (of ``shape`` if given), else an error naming ``argument``."""
    matrix = torch.as_tensor(cost).detach()
    if matrix.ndim != 2 or min(matrix.shape) == 0:
        raise ShapeMismatchError(f"{argument} must be a non-empty 2-d matrix, got shape {tuple(matrix.shape)}.")
    if shape is not None and tuple(matrix.shape) != shape:
        raise ShapeMismatchError(
            f"{argument} must have shape {shape} (source classes, target classes), got {tuple(matrix.shape)}."
        )
    if not matrix.is_floating_point():
        matrix = matrix.to(torch.get_default_dtype())
    if not bool(torch.isfinite(matrix).all()):
        raise NonFiniteError(f"{argument} of shape {tuple(matrix.shape)} holds NaN or Inf values.")
    return matrix


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` applied to consecutive row blocks of ``x`` and concatenated, without gradients."""
    check_positive_int("batch_size", batch_size)
    with torch.no_grad():
        return torch.cat([fn(x[start : start + batch_size]) for start in range(0, x.shape[0], batch_size)])


def module_placement(model: Any, like: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of ``model``'s first parameter, else those of the data ``like``."""
    if isinstance(model, nn.Module):
        for param in model.parameters():
            return param.device, param.dtype
    return like.device, like.dtype if like.is_floating_point() else torch.get_default_dtype()


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for the block (module initialisation, ``pca_lowrank``) and restore them."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def missing_extra(what: str, package: str, extra: str) -> InvalidArgumentError:
    """The error raised when an optional dependency is needed but not installed."""
    return InvalidArgumentError(f"{what} needs {package}: pip install 'datasetflow[{extra}]'")


def write_atomic(path: str | os.PathLike[str], data: bytes | str | Callable[[Path], None]) -> None:
    """Write a file so that it is either entirely the old one or entirely the new one.

    ``data`` is bytes, text (UTF-8) or a function that writes a given temporary path. The temporary
    file lives in the same directory, is flushed to disk, then renamed over ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if callable(data):
        data(tmp)
    else:
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
    tmp.replace(path)


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Run the block with ``torch.use_deterministic_algorithms(enabled, warn_only=True)``, then restore.

    On the CPU this makes the scatter-adds of advanced-indexing backward passes independent of the
    thread count and scheduling, so repeated runs are bit-identical. Its cost on a flow step is
    measured by ``benchmarks/bench_flow.py`` (``docs/benchmarks.md``).
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


@contextlib.contextmanager
def lapack_threads(like: torch.Tensor, threads: int = 1) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads when ``like`` is on the CPU (dense eigensolvers).

    LAPACK's symmetric eigensolvers synchronise their threads once per Householder step; on a busy
    2-core machine (more runnable threads than cores) a 784 x 784 float64 ``eigvalsh`` measured 0.11 s
    with 1 thread and 3.7 s with 2. One thread is also deterministic. Other devices are left alone.
    """
    previous = torch.get_num_threads()
    if like.device.type != "cpu" or previous <= threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` on Linux), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_memory(needed: int, what: str, hint: str) -> None:
    """Refuse, before allocating, work whose estimated memory ``needed`` (bytes) exceeds what is available.

    Raises:
        InvalidArgumentError: naming ``what``, the estimate, the available memory and ``hint``.
    """
    available = available_memory()
    if available is not None and needed > available:
        raise InvalidArgumentError(
            f"{what} would need about {needed / 2**30:.1f} GiB of memory but only {available / 2**30:.1f} GiB is "
            f"available; {hint}"
        )


def flush_subnormals_(tensor: torch.Tensor) -> torch.Tensor:
    """Set the subnormal entries (``0 < |t| < finfo(dtype).tiny``) of a floating tensor to 0, in place; returns it.

    CPU arithmetic on subnormal operands is many times slower than on normal ones, and their values are below any
    precision the library resolves (the flow integrator and the Sinkhorn plans use this; see their docs).
    """
    if tensor.is_floating_point():
        with torch.no_grad():
            tensor.masked_fill_(tensor.abs() < torch.finfo(tensor.dtype).tiny, 0.0)
    return tensor
