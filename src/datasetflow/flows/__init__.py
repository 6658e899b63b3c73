"""Particle gradient flows: the integrator, its state, dynamics, optimizers, callbacks, checkpoints and results."""

from .callbacks import (
    Checkpointer,
    DivergenceGuard,
    FlowCallback,
    FunctionCallback,
    Recorder,
    ToleranceStop,
)
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from .dynamics import DYNAMICS, Dynamics, FeatureDriven, JointFixedLabel, JointVariableLabel, get_dynamics
from .loop import Flow, FlowDivergedError, run_flow
from .optimizers import OPTIMIZERS, SCHEDULES
from .result import FlowResult, Trajectory
from .state import FlowState

__all__ = [
    "run_flow",
    "Flow",
    "FlowResult",
    "Trajectory",
    "FlowState",
    "FlowDivergedError",
    "FlowCallback",
    "FunctionCallback",
    "Recorder",
    "Checkpointer",
    "ToleranceStop",
    "DivergenceGuard",
    "CHECKPOINT_NAME",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "Dynamics",
    "FeatureDriven",
    "JointFixedLabel",
    "JointVariableLabel",
    "DYNAMICS",
    "OPTIMIZERS",
    "SCHEDULES",
    "get_dynamics",
]
