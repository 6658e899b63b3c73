"""The labels layer: class-to-class costs, kernels between classes, class matching and pseudo-labels.

* :mod:`~datasetflow.labels.costs`: the one :class:`LabelCost` protocol (``summarize`` a dataset's
  classes, compare two summaries with ``pairwise``) and its Gaussian (Bures), exact, Sinkhorn and
  sliced implementations.
* :mod:`~datasetflow.labels.kernels`: kernels between distributions as functions of their distance.
* :mod:`~datasetflow.labels.matching`: an OT coupling between label sets and a one-to-one assignment.
* :mod:`~datasetflow.labels.matching`: also the one-to-one clustering accuracy (and the labelled many-to-one score).
* :mod:`~datasetflow.labels.embeddings`: HOG, autoencoder and UMAP embeddings for pseudo-labels.
* :mod:`~datasetflow.labels.pseudo`: k-means / GMM pseudo-labels for unlabeled data, named after reference classes.
"""

from . import costs, embeddings, kernels, matching, pseudo
from .costs import *  # noqa: F403
from .embeddings import *  # noqa: F403
from .kernels import *  # noqa: F403
from .matching import *  # noqa: F403
from .pseudo import *  # noqa: F403

__all__ = [*costs.__all__, *embeddings.__all__, *kernels.__all__, *matching.__all__, *pseudo.__all__]
