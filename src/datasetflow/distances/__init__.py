"""Dataset distances built on the solvers: label costs and the OTDD."""

from .kernels import KERNELS, SWKernel, get_kernel
from .label_costs import (
    DEFAULT_RELATIVE_REG,
    ExactLabelCost,
    GaussianLabelCost,
    LabelCost,
    SinkhornLabelCost,
    get_label_cost,
)
from .mmd import class_masses, mmd_sw
from .otdd import OTDDResult, otdd
from .sliced import class_sliced_wasserstein, draw_directions, sliced_wasserstein
from .wow import WOW_GROUND_COSTS, WoWResult, wow

__all__ = [
    "otdd",
    "OTDDResult",
    "LabelCost",
    "GaussianLabelCost",
    "ExactLabelCost",
    "SinkhornLabelCost",
    "get_label_cost",
    "DEFAULT_RELATIVE_REG",
    "sliced_wasserstein",
    "class_sliced_wasserstein",
    "draw_directions",
    "SWKernel",
    "KERNELS",
    "get_kernel",
    "mmd_sw",
    "class_masses",
    "wow",
    "WoWResult",
    "WOW_GROUND_COSTS",
]
