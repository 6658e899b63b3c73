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
    SWKernel,
    WoWResult,
    class_sliced_wasserstein,
    mmd_sw,
    otdd,
    sliced_wasserstein,
    wow,
)
from .errors import DatasetflowError
from .flows import FlowResult, run_flow
from .functionals import (
    Functional,
    ball_constraint,
    class_repulsion,
    collapse,
    entropy,
    hyperplane_margin,
    interaction,
    mmd_sw_to,
    norm_potential,
    otdd_to,
    potential,
    quadratic_repulsion,
)
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
    "sliced_wasserstein",
    "class_sliced_wasserstein",
    "SWKernel",
    "mmd_sw",
    "wow",
    "WoWResult",
    "mmd_sw_to",
    "DatasetflowError",
    "run_flow",
    "FlowResult",
    "Functional",
    "otdd_to",
    "potential",
    "interaction",
    "entropy",
    "norm_potential",
    "hyperplane_margin",
    "ball_constraint",
    "collapse",
    "class_repulsion",
    "quadratic_repulsion",
    "errors",
    "__version__",
]
