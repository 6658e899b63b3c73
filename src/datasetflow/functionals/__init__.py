"""Functionals of labeled datasets that flows minimise; they add and scale."""

from . import base, config, energies, mmd_sw, otdd_target, sliced
from .base import *  # noqa: F403
from .config import *  # noqa: F403
from .energies import *  # noqa: F403
from .mmd_sw import *  # noqa: F403
from .otdd_target import *  # noqa: F403
from .sliced import *  # noqa: F403

__all__ = [*base.__all__, *config.__all__, *energies.__all__, *mmd_sw.__all__, *otdd_target.__all__, *sliced.__all__]
