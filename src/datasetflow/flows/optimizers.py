"""Step schemes of the flow integrator (Euler / momentum / Adam) and step-size schedules."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import InvalidArgumentError

__all__ = ["OPTIMIZERS", "SCHEDULES", "make_optimizer", "make_schedule"]

#: name -> (torch optimizer class, default options). "sgd" is the forward Euler scheme of the
#: particle ODE; "momentum" is heavy-ball Euler; "adam" rescales per coordinate.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict]] = {
    "sgd": (torch.optim.SGD, {}),
    "momentum": (torch.optim.SGD, {"momentum": 0.9}),
    "adam": (torch.optim.Adam, {}),
}

SCHEDULES = ("constant", "cosine", "exponential", "step")


def make_optimizer(name: str, params: Sequence[torch.Tensor], step_size: float, **options) -> torch.optim.Optimizer:
    """A torch optimizer over ``params`` with learning rate ``step_size`` (the time step ``tau``)."""
    if name not in OPTIMIZERS:
        raise InvalidArgumentError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {name!r}.")
    if (
        isinstance(step_size, bool)
        or not isinstance(step_size, (int, float))
        or not math.isfinite(step_size)
        or step_size <= 0
    ):
        raise InvalidArgumentError(f"step_size must be a positive finite float, got {step_size!r}.")
    cls, defaults = OPTIMIZERS[name]
    try:
        return cls(list(params), lr=float(step_size), **{**defaults, **options})
    except TypeError as exc:
        raise InvalidArgumentError(f"invalid options {options!r} for optimizer {name!r}: {exc}") from None


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, steps: int, *, gamma: float = 0.999, step_every: int = 100
) -> torch.optim.lr_scheduler.LRScheduler:
    """A step-size schedule: ``constant``, ``cosine`` (to 0 over ``steps``), ``exponential``
    (times ``gamma`` per step) or ``step`` (times ``gamma`` every ``step_every`` steps)."""
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    if name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_every, gamma=gamma)
    raise InvalidArgumentError(f"schedule must be one of {SCHEDULES}, got {name!r}.")
