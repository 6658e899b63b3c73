"""datasetflow: optimal-transport distances and gradient flows of labeled datasets.

The package is layered; imports run one way. The order, and what each layer holds, is written
once, in ``docs/architecture.md`` (a test reads it).
"""

from . import errors
from .costs import CostOperator, DenseCost, OTDDCost
from .data import ClassStats, LabeledDataset, load_dataset, load_npz
from .distances import OTDDResult, WoWResult, mmd_sw, otdd, wow
from .errors import DatasetflowError
from .flows import FlowResult, run_flow
from .functionals import (
    Functional,
    ball_constraint,
    class_repulsion,
    collapse,
    entropy,
    from_config,
    hyperplane_margin,
    interaction,
    mmd_sw_to,
    norm_potential,
    otdd_to,
    potential,
    quadratic_repulsion,
)
from .labels import (
    ExactLabelCost,
    GaussianLabelCost,
    LabelCost,
    SinkhornLabelCost,
    SlicedLabelCost,
    SWKernel,
    class_sliced_wasserstein,
    get_label_cost,
)
from .solvers import OTResult, solve
from .solvers.sliced import sliced_wasserstein

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
    "SlicedLabelCost",
    "get_label_cost",
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
    "from_config",
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
