"""datasetflow: optimal-transport distances and gradient flows of labeled datasets.

The package is layered; imports run one way. The order, and what each layer holds, is written
once, in ``docs/architecture.md`` (a test reads it).
"""

from . import errors
from .costs import CostOperator, DenseCost, OTDDCost
from .data import ClassStats, LabeledDataset, load_dataset, load_npz
from .distances import (
    DistanceMatrixResult,
    OTDDResult,
    SlicedResult,
    WoWResult,
    busemann,
    distance_matrix,
    mmd_sw,
    otdd,
    sotdd,
    wow,
)
from .errors import DatasetflowError
from .flows import FlowResult, run_flow
from .functionals import Functional, busemann_to, energies, from_config, mmd_sw_to, otdd_to, sotdd_to
from .functionals.energies import *  # noqa: F403 - potentials, interactions and entropy
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
    "sotdd",
    "busemann",
    "distance_matrix",
    "SlicedResult",
    "DistanceMatrixResult",
    "mmd_sw_to",
    "DatasetflowError",
    "run_flow",
    "FlowResult",
    "Functional",
    "from_config",
    "otdd_to",
    "sotdd_to",
    "busemann_to",
    *energies.__all__,
    "errors",
    "__version__",
]
del energies
