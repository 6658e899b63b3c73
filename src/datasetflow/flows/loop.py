r"""The flow integrator: particles follow the Wasserstein gradient flow of a functional.

With particles :math:`\rho_N = \sum_i w_i \delta_{z_i}`, the gradient of :math:`F(\rho_N)`
with respect to :math:`z_i` is :math:`w_i \nabla \frac{\delta F}{\delta\rho}(z_i)`; dividing by
the mass :math:`w_i` gives the Wasserstein gradient, the particle velocity of
:math:`\partial_t\rho = \nabla\cdot(\rho \nabla \frac{\delta F}{\delta \rho})` (paper eqs. 14-17).
That rescaling happens in exactly one place, :func:`_wasserstein_gradients`; the
optimizer (Euler, momentum or Adam) then takes the step, and an entropy term adds the
Euler-Maruyama noise :math:`\sqrt{2\tau\sigma}\,\xi`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.dataset import LabeledDataset
from ..errors import DatasetflowError, InvalidArgumentError
from ..functionals.base import Functional
from ..functionals.state import FlowState
from .dynamics import Dynamics, get_dynamics
from .optimizers import make_optimizer, make_schedule
from .result import FlowResult, Trajectory

__all__ = ["run_flow", "FlowDivergedError", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"

#: ``callback(step, state, info) -> bool | None``; returning True stops the flow.
Callback = Callable[[int, FlowState, dict[str, Any]], Any]


class FlowDivergedError(DatasetflowError, FloatingPointError):
    """The objective or a parameter became NaN/Inf; the last good state was saved."""

    def __init__(self, message: str, step: int, checkpoint: str | None) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


def _evaluate(functional: Functional, state: FlowState) -> tuple[torch.Tensor, dict[str, float]]:
    """Total objective and the weighted value of every term, in one evaluation of each leaf."""
    total = torch.zeros((), dtype=state.x.dtype, device=state.x.device)
    terms: dict[str, float] = {}
    for name, weight, leaf in functional.terms():
        if weight == 0.0:
            continue
        value = leaf.value(state)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InvalidArgumentError(
                f"functional term {name!r} ({type(leaf).__name__}) must return a scalar tensor, got {shape}."
            )
        value = weight * value.reshape(())
        key = name
        suffix = 2
        while key in terms:
            key, suffix = f"{name}_{suffix}", suffix + 1
        terms[key] = float(value.detach())
        total = total + value
    return total, terms


def _wasserstein_gradients(state: FlowState) -> None:
    """Turn particle gradients into Wasserstein gradients: divide each by its mass (the one place)."""
    for _, tensor, mass in state.parameters():
        if tensor.grad is not None:
            tensor.grad.div_(mass.clamp_min(torch.finfo(mass.dtype).tiny))


def _finite(state: FlowState) -> bool:
    return all(bool(torch.isfinite(t).all()) for _, t, _ in state.parameters())


def _save_checkpoint(
    path: Path, state: FlowState, optimizer, scheduler, generator, history: dict, functional: Functional
) -> None:
    payload = {
        "functional": functional.state_dict(),
        "step": state.step,
        "params": {name: t.detach().cpu() for name, t, _ in state.parameters()},
        "y": state.y.cpu(),
        "classes": list(state.classes),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "history": history,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a killed flow never leaves a half-written checkpoint


def _load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def run_flow(
    functional: Functional,
    initial: LabeledDataset,
    *,
    dynamics: str | Dynamics = "fd-fl",
    optimizer: str = "sgd",
    step_size: float = 0.1,
    steps: int = 100,
    schedule: str = "constant",
    tol: float | None = None,
    seed: int = 0,
    record_every: int | None = None,
    trajectory_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    dynamics_options: dict[str, Any] | None = None,
    optimizer_options: dict[str, Any] | None = None,
) -> FlowResult:
    r"""Follow the Wasserstein gradient flow of ``functional`` from ``initial``.

    Args:
        functional: the objective (a :class:`~datasetflow.functionals.base.Functional`; sums and
            multiples compose).
        initial: the starting particles (a :class:`LabeledDataset`; it is not modified).
        dynamics: ``"fd-fl"``, ``"jd-fl"``, ``"jd-vl"`` or a :class:`Dynamics` instance.
        optimizer: ``"sgd"`` (Euler), ``"momentum"`` or ``"adam"``.
        step_size: the time step :math:`\tau > 0` (the optimizer's learning rate).
        steps: total number of steps (with ``resume``, counted from the start of the flow).
        schedule: step-size schedule: ``"constant"``, ``"cosine"``, ``"exponential"``, ``"step"``.
        tol: stop when :math:`|F_t - F_{t-1}| \le \text{tol}\cdot\max(1, |F_{t-1}|)`.
        seed: seed of the noise generator (and of k-means under jd-vl).
        record_every: record positions and labels every this many steps (and at the end).
        trajectory_dir: stream records to this directory instead of memory.
        checkpoint_every: save a checkpoint every this many steps to ``checkpoint_dir``.
        checkpoint_dir: directory of ``checkpoint.pt`` (also written when NaN appears).
        resume: continue from ``checkpoint_dir/checkpoint.pt`` up to ``steps``; bit-identical to
            an uninterrupted run on the CPU under the same seed. A schedule whose shape depends
            on the total (``"cosine"``) keeps the total of the run that wrote the checkpoint.
        callbacks: ``callback(step, state, info)`` after every step; returning True stops.
        dynamics_options: options of the named dynamics (e.g. ``{"clustering": "dbscan"}``).
        optimizer_options: extra options of the optimizer (e.g. ``{"momentum": 0.5}``).

    Returns:
        A :class:`FlowResult`.

    Raises:
        InvalidArgumentError: unknown names, non-positive step size or steps, a functional
            returning a non-scalar, ``resume`` without a checkpoint.
        FlowDivergedError: NaN/Inf appeared; the last good state is saved and the step named.
    """
    if not isinstance(functional, Functional):
        raise InvalidArgumentError(f"functional must be a Functional, got {type(functional).__name__}.")
    if not isinstance(initial, LabeledDataset):
        raise InvalidArgumentError(f"initial must be a LabeledDataset, got {type(initial).__name__}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InvalidArgumentError(f"steps must be a non-negative int, got {steps!r}.")
    for name, value in (("record_every", record_every), ("checkpoint_every", checkpoint_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidArgumentError(f"{name} must be a positive int or None, got {value!r}.")
    if tol is not None and not tol >= 0:
        raise InvalidArgumentError(f"tol must be non-negative or None, got {tol!r}.")
    if (checkpoint_every or resume) and checkpoint_dir is None:
        raise InvalidArgumentError("checkpoint_every and resume need checkpoint_dir.")
    start_time = time.perf_counter()
    dyn = get_dynamics(dynamics, **(dynamics_options or {}))
    if hasattr(dyn, "seed") and "seed" not in (dynamics_options or {}):
        dyn.seed = seed  # e.g. the k-means seed of jd-vl follows the flow's seed
    state = dyn.init(initial)
    params = [t.requires_grad_() for _, t, _ in state.parameters()]
    opt = make_optimizer(optimizer, params, step_size, **(optimizer_options or {}))
    sched = make_schedule(schedule, opt, steps)
    generator = torch.Generator(device=state.x.device).manual_seed(seed)
    history: dict[str, Any] = {
        "objective": [],
        "terms": {},
        "label_history": [(0, state.y.clone())],
        "records": {"steps": [], "x": [], "y": []},
    }
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    functional.reset()
    if resume:
        if not ckpt_path.exists():
            raise InvalidArgumentError(f"resume=True but no checkpoint at {ckpt_path}.")
        saved = _load_checkpoint(ckpt_path)
        with torch.no_grad():
            for name, tensor, _ in state.parameters():
                tensor.copy_(saved["params"][name].to(tensor.device))
        state.y = saved["y"].to(state.x.device)
        state.classes = tuple(saved["classes"])
        state.step = int(saved["step"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        functional.load_state_dict(saved.get("functional", {}))
        history = saved["history"]
    if trajectory_dir is not None:
        Path(trajectory_dir).mkdir(parents=True, exist_ok=True)

    def record() -> None:
        records = history["records"]
        if records["steps"] and records["steps"][-1] == state.step:
            return
        x_now, y_now = state.x.detach().cpu().clone(), state.y.cpu().clone()
        records["steps"].append(state.step)
        if trajectory_dir is not None:
            np.savez(Path(trajectory_dir) / f"step_{state.step:08d}.npz", x=x_now.numpy(), y=y_now.numpy())
        else:
            records["x"].append(x_now)
            records["y"].append(y_now)

    if record_every is not None and not history["records"]["steps"]:
        record()
    noise = functional.noise()
    stopped = "steps"

    def diverged(reason: str) -> None:
        _diverged(step, reason, state, last_good, opt, sched, generator, history, ckpt_path, functional)

    while state.step < steps:
        step = state.step
        last_good = [t.detach().clone() for t in params]
        opt.zero_grad(set_to_none=True)
        value, terms = _evaluate(functional, state)
        if not bool(torch.isfinite(value.detach())):
            diverged(f"the objective is {float(value.detach())}")
        if value.requires_grad:
            value.backward()
        _wasserstein_gradients(state)
        opt.step()
        if noise > 0.0:
            tau = opt.param_groups[0]["lr"]
            with torch.no_grad():
                state.x.add_(
                    math.sqrt(2.0 * tau * noise)
                    * torch.randn(state.x.shape, generator=generator, device=state.x.device, dtype=state.x.dtype)
                )
        if not _finite(state):
            diverged("a parameter became NaN/Inf after the update")
        sched.step()
        labels_before = state.y
        dyn.after_step(state, step)
        state.step = step + 1
        if not torch.equal(state.y, labels_before):
            history["label_history"].append((state.step, state.y.clone()))
        history["objective"].append(float(value.detach()))
        for key, term in terms.items():
            history["terms"].setdefault(key, []).append(term)
        if record_every is not None and (state.step % record_every == 0 or state.step == steps):
            record()
        info = {"objective": history["objective"][-1], "terms": terms, "step_size": opt.param_groups[0]["lr"]}
        stop = any(bool(cb(state.step, state, info)) for cb in callbacks)
        if checkpoint_every is not None and (state.step % checkpoint_every == 0 or state.step == steps):
            _save_checkpoint(ckpt_path, state, opt, sched, generator, history, functional)
        if stop:
            stopped = "callback"
            break
        objective = history["objective"]
        if (
            tol is not None
            and len(objective) >= 2
            and abs(objective[-1] - objective[-2]) <= tol * max(1.0, abs(objective[-2]))
        ):
            stopped = "tol"
            break
    if record_every is not None:
        record()
    if checkpoint_every is not None and stopped != "steps":
        _save_checkpoint(ckpt_path, state, opt, sched, generator, history, functional)

    records = history["records"]
    trajectory = None
    if record_every is not None:
        trajectory = Trajectory(
            steps=tuple(records["steps"]),
            feature_shape=state.feature_shape,
            positions=tuple(records["x"]),
            labels=tuple(records["y"]),
            directory=None if trajectory_dir is None else str(trajectory_dir),
        )
    final = state.dataset()
    final = final.with_features(state.x.detach().clone())
    return FlowResult(
        final=final,
        objective=list(history["objective"]),
        terms={k: list(v) for k, v in history["terms"].items()},
        steps=state.step,
        stopped=stopped,
        trajectory=trajectory,
        label_history=list(history["label_history"]),
        classes=state.classes,
        seconds=time.perf_counter() - start_time,
        config={
            "functional": repr(functional),
            "dynamics": dyn.config(),
            "optimizer": optimizer,
            "step_size": step_size,
            "schedule": schedule,
            "steps": steps,
            "tol": tol,
            "seed": seed,
            "noise": noise,
        },
    )


def _diverged(step, reason, state, last_good, opt, sched, generator, history, ckpt_path, functional) -> None:
    """Restore the last good parameters, save them if possible, and raise."""
    with torch.no_grad():
        for tensor, good in zip(state.parameters(), last_good, strict=True):
            tensor[1].copy_(good)
    saved = None
    if ckpt_path is not None:
        _save_checkpoint(ckpt_path, state, opt, sched, generator, history, functional)
        saved = str(ckpt_path)
    where = (
        f"; the last good state (step {step}) was saved to {saved}"
        if saved
        else ("; pass checkpoint_dir to keep the last good state")
    )
    raise FlowDivergedError(f"flow diverged at step {step}: {reason}{where}. Try a smaller step_size.", step, saved)
