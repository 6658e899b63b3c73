"""datasetflow: optimal-transport distances and gradient flows of labeled datasets.

Layers (imports run one way): ``data -> costs -> solvers -> distances -> (functionals,
flows) -> (cli, viz, experiments)``.
"""

from . import errors
from .costs import CostOperator, DenseCost, OTDDCost
from .data import ClassStats, LabeledDataset, load_dataset, load_npz
from .distances import (
    ExactLabelCost,
    GaussianLabelCost,
    LabelCost,
    OTDDResult,
    SinkhornLabelCost,
    otdd,
)
from .errors import DatasetflowError
from .solvers import OTResult, solve

__version__ = "0.1.0"

__all__ = [
    "LabeledDataset",
    "ClassStats",
    "load_dataset",
    "load_npz",
    "CostOperator",
    "DenseCost",
    "OTDDCost",
    "solve",
    "OTResult",
    "otdd",
    "OTDDResult",
    "LabelCost",
    "GaussianLabelCost",
    "ExactLabelCost",
    "SinkhornLabelCost",
    "DatasetflowError",
    "errors",
    "__version__",
]
