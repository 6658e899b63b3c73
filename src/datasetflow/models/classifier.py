r"""Querying trained classifiers: frozen wrappers, the class-correspondence head, predictions and accuracy.

A *predictor* is any callable mapping a batch of flat features ``(b, d)`` to class scores
``(b, k)`` (logits or probabilities): an ``nn.Module`` such as :class:`~datasetflow.models.lenet.LeNet5`,
a :class:`FrozenClassifier`, a :class:`CorrespondenceHead`, or a black-box function. Output
index ``j`` stands for the ``j``-th class of the dataset the classifier was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import nn

from ..data.dataset import LabeledDataset, features_of
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..utils import batched, check_choice, check_matrix, module_placement

__all__ = ["FrozenClassifier", "CorrespondenceHead", "predict", "accuracy", "MODEL_OUTPUTS"]

MODEL_OUTPUTS = ("logits", "probs")

Predictor = Callable[[torch.Tensor], torch.Tensor]


class FrozenClassifier(nn.Module):
    """A trained classifier used as a fixed oracle (paper §7.3): evaluation mode, no trainable parameters.

    Freezing sets ``requires_grad=False`` on every parameter of ``model`` (in place) and keeps it in
    evaluation mode even if ``.train()`` is called on the wrapper. Gradients still flow to the
    *inputs*, so the frozen classifier can drive a flow.

    Args:
        model: an ``nn.Module`` mapping features ``(b, d)`` (or images) to scores ``(b, k)``.

    Shapes:
        ``forward(x)``: ``(b, d)`` → ``(b, k)``, the wrapped model's scores unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(f"model must be a torch nn.Module, got {type(model).__name__}.")
        self.model = model.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FrozenClassifier:
        """Kept in evaluation mode whatever ``mode`` is (a frozen model has no training behaviour)."""
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.model(x)


def _transition(coupling: Any) -> torch.Tensor:
    r"""The ``(k, k')`` row-stochastic :math:`T_{ji} = \pi_{ij} / \sum_{i'} \pi_{i'j}` of a ``(k', k)`` coupling."""
    pi = check_matrix("coupling", coupling)
    if bool((pi < 0).any()):
        raise InvalidArgumentError("coupling must be non-negative.")
    mass = pi.sum(0)
    if bool((mass <= 0).any()):
        empty = torch.nonzero(mass <= 0).flatten().tolist()
        raise InvalidArgumentError(
            f"coupling columns {empty} (classifier classes) carry no mass: every classifier class needs "
            "a positive total in the coupling."
        )
    return (pi / mass).T.contiguous()


class CorrespondenceHead(nn.Module):
    r"""A frozen ``k``-class classifier re-read as a ``k'``-class one through a class coupling (paper §6.4).

    The classifier was trained on a dataset :math:`A` with ``k`` classes; the flow starts from a
    dataset with ``k'`` classes (the *source* of :func:`~datasetflow.labels.matching.class_correspondence`,
    whose coupling :math:`\pi` is ``(k', k)``: rows are the flow-source classes, columns the classifier's
    classes, :math:`\pi_{ij}` the mass that source class ``i`` sends to classifier class ``j``).

    For a sample, the classifier gives probabilities :math:`p \in \Delta_k` over its own classes;
    the head returns :math:`q \in \Delta_{k'}`,

    .. math:: q_i = \sum_{j=1}^{k} p_j\, \frac{\pi_{ij}}{\sum_{i'} \pi_{i'j}},
              \qquad q = p\, T,\quad T = \mathrm{rownorm}(\pi^\top),

    i.e. classifier class ``j`` votes for the source classes in proportion to the conditional
    :math:`\pi(i \mid j)`. For a permutation coupling, ``argmax q`` is the source class matched to
    ``argmax p``. ``T`` is a buffer, so the head moves with ``.to(device)``.

    Args:
        model: the classifier, an ``nn.Module`` (frozen here with :class:`FrozenClassifier` unless it
            already is one) or a callable ``(b, d) -> (b, k)``.
        coupling: ``(k', k)`` non-negative coupling; every column needs positive mass.
        model_output: ``"logits"`` (default; a softmax gives ``p``) or ``"probs"`` (the model already
            returns probabilities).
        freeze: wrap an ``nn.Module`` in :class:`FrozenClassifier` (default; this sets
            ``requires_grad=False`` on its parameters in place).

    Shapes:
        ``forward(x)``: ``(b, d)`` → ``(b, k')`` probabilities (rows sum to 1).
    """

    def __init__(
        self,
        model: nn.Module | Predictor,
        coupling: torch.Tensor,
        *,
        model_output: str = "logits",
        freeze: bool = True,
    ) -> None:
        super().__init__()
        if freeze and isinstance(model, nn.Module) and not isinstance(model, (FrozenClassifier, CorrespondenceHead)):
            model = FrozenClassifier(model)
        elif not callable(model):
            raise InvalidArgumentError(f"model must be an nn.Module or a callable, got {type(model).__name__}.")
        self.model = model
        self.model_output = check_choice("model_output", model_output, MODEL_OUTPUTS)
        self.register_buffer("transition", _transition(coupling))

    @property
    def num_classes(self) -> int:
        """``k'``, the number of output classes."""
        return self.transition.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        scores = self.model(x)
        k = self.transition.shape[0]
        if scores.ndim != 2 or scores.shape[1] != k:
            raise ShapeMismatchError(
                f"the classifier returned scores of shape {tuple(scores.shape)} but the coupling has {k} columns "
                f"(classifier classes); expected ({x.shape[0]}, {k})."
            )
        probs = scores.softmax(1) if self.model_output == "logits" else scores
        return probs @ self.transition.to(device=probs.device, dtype=probs.dtype)


def predict(
    model: nn.Module | Predictor, x_or_dataset: torch.Tensor | LabeledDataset, batch_size: int = 1024
) -> torch.Tensor:
    r"""Predicted class indices :math:`\hat y_i = \arg\max_j s_j(x_i)` of a classifier.

    Args:
        model: an ``nn.Module`` or callable mapping ``(b, d)`` features to ``(b, k)`` scores. Modules
            are evaluated in eval mode (restored afterwards) on their own device and dtype.
        x_or_dataset: ``(n, d)`` features (or ``(n, *feature_shape)``), or a :class:`LabeledDataset`.
        batch_size: rows per forward pass.

    Returns:
        ``(n,)`` long tensor of output indices in ``0..k-1``, on the device of the input.
    """
    x, _ = features_of(x_or_dataset)
    device, dtype = module_placement(model, x)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        labels = batched(lambda b: model(b.to(device=device, dtype=dtype)).argmax(1), x, batch_size)
    finally:
        if was_training:
            model.train()
    return labels.to(x.device)


def accuracy(
    model: nn.Module | Predictor,
    dataset: LabeledDataset,
    *,
    correspondence: torch.Tensor | None = None,
    target_classes: Sequence[Hashable] | None = None,
    batch_size: int = 1024,
) -> float:
    r"""Fraction of the samples of ``dataset`` that ``model`` classifies correctly.

    .. math:: \mathrm{acc} = \frac1n \sum_{i=1}^n \mathbf 1[\mathrm{name}(\hat y_i) = \mathrm{classes}[y_i]]

    Every sample counts once (``dataset.weights`` are not used).

    Args:
        model: a predictor, ``(b, d) -> (b, k)`` scores.
        dataset: the labeled samples to classify.
        correspondence: optional ``(k', k)`` coupling between ``dataset``'s classes (rows) and the
            model's ``k`` classes (columns); the model is then read through :class:`CorrespondenceHead`
            and predicts ``k'`` classes.
        target_classes: names of the model's outputs (output ``j`` is ``target_classes[j]``); labels
            are then compared by name (classes of ``dataset`` absent from it are always wrong). By
            default output ``j`` is ``dataset.classes[j]`` (compared by index).
        batch_size: rows per forward pass.

    Returns:
        A float in ``[0, 1]``.
    """
    if not isinstance(dataset, LabeledDataset):
        raise InvalidArgumentError(f"dataset must be a LabeledDataset, got {type(dataset).__name__}.")
    predictor = model if correspondence is None else CorrespondenceHead(model, correspondence, freeze=False)
    predicted = predict(predictor, dataset.x, batch_size)
    expected = dataset.y
    if target_classes is not None:
        names = {name: j for j, name in enumerate(target_classes)}
        lookup = torch.as_tensor([names.get(c, -1) for c in dataset.classes], dtype=torch.long, device=expected.device)
        expected = lookup[expected]
    return float((predicted == expected).double().mean())
