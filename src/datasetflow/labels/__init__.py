"""The labels layer: class-to-class costs, kernels between classes, class matching and pseudo-labels.

* :mod:`~datasetflow.labels.costs`: the one :class:`LabelCost` protocol (``summarize`` a dataset's
  classes, compare two summaries with ``pairwise``) and its Gaussian (Bures), exact, Sinkhorn and
  sliced implementations.
* :mod:`~datasetflow.labels.kernels`: kernels between distributions as functions of their distance.
* :mod:`~datasetflow.labels.matching`: an OT coupling between label sets and a one-to-one assignment.
* :mod:`~datasetflow.labels.pseudo`: k-means pseudo-labels for unlabeled data, named after reference classes.
"""

from .costs import (
    LABEL_COST_ALIASES,
    LABEL_COSTS,
    ClassClouds,
    ClassQuantiles,
    ExactLabelCost,
    GaussianLabelCost,
    LabelCost,
    SinkhornLabelCost,
    SlicedLabelCost,
    class_sliced_wasserstein,
    get_label_cost,
    label_cost_names,
)
from .kernels import KERNELS, SWKernel, get_kernel
from .matching import (
    assign_one_to_one,
    class_correspondence,
    class_coupling,
    label_distance_matrix,
    match_classes,
)
from .pseudo import align_pseudo_labels, embed, pseudo_labels

__all__ = [
    "LabelCost",
    "GaussianLabelCost",
    "ExactLabelCost",
    "SinkhornLabelCost",
    "SlicedLabelCost",
    "ClassClouds",
    "ClassQuantiles",
    "LABEL_COSTS",
    "LABEL_COST_ALIASES",
    "get_label_cost",
    "label_cost_names",
    "class_sliced_wasserstein",
    "SWKernel",
    "KERNELS",
    "get_kernel",
    "class_coupling",
    "assign_one_to_one",
    "label_distance_matrix",
    "class_correspondence",
    "match_classes",
    "pseudo_labels",
    "align_pseudo_labels",
    "embed",
]
