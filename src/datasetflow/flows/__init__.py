"""Particle gradient flows: the integrator, dynamics, optimizers, checkpoints and results."""

from ..functionals.state import FlowState
from .dynamics import DYNAMICS, Dynamics, FeatureDriven, JointFixedLabel, JointVariableLabel, get_dynamics
from .loop import FlowDivergedError, run_flow
from .optimizers import OPTIMIZERS, SCHEDULES
from .result import FlowResult, Trajectory

__all__ = [
    "run_flow",
    "FlowResult",
    "Trajectory",
    "FlowState",
    "FlowDivergedError",
    "Dynamics",
    "FeatureDriven",
    "JointFixedLabel",
    "JointVariableLabel",
    "DYNAMICS",
    "OPTIMIZERS",
    "SCHEDULES",
    "get_dynamics",
]
