"""Typed results of a flow: the final dataset, the objective history and the trajectory."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.dataset import LabeledDataset

__all__ = ["FlowResult", "Trajectory"]


@dataclass(frozen=True)
class Trajectory:
    """Particle positions and labels recorded every few steps.

    Held in memory (``positions`` / ``labels`` lists of tensors) or streamed to disk
    (``directory`` with one ``step_XXXXXXXX.npz`` per record, keys ``x`` and ``y``).

    Attributes:
        steps: the recorded step numbers (0 is the initial state).
        feature_shape: shape of one sample, for image grids.
    """

    steps: tuple[int, ...]
    feature_shape: tuple[int, ...]
    positions: tuple[torch.Tensor, ...] = ()
    labels: tuple[torch.Tensor, ...] = ()
    directory: str | None = None

    def __len__(self) -> int:
        return len(self.steps)

    def record(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions ``(n, d)`` and labels ``(n,)`` of the ``k``-th record."""
        if self.directory is None:
            return self.positions[k], self.labels[k]
        with np.load(Path(self.directory) / f"step_{self.steps[k]:08d}.npz", allow_pickle=False) as data:
            return torch.as_tensor(data["x"]), torch.as_tensor(data["y"])

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All records: positions ``(T, n, d)`` and labels ``(T, n)``."""
        records = [self.record(k) for k in range(len(self))]
        return torch.stack([r[0] for r in records]), torch.stack([r[1] for r in records])


@dataclass(frozen=True)
class FlowResult:
    """Result of :func:`~datasetflow.flows.loop.run_flow`.

    Attributes:
        final: the final particles as a :class:`LabeledDataset` (labels may have changed under jd-vl).
        objective: the objective value at every step taken (before that step's update).
        terms: per-term values (``name -> list``), weighted as in the objective.
        steps: total number of steps taken (including those before a resume).
        stopped: ``"steps"`` (ran all steps), ``"tol"`` (objective change below ``tol``),
            ``"callback"`` (or the reason a callback gave) or ``"diverged"``.
        trajectory: recorded positions, or None.
        label_history: ``(step, labels)`` each time the discrete labels changed (jd-vl), starting
            with the initial labels.
        classes: final class names.
        seconds: wall time of the flow, over all its runs when it was resumed.
        config: the settings that produced the result.
        resumed_from: the step a resumed flow continued from (None otherwise).
    """

    final: LabeledDataset
    objective: list[float]
    terms: dict[str, list[float]]
    steps: int
    stopped: str
    trajectory: Trajectory | None
    label_history: list[tuple[int, torch.Tensor]]
    classes: tuple[Hashable, ...]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None

    def history(self) -> dict[str, Any]:
        """JSON-friendly history (``objective``, ``terms``, ``steps``, ``stopped``, ``config``)."""
        return {
            "objective": list(self.objective),
            "terms": {k: list(v) for k, v in self.terms.items()},
            "steps": self.steps,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "resumed_from": self.resumed_from,
            "config": self.config,
        }
