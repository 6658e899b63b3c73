"""Dataset distances built on the solvers: label costs and the OTDD."""

from .label_costs import (
    DEFAULT_RELATIVE_REG,
    ExactLabelCost,
    GaussianLabelCost,
    LabelCost,
    SinkhornLabelCost,
    get_label_cost,
)
from .otdd import OTDDResult, otdd

__all__ = [
    "otdd",
    "OTDDResult",
    "LabelCost",
    "GaussianLabelCost",
    "ExactLabelCost",
    "SinkhornLabelCost",
    "get_label_cost",
    "DEFAULT_RELATIVE_REG",
]
