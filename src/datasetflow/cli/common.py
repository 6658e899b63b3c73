"""Helpers shared by the CLI commands: JSON conversion, dataset loading, warning capture.

Only the standard library is imported at module level; torch and the library are imported
inside the functions, so that ``datasetflow --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "to_float",
    "jsonable",
    "describe",
    "shape_text",
    "channels",
    "subsample",
    "torch_device_dtype",
    "load_datasets",
    "captured_warnings",
    "WarningLog",
    "os_error_text",
    "progress_callback",
    "write_final_npz",
    "join_world",
    "on_main",
    "gather_result",
    "write_json_atomic",
]


def to_float(value: Any) -> float | None:
    """A plain float from a 0-d tensor / number (None for None)."""
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    return float(value)


def jsonable(value: Any) -> Any:
    """Recursively turn tensors, arrays, tuples and non-finite floats into strict JSON values."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def describe(ds: Any, spec: str) -> dict[str, Any]:
    """Name, size and shape of a loaded dataset, for JSON outputs."""
    return {
        "spec": spec,
        "name": ds.name,
        "n": len(ds),
        "dim": ds.dim,
        "feature_shape": list(ds.feature_shape),
        "num_classes": ds.num_classes,
    }


def shape_text(shape: Sequence[int]) -> str:
    """``(28, 28)`` -> ``"28x28"``."""
    return "x".join(str(s) for s in shape)


def channels(shape: Sequence[int]) -> int | None:
    """Channels of an image shape, as read by the loaders (None if not an image)."""
    if len(shape) == 2:
        return 1
    if len(shape) == 3 and shape[-1] <= 4:
        return shape[-1]
    if len(shape) == 3 and shape[0] <= 4:
        return shape[0]
    return None


def subsample(ds: Any, max_samples: int | None, seed: int) -> Any:
    """At most ``max_samples`` samples drawn uniformly without replacement (seeded)."""
    import torch

    if max_samples is None or len(ds) <= max_samples:
        return ds
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(ds), generator=generator)[:max_samples].sort().values
    return ds.subset(index.to(ds.x.device))


def torch_device_dtype(device: str, dtype: str) -> tuple[Any, Any]:
    """``(torch.device, torch.dtype)`` from the ``--device`` and ``--dtype`` strings.

    Raises:
        InvalidArgumentError: CUDA asked for but not available.
    """
    import torch

    from ..errors import InvalidArgumentError

    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device={device!r} was asked for, but CUDA is not available; use --device cpu.")
    return torch_device, {"float32": torch.float32, "float64": torch.float64}[dtype]


def load_datasets(source: str, target: str | None, options: dict[str, Any], seed: int) -> tuple[Any, Any, float]:
    """Load SOURCE (and TARGET, unless None) with the data options, subsample them, and check that their
    dimensions agree.

    Args:
        source, target: dataset names or paths (``target`` may be None).
        options: the data options of the command: ``data_dir``, ``resize``, ``device``, ``dtype`` (strings,
            as given on the command line) and ``max_samples``.
        seed: seed of the ``--max-samples`` subsampling.

    Returns:
        ``(source, target or None, seconds spent loading)``.

    Raises:
        ShapeMismatchError: different feature dimensions (with a ``--resize`` hint for images).
        DatasetflowError: whatever the loaders raise (unknown name, missing file, ...).
    """
    from ..data import load_dataset
    from ..errors import ShapeMismatchError

    device, dtype = torch_device_dtype(options["device"], options["dtype"])
    start = time.perf_counter()
    loaded = []
    for spec in (source, target):
        if spec is None:
            loaded.append(None)
            continue
        ds = load_dataset(spec, data_dir=options["data_dir"], resize=options["resize"], dtype=dtype, device=device)
        loaded.append(subsample(ds, options["max_samples"], seed))
    src, tgt = loaded
    seconds = time.perf_counter() - start
    if tgt is not None and src.dim != tgt.dim:
        chans = (channels(src.feature_shape), channels(tgt.feature_shape))
        hint = ""
        if None not in chans and chans[0] == chans[1]:
            hint = " Resize the images to a common size with --resize HxW (e.g. --resize 28x28)."
        elif None not in chans:
            hint = f" The images have {chans[0]} and {chans[1]} channels; resizing cannot match them."
        raise ShapeMismatchError(
            f"source {source!r} has d={src.dim} features (shape {src.feature_shape}) but target {target!r} "
            f"has d={tgt.dim} (shape {tgt.feature_shape}).{hint}"
        )
    return src, tgt, seconds


class WarningLog:
    """The warnings recorded so far by :func:`captured_warnings`, as deduplicated ``"Category: message"`` strings."""

    def __init__(self, records: list) -> None:
        self._records = records

    @property
    def messages(self) -> list[str]:
        """The messages, in order, without repeats."""
        out: list[str] = []
        for w in self._records:
            text = f"{w.category.__name__}: {w.message}"
            if text not in out:
                out.append(text)
        return out


@contextlib.contextmanager
def captured_warnings() -> Iterator[WarningLog]:
    """Record every warning raised inside the block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield WarningLog(caught)


def os_error_text(exc: OSError) -> str:
    """One line for a file-system error: what failed, on which path, and why."""
    path = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    return f"{path}: {reason}." if path else f"{reason}."


def progress_callback(total: int, initial: int, enabled: bool) -> tuple[Callable[..., None], Callable[[], None]]:
    """A tqdm bar on stderr driven by a run_flow callback; ``(callback, close)``."""
    if not enabled:
        return (lambda step, state, info: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:
        return (lambda step, state, info: None), (lambda: None)
    bar = tqdm(total=total, initial=initial, file=sys.stderr, desc="flow", unit="step", dynamic_ncols=True)

    def callback(step: int, state: Any, info: dict[str, Any]) -> None:
        if step > bar.n:
            bar.update(step - bar.n)
        bar.set_postfix(objective=f"{info['objective']:.6g}", refresh=False)

    return callback, bar.close


def write_final_npz(path: Path, result: Any) -> None:
    """Write a flow's final particles atomically: ``x`` in the feature shape, ``y`` (int64), ``classes``."""
    import numpy as np

    final = result.final
    x = final.x.detach().cpu().numpy().reshape(len(final), *final.feature_shape)
    y = final.y.detach().cpu().numpy().astype(np.int64)
    classes = np.asarray([str(c) for c in final.classes], dtype=str)

    from ..utils import write_atomic

    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y, classes=classes)
    write_atomic(path, buffer.getvalue())


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as strict JSON (tensors and non-finite floats converted), atomically."""
    from ..utils import write_atomic

    write_atomic(path, json.dumps(jsonable(payload), indent=1, allow_nan=False) + "\n")


def join_world(device: str) -> Any:
    """The ranks of this command: under ``torchrun`` (``WORLD_SIZE > 1``) join the process group (gloo on
    the CPU, NCCL on CUDA); otherwise single-process mode."""
    from ..distributed import get_world, init_from_env, launched_world_size

    return init_from_env(device) if launched_world_size() > 1 else get_world()


def leave_world(world: Any) -> None:
    """Wait for every rank, then leave the process group (a rank that exits while gloo's threads still talk to
    the others can abort them at interpreter exit)."""
    if not world.distributed:
        return
    import torch.distributed as dist

    from ..distributed import barrier

    barrier(world)
    dist.destroy_process_group()


def on_main(world: Any, fn: Callable[[], Any]) -> None:
    """Run ``fn`` on rank 0 only; a library error it raises is raised on every rank (no rank waits forever)."""
    from ..distributed import barrier, broadcast_object
    from ..errors import DatasetflowError, InvalidArgumentError

    message = None
    if world.is_main:
        try:
            fn()
        except DatasetflowError as exc:
            message = str(exc)
    message = broadcast_object(message, world)
    if message is not None:
        raise InvalidArgumentError(message)
    barrier(world)


def gather_result(result: Any, world: Any) -> Any:
    """A sharded flow's result with every rank's final particles gathered, in rank order (single process: as is)."""
    if not world.distributed:
        return result
    import dataclasses

    from ..data import LabeledDataset
    from ..distributed import gather_rows

    final = result.final
    x, _ = gather_rows(final.x.detach(), world)
    y, _ = gather_rows(final.y, world)
    w, _ = gather_rows(final.weights.detach(), world)
    full = LabeledDataset.from_tensors(x, y, w, final.classes, feature_shape=final.feature_shape, name=final.name)
    return dataclasses.replace(result, final=full)
