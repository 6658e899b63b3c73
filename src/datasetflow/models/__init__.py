"""Learning components of the paper's image experiments (§6.3, §6.4, §7.2, §7.3, App. C).

* :class:`LeNet5` and :func:`train_classifier`: the classifier; :func:`predict`, :func:`accuracy`
  and :class:`FrozenClassifier` query a trained one as a fixed oracle; :class:`CorrespondenceHead`
  reads a frozen ``k``-way classifier through a class coupling (from
  :func:`datasetflow.labels.class_correspondence`) to predict ``k'`` classes.
* :class:`PushForwardMap`: the learned push-forward :math:`\\hat h \\approx h_\\text{flow}: x_0 \\mapsto x_T`.
* :func:`repurpose`: flow a dataset to a frozen classifier's domain and score it before and after.

Class matching and pseudo-labels live in :mod:`datasetflow.labels`. scikit-learn (clustering) and
tqdm (progress bars) are imported only when used.
"""

from .classifier import CorrespondenceHead, FrozenClassifier, accuracy, predict
from .convnet import ConvNet
from .lenet import (
    MNIST_CLASSES,
    Ensemble,
    LeNet5,
    pretrained_mnist_lenet5,
    pretrained_mnist_provenance,
    train_classifier,
)
from .push_forward import PushForwardMap
from .repurpose import RepurposeResult, repurpose

__all__ = [
    "LeNet5",
    "ConvNet",
    "train_classifier",
    "pretrained_mnist_lenet5",
    "pretrained_mnist_provenance",
    "Ensemble",
    "MNIST_CLASSES",
    "predict",
    "accuracy",
    "FrozenClassifier",
    "CorrespondenceHead",
    "PushForwardMap",
    "repurpose",
    "RepurposeResult",
]
