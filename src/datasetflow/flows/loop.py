r"""The flow integrator: particles follow the Wasserstein gradient flow of a functional.

With particles :math:`\rho_N = \sum_i w_i \delta_{z_i}`, the gradient of :math:`F(\rho_N)`
with respect to :math:`z_i` is :math:`w_i \nabla \frac{\delta F}{\delta\rho}(z_i)`; dividing by
the mass :math:`w_i` gives the Wasserstein gradient, the particle velocity of
:math:`\partial_t\rho = \nabla\cdot(\rho \nabla \frac{\delta F}{\delta \rho})` (paper eqs. 14-17).
That rescaling happens in exactly one place, :meth:`Flow.rescale`; the optimizer (Euler,
momentum or Adam) then takes the step, and an entropy term adds the Euler-Maruyama noise
:math:`\sqrt{2\tau\sigma}\,\xi`.

After every step, particle coordinates that became *subnormal* (:math:`0 < |z| <` ``finfo.tiny``, about
:math:`10^{-38}` in float32) are set to 0 (:func:`~datasetflow.utils.flush_subnormals_`). They arise where a
coordinate decays geometrically towards a zero of the target (image backgrounds), and CPU arithmetic on them is
slow: measured on the paper-size re-purposing flow after 300 steps (16 % of the coordinates subnormal), a
250 x 784 minibatch GEMM took 21x longer than on the flushed features. The change is below the resolution of any
value the flow computes.

The integrator only evaluates, rescales, steps and notifies. Everything else is a callback
(:mod:`~datasetflow.flows.callbacks`): recording trajectories, checkpoints and exact resume,
stopping rules, divergence detection and progress bars.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.dataset import LabeledDataset
from ..distributed.comm import all_gather_object, all_reduce_max, all_reduce_sum, get_world, heartbeat
from ..errors import DivergenceError, InvalidArgumentError
from ..functionals.base import Functional
from ..utils import deterministic as deterministic_algorithms
from ..utils import flush_subnormals_
from .callbacks import Checkpointer, DivergenceGuard, FlowCallback, Recorder, ToleranceStop, as_callback
from .dynamics import Dynamics, get_dynamics
from .optimizers import make_optimizer, make_schedule
from .result import FlowResult
from .state import FlowState

__all__ = ["run_flow", "Flow", "FlowDivergedError"]


class FlowDivergedError(DivergenceError):
    """The flow diverged (NaN/Inf, or an objective that runs away); the last good state was kept.

    Attributes:
        step: the step at which divergence was detected.
        checkpoint: path of the checkpoint holding the last good state (None without checkpoints).
        result: the :class:`FlowResult` up to divergence, with the last good particles as ``final``
            and ``stopped == "diverged"``.
    """

    def __init__(self, message: str, step: int, checkpoint: str | None, result: FlowResult | None = None) -> None:
        super().__init__(message)
        self.step, self.checkpoint, self.result = step, checkpoint, result


class Flow:
    """A running flow: the state, the step scheme and the history that callbacks read and checkpoint.

    Attributes:
        state: the :class:`~datasetflow.flows.state.FlowState` (particles and label parameters).
        functional, dynamics, optimizer, scheduler: what moves the state.
        generator: the seeded generator of the entropy noise.
        steps: the total number of steps asked for.
        history: ``objective`` and ``terms`` per step, ``label_history`` (changes of the labels).
        info: the last step's ``objective``, ``terms`` and ``step_size``.
        outputs: what callbacks contribute to the result (e.g. ``trajectory``).
        config: the settings that produced the flow (checked on resume).
        stopped: why the flow stopped (``steps``, ``tol``, ``callback``, ``diverged``, ...).
    """

    def __init__(
        self,
        functional: Functional,
        state: FlowState,
        dynamics: Dynamics,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        *,
        steps: int,
        seed: int,
        config: dict[str, Any],
    ) -> None:
        self.functional, self.state, self.dynamics = functional, state, dynamics
        self.optimizer, self.scheduler, self.steps, self.config = optimizer, scheduler, steps, config
        self.world = state.world
        # each rank draws its own shard's noise (the streams differ from the single-process one)
        self.generator = torch.Generator(device=state.x.device).manual_seed(seed + 1_000_003 * self.world.rank)
        self.noise = functional.noise()
        self.history: dict[str, Any] = {"objective": [], "terms": {}, "label_history": [(0, state.y.clone())]}
        self.info: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.stopped = "steps"
        self.seconds_before = 0.0  # wall time of the earlier runs of a resumed flow
        self.resumed_from: int | None = None
        self.params_before: list[torch.Tensor] = []
        self.labels_before: tuple[torch.Tensor, tuple] = (state.y, state.classes)
        self.restored_step: int | None = None
        self.restored_value = math.inf

    # ------------------------------------------------------------------ one step
    def evaluate(self) -> tuple[torch.Tensor, dict[str, float]]:
        """Total objective and the weighted value of every term, in one evaluation of each leaf."""
        state = self.state
        total = torch.zeros((), dtype=state.x.dtype, device=state.x.device)
        terms: dict[str, float] = {}
        for name, weight, leaf in self.functional.terms():
            if weight == 0.0:
                continue
            value = leaf.value(state)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise InvalidArgumentError(
                    f"functional term {name!r} ({type(leaf).__name__}) must return a scalar tensor, got {shape}."
                )
            value = weight * value.reshape(())
            key, suffix = name, 2
            while key in terms:
                key, suffix = f"{name}_{suffix}", suffix + 1
            terms[key] = float(value.detach())
            total = total + value
        return total, terms

    def rescale(self) -> None:
        """Turn particle gradients into Wasserstein gradients: divide each by its mass (the one place)."""
        for _, tensor, mass in self.state.parameters():
            if tensor.grad is not None:
                tensor.grad.div_(mass.clamp_min(torch.finfo(mass.dtype).tiny))

    def step(self) -> None:
        """Evaluate, rescale, take the optimizer step (plus noise), let the dynamics act, log."""
        state = self.state
        params = [t for _, t, _ in state.parameters()]
        self.params_before = [t.detach().clone() for t in params]
        self.labels_before = (state.y, state.classes)
        self.optimizer.zero_grad(set_to_none=True)
        value, terms = self.evaluate()
        if not bool(torch.isfinite(value.detach())):
            raise DivergenceError(f"the objective is {float(value.detach())}")
        if value.requires_grad:
            value.backward()
        self.rescale()
        self.optimizer.step()
        if self.noise > 0.0:
            tau = self.optimizer.param_groups[0]["lr"]
            with torch.no_grad():
                state.x.add_(
                    math.sqrt(2.0 * tau * self.noise)
                    * torch.randn(state.x.shape, generator=self.generator, device=state.x.device, dtype=state.x.dtype)
                )
        for tensor in params:
            flush_subnormals_(tensor)
        bad = not all(bool(torch.isfinite(t).all()) for t in params)
        if self.world.distributed:  # every rank must take the same decision
            bad = bool(all_reduce_max(torch.tensor([float(bad)], device=state.x.device), self.world))
        if bad:
            raise DivergenceError("a parameter became NaN/Inf after the update")
        self.scheduler.step()
        labels = state.y
        self.dynamics.after_step(state, state.step)
        state.step += 1
        heartbeat(self.world, state.step)
        if not torch.equal(state.y, labels):
            self.history["label_history"].append((state.step, state.y.clone()))
        self.history["objective"].append(float(value.detach()))
        for key, term in terms.items():
            self.history["terms"].setdefault(key, []).append(term)
        self.info = {
            "objective": self.history["objective"][-1],
            "terms": terms,
            "step_size": self.optimizer.param_groups[0]["lr"],
        }

    def restore(self, params: list[torch.Tensor], labels: tuple[torch.Tensor, tuple], step: int, value: float) -> None:
        """Put back earlier parameters and labels (the last good state of a diverged flow)."""
        with torch.no_grad():
            for (_, tensor, _), good in zip(self.state.parameters(), params, strict=True):
                tensor.copy_(good)
        self.state.y, self.state.classes = labels
        self.restored_step, self.restored_value = step, value

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, plus the settings to check it against."""
        return {
            "step": self.state.step,
            "params": {name: t.detach().cpu() for name, t, _ in self.state.parameters()},
            "y": self.state.y.cpu(),
            "classes": list(self.state.classes),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "functional": self.functional.state_dict(),
            "history": self.history,
            "callbacks": {cb.name: sub for cb in self.callbacks if (sub := cb.state_dict())},
            "config": self.config,
            "seconds": self.seconds_before + (time.perf_counter() - self.start_time),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the checkpoint's settings were checked by the caller)."""
        from .checkpoint import CheckpointError

        state = self.state
        try:
            with torch.no_grad():
                for name, tensor, _ in state.parameters():
                    value = saved["params"][name]
                    if tuple(value.shape) != tuple(tensor.shape):
                        raise CheckpointError(
                            f"the checkpoint's {name} has shape {tuple(value.shape)} but the flow's has "
                            f"{tuple(tensor.shape)}; it was made for other data."
                        )
                    tensor.copy_(value.to(tensor.device))
            state.y = saved["y"].to(state.x.device)
            state.classes = tuple(saved["classes"])
            state.step = int(saved["step"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.generator.set_state(saved["generator"])
            self.functional.load_state_dict(saved.get("functional", {}))
            self.history = saved["history"]
            for cb in self.callbacks:
                cb.load_state_dict(saved.get("callbacks", {}).get(cb.name, {}))
        except KeyError as exc:
            raise CheckpointError(
                f"the checkpoint lacks the entry {exc}; it is incomplete or from another version."
            ) from None
        except (RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"the checkpoint does not fit this flow: {str(exc).splitlines()[0]}") from None
        self.seconds_before = float(saved.get("seconds", 0.0))
        self.resumed_from = state.step

    # ------------------------------------------------------------------ result
    def result(self) -> FlowResult:
        """The :class:`FlowResult` of the flow so far."""
        state = self.state
        return FlowResult(
            final=state.dataset().with_features(state.x.detach().clone()),
            objective=list(self.history["objective"]),
            terms={k: list(v) for k, v in self.history["terms"].items()},
            steps=state.step,
            stopped=self.stopped,
            trajectory=self.outputs.get("trajectory"),
            label_history=list(self.history["label_history"]),
            classes=state.classes,
            seconds=self.seconds_before + (time.perf_counter() - self.start_time),
            config=dict(self.config),
            resumed_from=self.resumed_from,
        )

    def run(self, callbacks: Sequence[FlowCallback]) -> FlowResult:
        """Notify ``on_start``, step until ``steps`` (or a callback stops), notify ``on_end``."""
        self.callbacks = list(callbacks)
        self.start_time = time.perf_counter()
        self.functional.reset()
        for cb in self.callbacks:
            cb.on_start(self)
        try:
            while self.state.step < self.steps:
                self.step()
                reasons = [cb.on_step(self) for cb in self.callbacks]
                stop = next((r for r in reasons if r), None)
                if stop:
                    self.stopped = stop if isinstance(stop, str) else "callback"
                    break
        except DivergenceError as exc:
            self._diverged(exc)
        for cb in self.callbacks:
            cb.on_end(self)
        return self.result()

    def _diverged(self, exc: DivergenceError) -> None:
        step = self.state.step
        if self.params_before:
            value = self.history["objective"][-1] if self.history["objective"] else math.inf
            self.restore(self.params_before, self.labels_before, step, value)
        self.stopped = "diverged"
        for cb in self.callbacks:
            cb.on_diverged(self)
        saved = next((cb.saved_path for cb in self.callbacks if isinstance(cb, Checkpointer)), None)
        kept = step if self.restored_step is None else self.restored_step
        where = (
            f"; the last good state (step {kept}) was saved to {saved}" if saved else "; the last good state was kept"
        )
        raise FlowDivergedError(
            f"flow diverged at step {step}: {exc}{where}. Try a smaller step size.", step, saved, self.result()
        ) from None


def run_flow(
    functional: Functional,
    initial: LabeledDataset,
    *,
    dynamics: str | Dynamics = "fd-fl",
    optimizer: str = "sgd",
    step_size: float = 0.1,
    steps: int = 100,
    schedule: str = "constant",
    seed: int = 0,
    callbacks: Sequence[Any] = (),
    dynamics_options: dict[str, Any] | None = None,
    optimizer_options: dict[str, Any] | None = None,
    tol: float | None = None,
    record_every: int | None = None,
    trajectory_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    divergence: bool | DivergenceGuard = True,
    deterministic: bool = True,
    group: Any = None,
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
        schedule: step-size schedule: ``"constant"``, ``"cosine"`` (its shape depends on ``steps``),
            ``"exponential"``, ``"step"``.
        seed: seed of the entropy noise (and of k-means under jd-vl).
        callbacks: :class:`~datasetflow.flows.callbacks.FlowCallback` objects, or functions
            ``fn(step, state, info)`` (returning True stops the flow), called after every step.
        dynamics_options: options of the named dynamics (e.g. ``{"clustering": "dbscan"}``).
        optimizer_options: extra options of the optimizer (e.g. ``{"momentum": 0.5}``).
        tol: shorthand for a :class:`~datasetflow.flows.callbacks.ToleranceStop`.
        record_every, trajectory_dir: shorthand for a :class:`~datasetflow.flows.callbacks.Recorder`
            (positions every ``record_every`` steps, in memory or streamed to ``trajectory_dir``).
        checkpoint_every, checkpoint_dir, resume: shorthand for a
            :class:`~datasetflow.flows.callbacks.Checkpointer` (``checkpoint_dir/checkpoint.pt``, written
            every ``checkpoint_every`` steps, at the end and on divergence; ``resume`` continues from it,
            bit-identically to an uninterrupted run, after checking the checkpoint's own settings).
        divergence: True (default) adds a :class:`~datasetflow.flows.callbacks.DivergenceGuard` with
            its defaults, False none, or give one. NaN/Inf is always caught.
        deterministic: run with ``torch.use_deterministic_algorithms`` so that repeated runs are
            bit-identical on the same machine and thread count (default True; its cost is measured by
            ``benchmarks/bench_flow.py``).
        group: a ``torch.distributed`` process group (or :class:`~datasetflow.distributed.World`); by
            default the default group when one is initialised. With several ranks, ``initial`` is this
            rank's shard (weights summing to 1 over all ranks, the same ``classes`` everywhere, see
            :func:`~datasetflow.data.sharding.shard`), every term of the functional must support sharding,
            each rank moves its own particles, and checkpoints are written per rank with a manifest
            (:class:`~datasetflow.flows.callbacks.Checkpointer`). fd-fl dynamics only.

    Returns:
        A :class:`FlowResult`.

    Raises:
        InvalidArgumentError: unknown names, non-positive step size or steps, a functional
            returning a non-scalar, ``resume`` without a checkpoint.
        FlowDivergedError: NaN/Inf appeared or the objective ran away; the message names the step,
            the last good state is kept (and saved with checkpoints) and ``exc.result`` holds it.
    """
    if not isinstance(functional, Functional):
        raise InvalidArgumentError(f"functional must be a Functional, got {type(functional).__name__}.")
    if not isinstance(initial, LabeledDataset):
        raise InvalidArgumentError(f"initial must be a LabeledDataset, got {type(initial).__name__}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InvalidArgumentError(f"steps must be a non-negative int, got {steps!r}.")
    if (checkpoint_every or resume) and checkpoint_dir is None:
        raise InvalidArgumentError("checkpoint_every and resume need checkpoint_dir.")
    if trajectory_dir is not None and record_every is None:
        raise InvalidArgumentError("trajectory_dir needs record_every.")
    dyn = get_dynamics(dynamics, **(dynamics_options or {}))
    world = get_world(group)
    particles = int(initial.x.shape[0])
    if world.distributed:
        particles = _check_shards(functional, initial, dyn, world)
    state = dyn.init(initial, seed=seed)
    state.world = world
    params = [t.requires_grad_() for _, t, _ in state.parameters()]
    opt = make_optimizer(optimizer, params, step_size, **(optimizer_options or {}))
    config = {
        "functional": repr(functional),
        "dynamics": dyn.config(),
        "optimizer": optimizer,
        "optimizer_options": dict(optimizer_options or {}),
        "step_size": step_size,
        "schedule": schedule,
        "steps": steps,
        "seed": seed,
        "noise": functional.noise(),
        "particles": [particles, int(initial.dim), str(initial.x.dtype).removeprefix("torch.")],
        "deterministic": bool(deterministic),
        "world_size": world.size,
    }
    flow = Flow(functional, state, dyn, opt, make_schedule(schedule, opt, steps), steps=steps, seed=seed, config=config)
    chain: list[FlowCallback] = []
    if divergence is True:
        chain.append(DivergenceGuard())
    elif isinstance(divergence, DivergenceGuard):
        chain.append(divergence)
    elif divergence is not False:
        raise InvalidArgumentError(f"divergence must be True, False or a DivergenceGuard, got {divergence!r}.")
    if record_every is not None:
        chain.append(Recorder(record_every, trajectory_dir))
    chain += [as_callback(cb) for cb in callbacks]
    if tol is not None:
        chain.append(ToleranceStop(tol))
    if checkpoint_dir is not None:
        chain.append(Checkpointer(checkpoint_dir, checkpoint_every, resume=resume))
    with deterministic_algorithms(deterministic):
        return flow.run(chain)


def _check_shards(functional: Functional, shard: LabeledDataset, dynamics: Dynamics, world: Any) -> int:
    """Check that a sharded flow can run; returns the total number of particles."""
    unsupported = sorted({type(leaf).__name__ for _, _, leaf in functional.terms() if not leaf.supports_sharding})
    if unsupported:
        raise InvalidArgumentError(
            f"the functional terms {unsupported} do not support particles sharded over {world.size} ranks; run them "
            "in one process, or use terms that do (otdd, mmd_sw, sliced distances, potentials, interactions, "
            "entropy)."
        )
    if dynamics.name != "fd-fl":
        raise InvalidArgumentError(f"sharded flows support the fd-fl dynamics only, got {dynamics.name!r}.")
    classes = all_gather_object(shard.classes, world)
    if any(c != classes[0] for c in classes):
        raise InvalidArgumentError(
            "the shards have different classes; build them with datasetflow.data.shard (or shard_local) so that "
            "every rank has the same class list."
        )
    total_mass = float(all_reduce_sum(shard.weights.detach().sum().double().reshape(1), world))
    if abs(total_mass - 1.0) > 1e-6:
        raise InvalidArgumentError(
            f"the shards' weights sum to {total_mass:.6g} over all ranks, not 1: each shard must keep its particles' "
            "global weights (datasetflow.data.shard does)."
        )
    return int(all_reduce_sum(torch.tensor([shard.x.shape[0]], dtype=torch.float64), world))
