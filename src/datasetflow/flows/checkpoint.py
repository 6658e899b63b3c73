"""Flow checkpoints: one file with a header, a SHA-256 checksum and a ``torch.save`` payload.

A checkpoint carries the complete state of a flow (particles, labels, optimizer, schedule,
generators, functional memory, history, callbacks) *and the settings it was made with*, so that a
resume is checked against the checkpoint itself. Files are written atomically (a temporary file,
``fsync``, then a rename), and the checksum catches a truncated or corrupted file; loading uses
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from ..errors import DataFormatError
from ..utils import write_atomic

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "save_checkpoint", "load_checkpoint", "FORMAT"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 2
_MAGIC = b"DATASETFLOW-CHECKPOINT 2\n"


class CheckpointError(DataFormatError):
    """A checkpoint file is missing, truncated, corrupted, from another version, or does not fit the flow."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists and dicts) atomically with its checksum."""
    buffer = io.BytesIO()
    torch.save({**payload, "format": FORMAT}, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest().encode()
    write_atomic(Path(path), _MAGIC + digest + b"\n" + data)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: one line saying what is wrong with the file (missing, not a datasetflow
            checkpoint, truncated or corrupted, unreadable).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}.") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc.strerror or exc}.") from None
    if not raw.startswith(_MAGIC):
        raise CheckpointError(
            f"{path} is not a datasetflow checkpoint of format {FORMAT} (it may come from an older version or "
            "another program); start a new run."
        )
    header_end = len(_MAGIC) + 64
    digest, data = raw[len(_MAGIC) : header_end], raw[header_end + 1 :]
    if len(raw) <= header_end or hashlib.sha256(data).hexdigest().encode() != digest:
        raise CheckpointError(f"{path} is truncated or corrupted (its checksum does not match); start a new run.")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load the checkpoint {path}: {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} does not hold a format-{FORMAT} flow checkpoint; start a new run.")
    return payload
