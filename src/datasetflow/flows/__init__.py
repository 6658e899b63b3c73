"""Particle gradient flows: the integrator, its state, dynamics, optimizers, callbacks, checkpoints and results."""

from . import callbacks, checkpoint, dynamics, loop, optimizers, result, state
from .callbacks import *  # noqa: F403
from .checkpoint import *  # noqa: F403
from .dynamics import *  # noqa: F403
from .loop import *  # noqa: F403
from .optimizers import *  # noqa: F403
from .result import *  # noqa: F403
from .state import *  # noqa: F403

__all__ = [
    *callbacks.__all__,
    *checkpoint.__all__,
    *dynamics.__all__,
    *loop.__all__,
    *optimizers.__all__,
    *result.__all__,
    *state.__all__,
]
