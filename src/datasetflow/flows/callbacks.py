r"""Callbacks of the flow integrator: recording, checkpoints and resume, stopping rules, divergence.

A callback is an object with four hooks, each given the running :class:`~datasetflow.flows.loop.Flow`
(state, optimizer, history, outputs):

* ``on_start(flow)``: before the first step (a :class:`Checkpointer` restores a run here);
* ``on_step(flow)``: after every step; a true return value stops the flow (a string names the reason);
* ``on_end(flow)``: after the last step;
* ``on_diverged(flow)``: when the flow diverged, after the last good particles were restored.

``state_dict`` / ``load_state_dict`` let a callback's memory travel in checkpoints. A plain function
``fn(step, state, info)`` is accepted wherever a callback is (:class:`FunctionCallback`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..distributed.comm import barrier, gather_rows
from ..errors import DivergenceError, InvalidArgumentError
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from .result import Trajectory

if TYPE_CHECKING:  # pragma: no cover
    from .loop import Flow

__all__ = [
    "FlowCallback",
    "FunctionCallback",
    "Recorder",
    "Checkpointer",
    "ToleranceStop",
    "DivergenceGuard",
    "as_callback",
    "RESUME_KEYS",
]


class FlowCallback:
    """Base class of flow callbacks: every hook does nothing by default."""

    #: key of the callback's memory in checkpoints
    name = "callback"

    def on_start(self, flow: Flow) -> None:  # noqa: B027 - optional hook
        """Called once before the first step."""

    def on_step(self, flow: Flow) -> bool | str | None:
        """Called after every step; a true value stops the flow (a string is the reason)."""
        return None

    def on_end(self, flow: Flow) -> None:  # noqa: B027 - optional hook
        """Called once after the last step."""

    def on_diverged(self, flow: Flow) -> None:  # noqa: B027 - optional hook
        """Called when the flow diverged, after the last good particles were restored."""

    def state_dict(self) -> dict[str, Any]:
        """Memory to keep in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state_dict`."""


class FunctionCallback(FlowCallback):
    """A plain function ``fn(step, state, info) -> bool | None`` as a callback (``info`` has ``objective``,
    ``terms`` and ``step_size``); returning True stops the flow."""

    name = "function"

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def on_step(self, flow: Flow) -> bool | str | None:  # noqa: D102
        return bool(self.fn(flow.state.step, flow.state, flow.info))


def as_callback(callback: Any) -> FlowCallback:
    """``callback`` itself if it is a :class:`FlowCallback`; a callable wrapped in :class:`FunctionCallback`."""
    if isinstance(callback, FlowCallback):
        return callback
    if callable(callback):
        return FunctionCallback(callback)
    raise InvalidArgumentError(
        f"callbacks must be FlowCallback objects or functions fn(step, state, info), got {type(callback).__name__}."
    )


# ---------------------------------------------------------------------- recording
class Recorder(FlowCallback):
    """Record positions and labels every ``every`` steps (and at the start and the end).

    Records stay in memory, or are streamed to ``directory`` as ``step_XXXXXXXX.npz`` (keys ``x``,
    ``y``). The trajectory is the flow result's ``trajectory``. Sharded over several ranks, every record
    gathers all particles (in rank order) on rank 0, which alone keeps them.
    """

    name = "recorder"

    def __init__(self, every: int, directory: str | Path | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InvalidArgumentError(f"record_every must be a positive int, got {every!r}.")
        self.every, self.directory = every, None if directory is None else Path(directory)
        self.steps: list[int] = []
        self.positions: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def _record(self, flow: Flow) -> None:
        state = flow.state
        if self.steps and self.steps[-1] == state.step:
            return
        x_now, y_now = gather_rows(state.x.detach(), flow.world)[0], gather_rows(state.y, flow.world)[0]
        if not flow.world.is_main:
            self.steps.append(state.step)
            return
        x_now, y_now = x_now.cpu().clone(), y_now.cpu().clone()
        self.steps.append(state.step)
        if self.directory is not None:
            np.savez(self.directory / f"step_{state.step:08d}.npz", x=x_now.numpy(), y=y_now.numpy())
        else:
            self.positions.append(x_now)
            self.labels.append(y_now)
        flow.outputs["trajectory"] = self.trajectory(state.feature_shape)

    def trajectory(self, feature_shape: tuple[int, ...]) -> Trajectory:
        """The records so far."""
        return Trajectory(
            steps=tuple(self.steps),
            feature_shape=feature_shape,
            positions=tuple(self.positions),
            labels=tuple(self.labels),
            directory=None if self.directory is None else str(self.directory),
        )

    def on_start(self, flow: Flow) -> None:  # noqa: D102
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._record(flow)

    def on_step(self, flow: Flow) -> None:  # noqa: D102
        if flow.state.step % self.every == 0 or flow.state.step == flow.steps:
            self._record(flow)

    def on_end(self, flow: Flow) -> None:  # noqa: D102
        self._record(flow)

    def on_diverged(self, flow: Flow) -> None:  # noqa: D102
        self._record(flow)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"steps": list(self.steps), "x": list(self.positions), "y": list(self.labels)}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.steps = list(state.get("steps", []))
        self.positions, self.labels = list(state.get("x", [])), list(state.get("y", []))


# ---------------------------------------------------------------------- checkpoints
#: Flow settings a resume must share with the checkpoint; ``steps`` too when the schedule depends on it.
RESUME_KEYS = ("functional", "dynamics", "optimizer", "optimizer_options", "step_size", "schedule", "seed", "particles")


def _settings_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [
        f"{k}: {now.get(k)!r} (checkpoint: {saved.get(k)!r})"
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
    ]


class Checkpointer(FlowCallback):
    """Save the whole flow to ``directory/checkpoint.pt`` every ``every`` steps and at the end; resume from it.

    Args:
        directory: where the checkpoint lives (created if needed).
        every: steps between checkpoints (None: only at the end and on divergence).
        resume: continue from the checkpoint (bit-identical to an uninterrupted run on the same machine
            and thread count). The checkpoint's own settings are checked: the functional, dynamics,
            optimizer and its options, step size, schedule, seed and particle shapes must match (and the
            total ``steps`` under a cosine schedule, whose shape depends on it), as must ``settings``.
        settings: extra JSON-like settings of the caller (e.g. the CLI's data options), stored in the
            checkpoint and compared on resume.

    Sharded over several ranks, every rank writes its own shard file
    (``checkpoint.stepSSSSSSSS.rankR.pt``); once all are written (a barrier), rank 0 replaces
    ``checkpoint.pt`` with a manifest naming them, and only then are the previous shard files removed.
    A set killed half-way is therefore never used: the manifest still names the last complete set. A
    resume needs the same number of ranks (re-sharding is refused with a message).
    """

    name = "checkpointer"

    def __init__(
        self, directory: str | Path, every: int | None = None, *, resume: bool = False, settings: dict | None = None
    ) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise InvalidArgumentError(f"checkpoint_every must be a positive int or None, got {every!r}.")
        self.directory, self.every, self.resume = Path(directory), every, bool(resume)
        self.settings = dict(settings or {})
        self.saved_path: str | None = None

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return self.directory / CHECKPOINT_NAME

    def _shard_name(self, step: int, rank: int) -> str:
        return f"checkpoint.step{step:08d}.rank{rank}.pt"

    def _save(self, flow: Flow, **extra: Any) -> None:
        payload = {**flow.state_dict(), "settings": self.settings, **extra}
        world = flow.world
        if not world.distributed:
            save_checkpoint(self.path, payload)
            self.saved_path = str(self.path)
            return
        step = flow.state.step
        save_checkpoint(self.directory / self._shard_name(step, world.rank), payload)
        barrier(world)  # every shard of this step is on disk
        if world.is_main:
            manifest = {
                "kind": "manifest",
                "world_size": world.size,
                "step": step,
                "shards": [self._shard_name(step, r) for r in range(world.size)],
                "config": flow.config,
                "settings": self.settings,
                **extra,
            }
            save_checkpoint(self.path, manifest)
        barrier(world)  # the manifest names this step: older shard files can go
        for old in self.directory.glob(f"checkpoint.step*.rank{world.rank}.pt"):
            if old.name != self._shard_name(step, world.rank):
                old.unlink(missing_ok=True)
        self.saved_path = str(self.path)

    def _load(self, flow: Flow) -> dict[str, Any]:
        """This rank's checkpoint payload, with the settings of the manifest when sharded."""
        saved = load_checkpoint(self.path)
        world = flow.world
        sharded = saved.get("kind") == "manifest"
        if sharded != world.distributed or (sharded and int(saved["world_size"]) != world.size):
            written = f"{saved['world_size']} ranks" if sharded else "one process"
            raise CheckpointError(
                f"{self.path} was written by {written} but this flow runs on {world.size} rank(s); resume with the "
                "same number of ranks (re-sharding a checkpoint is not supported)."
            )
        if not sharded:
            return saved
        shard = load_checkpoint(self.directory / saved["shards"][world.rank])
        if int(shard.get("step", -1)) != int(saved["step"]):
            raise CheckpointError(f"the shard files in {self.directory} do not match their manifest; start a new run.")
        return {**shard, "config": saved["config"], "settings": saved["settings"]}

    def on_start(self, flow: Flow) -> None:  # noqa: D102
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgumentError(
                f"cannot create the checkpoint directory {str(self.directory)!r}: {exc.strerror or exc}."
            ) from None
        if not self.resume:
            return
        if not self.path.exists():
            raise InvalidArgumentError(f"resume=True but no checkpoint at {self.path}.")
        saved = self._load(flow)
        config, now = saved.get("config", {}), flow.config
        keys = RESUME_KEYS + (("steps",) if now.get("schedule") == "cosine" else ())
        changed = _settings_differences({k: config.get(k) for k in keys}, {k: now.get(k) for k in keys})
        changed += _settings_differences(saved.get("settings", {}), self.settings)
        if changed:
            hint = ""
            if any(c.startswith("steps:") for c in changed):
                hint = (
                    f" A cosine schedule spans the total of the run that wrote the checkpoint "
                    f"({config.get('steps')} steps); resume with that total, or start a new run with the new total "
                    "to get the straight-run result."
                )
            raise CheckpointError(
                f"cannot resume from {self.path}: the settings differ from the checkpoint's: "
                f"{'; '.join(changed)}.{hint}"
            )
        if int(saved["step"]) > flow.steps:
            raise InvalidArgumentError(
                f"the checkpoint is at step {int(saved['step'])}, past steps={flow.steps}; ask for at least that many."
            )
        flow.load_state_dict(saved)

    def on_step(self, flow: Flow) -> None:  # noqa: D102
        if self.every is not None and (flow.state.step % self.every == 0 or flow.state.step == flow.steps):
            self._save(flow)

    def on_end(self, flow: Flow) -> None:  # noqa: D102
        if self.saved_path is None or flow.stopped != "steps" or self.every is None:
            self._save(flow)

    def on_diverged(self, flow: Flow) -> None:  # noqa: D102
        self._save(flow, diverged=True)


# ---------------------------------------------------------------------- stopping rules
class ToleranceStop(FlowCallback):
    r"""Stop when :math:`|F_t - F_{t-1}| \le \text{tol}\cdot\max(1, |F_{t-1}|)`."""

    name = "tolerance"

    def __init__(self, tol: float) -> None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise InvalidArgumentError(f"tol must be non-negative or None, got {tol!r}.")
        self.tol = float(tol)

    def on_step(self, flow: Flow) -> str | None:  # noqa: D102
        objective = flow.history["objective"]
        if len(objective) >= 2 and abs(objective[-1] - objective[-2]) <= self.tol * max(1.0, abs(objective[-2])):
            return "tol"
        return None


class DivergenceGuard(FlowCallback):
    r"""Stop a flow whose objective runs away, keeping the best particles seen.

    The flow is declared diverged at step :math:`t` when

    * the objective rose far above its start: :math:`F_t - F_0 > \text{growth}\cdot\max(|F_0|, \text{floor})`, or
    * it rose at ``patience`` consecutive steps and ended above its start.

    A gradient flow decreases its objective (up to the noise of stochastic objectives), so either
    is a sign that the step size is too large. On divergence the integrator restores the particles
    of the lowest objective seen and raises :class:`~datasetflow.flows.loop.FlowDivergedError`.
    Flows with an entropy term minimise the objective *plus* an entropy that is not logged, so a
    rising objective is expected there (a tight start spreads to equilibrium): the guard then only
    watches NaN/Inf, as every flow does.

    Args:
        growth: how many times its start's magnitude the objective may rise (default 10).
        patience: consecutive increases allowed (default 25); None disables this rule.
        floor: smallest magnitude used for :math:`|F_0|` (default 1e-12).
    """

    name = "divergence"

    def __init__(self, growth: float = 10.0, patience: int | None = 25, floor: float = 1e-12) -> None:
        if isinstance(growth, bool) or not isinstance(growth, (int, float)) or not growth > 0:
            raise InvalidArgumentError(f"growth must be a positive number, got {growth!r}.")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise InvalidArgumentError(f"patience must be a positive int or None, got {patience!r}.")
        self.growth, self.patience, self.floor = float(growth), patience, float(floor)
        self.best_value = math.inf
        self.best_step: int | None = None
        self.best_params: list[torch.Tensor] | None = None
        self.best_labels: tuple[torch.Tensor, tuple] | None = None

    def on_start(self, flow: Flow) -> None:  # noqa: D102
        self.best_value, self.best_step, self.best_params, self.best_labels = math.inf, None, None, None

    def on_step(self, flow: Flow) -> None:  # noqa: D102
        if flow.noise > 0:
            return
        objective = flow.history["objective"]
        current = objective[-1]
        step = flow.state.step - 1  # the objective was evaluated before this step's update
        if current < self.best_value:  # the loop's copies of the parameters before this step: no new copy
            self.best_value, self.best_step = current, step
            self.best_params, self.best_labels = flow.params_before, flow.labels_before
        start = objective[0]
        if current - start > self.growth * max(abs(start), self.floor):
            raise DivergenceError(
                f"the objective rose from {start:.6g} to {current:.6g} (more than {self.growth:g} times its start)"
            )
        if self.patience is not None and len(objective) > self.patience and current > start:
            recent = objective[-self.patience - 1 :]
            if all(b > a for a, b in zip(recent, recent[1:], strict=False)):
                raise DivergenceError(
                    f"the objective rose at {self.patience} consecutive steps, from {recent[0]:.6g} to {current:.6g}"
                )

    def on_diverged(self, flow: Flow) -> None:
        """Put back the particles of the lowest objective seen (``flow.restored_step``)."""
        if self.best_params is None or self.best_value >= flow.restored_value:
            return
        flow.restore(self.best_params, self.best_labels, self.best_step, self.best_value)
