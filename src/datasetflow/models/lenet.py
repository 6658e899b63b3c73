r"""LeNet-5 and its training loop: the classifier of the paper's image experiments (§7.2, §7.3, App. C).

App. C: "a LeNet-5 architecture with ReLU nonlinearities trained for 20 epochs using ADAM with
learning rate 1e-3 and weight decay 1e-6". :func:`train_classifier` trains it (or any classifier)
on a :class:`~datasetflow.data.LabeledDataset`; output ``j`` of the model is ``dataset.classes[j]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data.dataset import LabeledDataset
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..utils import check_choice, check_positive_int, seeded
from ._utils import (
    image_layout,
    make_optimizer,
    random_affine,
    random_translate,
    resolve_device,
    to_images,
    train_epochs,
)
from .classifier import FrozenClassifier, accuracy, predict

__all__ = [
    "LeNet5",
    "train_classifier",
    "predict",
    "accuracy",
    "FrozenClassifier",
    "pretrained_mnist_lenet5",
    "MNIST_CLASSES",
    "Ensemble",
    "pretrained_mnist_provenance",
    "AUGMENTATIONS",
    "SCHEDULES",
]

#: ``augment`` options of :func:`train_classifier` and its learning-rate ``schedule`` options.
AUGMENTATIONS = ("translate", "affine")
SCHEDULES = ("constant", "onecycle")

#: LeNet-5's native input side; smaller images are zero-padded up to it.
NATIVE_SIZE = 32


class LeNet5(nn.Module):
    r"""LeNet-5 with ReLU and max pooling: conv5(6) → pool2 → conv5(16) → pool2 → fc120 → fc84 → fc(k).

    Images smaller than 32×32 are zero-padded by the first convolution up to 32 (padding 2 for
    MNIST's 28×28, 0 for CIFAR's 32×32); larger ones keep their size and the first fully-connected
    layer grows to match. For ``H, W`` after padding ``P``, the flattened size is
    :math:`16 \cdot \lfloor(\lfloor(H+2P-4)/2\rfloor-4)/2\rfloor \cdot \lfloor(\lfloor(W+2P-4)/2\rfloor-4)/2\rfloor`.

    Args:
        num_classes: number of outputs ``k``.
        in_channels: image channels ``C``.
        image_size: ``S`` for ``S x S`` images, or ``(H, W)``.
        channels_last: how *flat* inputs ``(b, C*H*W)`` are laid out: ``(H, W, C)`` if True, else
            ``(C, H, W)`` (default). 4-d inputs are always ``(b, C, H, W)``.

    Shapes:
        ``forward(x)``: ``(b, C, H, W)`` or flat ``(b, C*H*W)`` → ``(b, k)`` logits.
        ``features(x)``: same inputs → ``(b, 84)`` penultimate embedding (after its ReLU).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 28,
        *,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
            raise InvalidArgumentError(f"image_size must be a positive int or (H, W), got {image_size!r}.")
        padding = max(0, -(-(NATIVE_SIZE - min(size)) // 2))
        side = [((s + 2 * padding - 4) // 2 - 4) // 2 for s in size]
        if min(side) < 1:  # pragma: no cover - padding always brings the side to >= 32
            raise InvalidArgumentError(f"image_size {size} is too small for LeNet-5.")
        self.num_classes = num_classes
        self.image_shape = (in_channels, *size)
        self.channels_last = bool(channels_last)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(16 * side[0] * side[1], 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.head = nn.Linear(84, num_classes)

    @classmethod
    def for_feature_shape(cls, feature_shape: Sequence[int], num_classes: int = 10) -> LeNet5:
        """A LeNet-5 for samples of ``feature_shape`` ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``."""
        (channels, height, width), channels_last = image_layout(feature_shape)
        return cls(num_classes, channels, (height, width), channels_last=channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(b, 84)`` penultimate embedding of ``(b, C, H, W)`` images or flat ``(b, C*H*W)`` features."""
        return self.fc(self.conv(to_images(x, self.image_shape, self.channels_last)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.head(self.features(x))


def train_classifier(
    dataset: LabeledDataset,
    *,
    model: nn.Module | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    augment: bool | str = False,
    validation: LabeledDataset | None = None,
    schedule: str = "constant",
) -> tuple[nn.Module, dict[str, list[float]]]:
    r"""Train a classifier on a labeled dataset by minibatch cross-entropy.

    .. math:: \min_\theta\ \frac1n \sum_{i=1}^n -\log \mathrm{softmax}(f_\theta(x_i))_{y_i}

    Every sample counts once: ``dataset.weights`` are ignored, so a dataset merged from several
    sources (flow particles, trajectories, target samples) is trained on uniformly.

    Args:
        dataset: ``n`` samples with ``feature_shape`` an image shape when ``model`` is None; output
            ``j`` of the trained model is ``dataset.classes[j]``.
        model: the network to train (in place), ``(b, d) -> (b, k)`` with ``k >= dataset.num_classes``;
            default a :class:`LeNet5` for ``dataset.feature_shape``, initialised from ``seed``.
        epochs, batch_size, lr: the usual; App. C uses 20 epochs, lr 1e-3, weight decay 1e-6.
        optimizer: ``"adam"`` (default) or ``"adamw"``.
        weight_decay: L2 penalty (Adam) or decoupled decay (AdamW).
        seed: seeds the initialisation, the batch order and the augmentation.
        device: where to train; default the device of ``dataset.x``.
        progress: show a ``tqdm`` bar over epochs (needs tqdm).
        augment: image datasets only: ``True`` or ``"translate"`` (random translations of up to 2
            pixels), ``"affine"`` (random rotations of up to 10 degrees, scalings in [0.9, 1.1],
            shears up to 0.15 and translations up to 10 % of the side; see ``random_affine``), or
            ``False`` (none).
        schedule: ``"constant"`` (``lr`` throughout) or ``"onecycle"`` (``torch.optim.lr_scheduler.OneCycleLR``
            peaking at ``lr``: a warm-up over the first 30 % of the steps, then cosine annealing).
        validation: optional dataset whose accuracy is recorded after every epoch (labels matched
            by class name to ``dataset.classes``).

    Returns:
        ``(model, history)``: the trained model in eval mode, and ``history`` with per-epoch
        ``"loss"`` and ``"accuracy"`` (on the training batches) and, with ``validation``,
        ``"val_accuracy"``.
    """
    if not isinstance(dataset, LabeledDataset):
        raise InvalidArgumentError(f"dataset must be a LabeledDataset, got {type(dataset).__name__}.")
    if validation is not None and not isinstance(validation, LabeledDataset):
        raise InvalidArgumentError(f"validation must be a LabeledDataset or None, got {type(validation).__name__}.")
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    device = resolve_device(device, dataset.x)
    generator = torch.Generator().manual_seed(seed)
    if model is None:
        with seeded(seed, device):
            model = LeNet5.for_feature_shape(dataset.feature_shape, dataset.num_classes)
    elif not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch nn.Module or None, got {type(model).__name__}.")
    model = model.to(device)
    dtype = next(model.parameters()).dtype
    x = dataset.x.detach().to(device=device, dtype=dtype)
    y = dataset.y.to(device)
    if isinstance(augment, bool):
        augment = "translate" if augment else None
    else:
        check_choice("augment", augment, AUGMENTATIONS)
    check_choice("schedule", schedule, SCHEDULES)
    layout = image_layout(dataset.feature_shape) if augment else None
    with torch.no_grad():
        outputs = model.eval()(x[:1]).shape
    if len(outputs) != 2 or outputs[1] < dataset.num_classes:
        raise ShapeMismatchError(
            f"model outputs shape {tuple(outputs)} for one sample but the dataset has {dataset.num_classes} classes."
        )

    correct = torch.zeros((), device=device)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        nonlocal correct
        inputs = x[idx]
        if layout is not None:
            images = to_images(inputs, *layout)
            if augment == "affine":
                inputs = random_affine(images, generator)
            else:
                inputs = random_translate(images, 2, generator)
        logits = model(inputs)
        correct = correct + (logits.detach().argmax(1) == y[idx]).sum()
        return nn.functional.cross_entropy(logits, y[idx])

    history: dict[str, list[float]] = {"accuracy": []}
    if validation is not None:
        history["val_accuracy"] = []

    def end_epoch(_: int) -> None:
        nonlocal correct
        history["accuracy"].append(float(correct) / len(dataset))
        correct = torch.zeros((), device=device)
        if validation is not None:
            history["val_accuracy"].append(accuracy(model, validation, target_classes=dataset.classes))

    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    scheduler = None
    if schedule == "onecycle":
        per_epoch = -(-len(dataset) // batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch)
    history["loss"] = train_epochs(
        model,
        opt,
        batch_loss,
        len(dataset),
        epochs=epochs,
        batch_size=batch_size,
        generator=generator,
        device=device,
        progress=progress,
        desc="train_classifier",
        end_epoch=end_epoch,
        scheduler=scheduler,
    )
    return model, history


class Ensemble(nn.Module):
    r"""The average of the class probabilities of ``m`` classifiers, returned as log-probabilities.

    .. math:: \mathrm{forward}(x) = \log \frac1m \sum_{r=1}^m \mathrm{softmax}(f_r(x))

    (``argmax`` of it is the ensemble's prediction, and its softmax the averaged probabilities).

    Args:
        members: the classifiers, each ``(b, d) -> (b, k)`` logits with the same ``k``.

    Shapes:
        ``forward(x)``: ``(b, d)`` → ``(b, k)``. ``features(x)``: the members' ``features`` concatenated,
        ``(b, sum_r e_r)`` (members without a ``features`` method are not allowed then).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        members = list(members)
        if not members or not all(isinstance(m, nn.Module) for m in members):
            raise InvalidArgumentError(f"members must be a non-empty sequence of nn.Modules, got {members!r}.")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        logs = torch.stack([m(x).log_softmax(1) for m in self.members])
        return torch.logsumexp(logs, 0) - torch.log(torch.tensor(float(len(self.members)), dtype=logs.dtype))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' penultimate embeddings, concatenated along the last axis."""
        return torch.cat([m.features(x) for m in self.members], 1)


#: Class names of the embedded MNIST classifier's outputs.
MNIST_CLASSES = tuple(str(k) for k in range(10))


#: File of the embedded classifier's weights in ``models/weights`` (one state dict with keys
#: ``members.<r>.<LeNet5 key>``) and its machine-readable provenance.
WEIGHTS_FILE, PROVENANCE_FILE = "mnist_lenet5_ensemble.pt", "provenance.json"


def pretrained_mnist_lenet5(device: torch.device | str | None = None) -> FrozenClassifier:
    """The LeNet-5 MNIST classifier shipped with the package, frozen (output ``j`` is class ``"j"``).

    An :class:`Ensemble` of LeNet-5s trained on half of the MNIST test split, excluding the embedded
    ``mnist-mini`` images, each with its own seed (random affine augmentation, one-cycle schedule; see
    ``models/weights/PROVENANCE.md`` for the seeds, the split and the held-out accuracy, also in
    ``models/weights/provenance.json``). Inputs are 28x28 grayscale images in ``[0, 1]``, as ``(b, 784)``
    or ``(b, 28, 28)``; outputs are log-probabilities. The weights are read with
    ``torch.load(..., weights_only=True)``.
    """
    from importlib import resources

    path = resources.files("datasetflow.models").joinpath("weights", WEIGHTS_FILE)
    with resources.as_file(path) as file:
        if not file.is_file():
            raise InvalidArgumentError(
                "the embedded classifier weights are missing from the installed package; reinstall datasetflow."
            )
        state = torch.load(file, map_location="cpu", weights_only=True)
    count = 1 + max(int(key.split(".")[1]) for key in state)
    model = Ensemble([LeNet5(num_classes=10) for _ in range(count)])
    model.load_state_dict(state)
    return FrozenClassifier(model.to(device) if device is not None else model)


def pretrained_mnist_provenance() -> dict:
    """The provenance of :func:`pretrained_mnist_lenet5` (``models/weights/provenance.json``): seeds,
    data split, training settings and held-out accuracy."""
    import json
    from importlib import resources

    return json.loads(resources.files("datasetflow.models").joinpath("weights", PROVENANCE_FILE).read_text())
