"""Learning components of the paper's image experiments (§6.3, §6.4, §7.2, §7.3, App. C).

* :class:`LeNet5` and :func:`train_classifier`: the classifier; :func:`predict`, :func:`accuracy`
  and :class:`FrozenClassifier` query a trained one as a fixed oracle.
* :func:`class_correspondence` and :class:`CorrespondenceHead`: a ``(k', k)`` coupling between the
  classes of the flow's source (rows) and the classifier's training classes (columns), stacked on a
  frozen classifier to predict the source's ``k'`` classes; :func:`match_classes` for hard matchings.
* :func:`pseudo_labels` and :func:`align_pseudo_labels`: k-means labels for unlabeled data, renamed
  after a reference dataset's classes.
* :class:`PushForwardMap`: the learned push-forward :math:`\\hat h \\approx h_\\text{flow}: x_0 \\mapsto x_T`.

scikit-learn (clustering) and tqdm (progress bars) are imported only when used.
"""

from .classifier import CorrespondenceHead, FrozenClassifier, accuracy, predict
from .correspondence import class_correspondence, label_distance_matrix, match_classes
from .lenet import MNIST_CLASSES, LeNet5, pretrained_mnist_lenet5, train_classifier
from .pseudo_labels import align_pseudo_labels, embed, pseudo_labels
from .push_forward import PushForwardMap
from .repurpose import RepurposeResult, repurpose

__all__ = [
    "LeNet5",
    "train_classifier",
    "pretrained_mnist_lenet5",
    "MNIST_CLASSES",
    "predict",
    "accuracy",
    "FrozenClassifier",
    "class_correspondence",
    "label_distance_matrix",
    "CorrespondenceHead",
    "match_classes",
    "pseudo_labels",
    "align_pseudo_labels",
    "embed",
    "PushForwardMap",
    "repurpose",
    "RepurposeResult",
]
