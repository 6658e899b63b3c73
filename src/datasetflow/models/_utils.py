"""Shared plumbing of the learning components: image layouts, seeding, training loop, lazy extras."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..data.dataset import LabeledDataset
from ..errors import InvalidArgumentError, NonFiniteError, ShapeMismatchError

logger = logging.getLogger("datasetflow.models")

OPTIMIZERS = ("adam", "adamw")


def check_choice(argument: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else an error that lists them."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(f"{argument} must be one of {tuple(choices)}, got {value!r}.")
    return value


def check_positive_int(argument: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``, else an error naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{argument} must be an int >= {minimum}, got {value!r}.")
    return value


def check_positive_float(argument: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float ``> 0`` (``>= 0`` with ``allow_zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value != float("inf")
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidArgumentError(f"{argument} must be a finite float {bound}, got {value!r}.")
    return float(value)


def check_dataset_pair(names: tuple[str, str], first: Any, second: Any, *, same_dim: bool = True) -> None:
    """Both arguments are :class:`LabeledDataset` s (in the same feature dimension), else an error naming them."""
    for argument, value in zip(names, (first, second), strict=True):
        if not isinstance(value, LabeledDataset):
            raise InvalidArgumentError(f"{argument} must be a LabeledDataset, got {type(value).__name__}.")
    if same_dim and first.dim != second.dim:
        raise ShapeMismatchError(
            f"{names[0]} features have shape {tuple(first.x.shape)} and {names[1]} features "
            f"{tuple(second.x.shape)}: the feature dimensions {first.dim} and {second.dim} differ."
        )


def check_matrix(argument: str, cost: Any, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """A detached, finite, floating 2-d matrix (of ``shape`` if given), else an error naming ``argument``."""
    matrix = torch.as_tensor(cost).detach()
    if matrix.ndim != 2 or min(matrix.shape) == 0:
        raise ShapeMismatchError(f"{argument} must be a non-empty 2-d matrix, got shape {tuple(matrix.shape)}.")
    if shape is not None and tuple(matrix.shape) != shape:
        raise ShapeMismatchError(
            f"{argument} must have shape {shape} (source classes, target classes), got {tuple(matrix.shape)}."
        )
    if not matrix.is_floating_point():
        matrix = matrix.to(torch.get_default_dtype())
    if not bool(torch.isfinite(matrix).all()):
        raise NonFiniteError(f"{argument} of shape {tuple(matrix.shape)} holds NaN or Inf values.")
    return matrix


def features_of(data: Any, argument: str = "x") -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(x, feature_shape)`` of a :class:`LabeledDataset` or of an ``(n, d)`` / ``(n, *shape)`` tensor.

    A tensor of shape ``(n, *shape)`` with more than one feature axis is flattened to ``(n, d)``.
    """
    if isinstance(data, LabeledDataset):
        return data.x, data.feature_shape
    if not isinstance(data, torch.Tensor):
        raise InvalidArgumentError(
            f"{argument} must be a LabeledDataset or a tensor of shape (n, d), got {type(data).__name__}."
        )
    if data.ndim < 2 or data.shape[0] == 0:
        raise ShapeMismatchError(f"{argument} must have shape (n, d) with n >= 1, got {tuple(data.shape)}.")
    return data.reshape(data.shape[0], -1), tuple(data.shape[1:])


def image_layout(feature_shape: Sequence[int]) -> tuple[tuple[int, int, int], bool]:
    """``((C, H, W), channels_last)`` of one image sample's ``feature_shape``.

    ``(H, W)`` is one channel; ``(C, H, W)`` with ``C <= 4`` is channels-first, ``(H, W, C)`` with
    ``C <= 4`` (and a larger first axis) channels-last.
    """
    shape = tuple(int(s) for s in feature_shape)
    if len(shape) == 2:
        return (1, *shape), False
    if len(shape) == 3 and shape[0] <= 4 and shape[0] < shape[-1]:
        return shape, False
    if len(shape) == 3 and shape[-1] <= 4:
        return (shape[2], shape[0], shape[1]), True
    raise ShapeMismatchError(
        f"an image model needs feature_shape (H, W), (C, H, W) or (H, W, C) with C <= 4, got {shape}; "
        "load the images with their shape (LabeledDataset keeps it in feature_shape)."
    )


def to_images(x: torch.Tensor, chw: tuple[int, int, int], channels_last: bool) -> torch.Tensor:
    """Flat ``(n, d)`` features as ``(n, C, H, W)`` images (``d = C*H*W`` in the stored layout)."""
    c, h, w = chw
    if x.ndim == 4:
        return x
    if x.ndim != 2 or x.shape[1] != c * h * w:
        raise ShapeMismatchError(
            f"expected images of shape (n, {c}, {h}, {w}) or flat features (n, {c * h * w}), got {tuple(x.shape)}."
        )
    if channels_last:
        return x.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    return x.reshape(-1, c, h, w)


def from_images(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``(n, C, H, W)`` images back to flat ``(n, d)`` features in the stored layout."""
    if channels_last:
        images = images.permute(0, 2, 3, 1)
    return images.reshape(images.shape[0], -1)


def random_translate(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each ``(C, H, W)`` image by an integer offset in ``[-max_shift, max_shift]^2``, zero-filled."""
    n, _, h, w = images.shape
    padded = nn.functional.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(images.device)
    rows = offsets[0][:, None] + torch.arange(h, device=images.device)
    cols = offsets[1][:, None] + torch.arange(w, device=images.device)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def resolve_device(device: torch.device | str | None, like: torch.Tensor) -> torch.device:
    """``device`` if given, else the device of the data ``like``."""
    return like.device if device is None else torch.device(device)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for the block (module initialisation, ``pca_lowrank``) and restore them."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` or ``AdamW`` by name."""
    check_choice("optimizer", name, OPTIMIZERS)
    check_positive_float("lr", lr)
    check_positive_float("weight_decay", weight_decay, allow_zero=True)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, weight_decay=weight_decay)


def progress_bar(iterable: Iterable[Any], enabled: bool, desc: str, total: int) -> Iterable[Any]:
    """``iterable`` wrapped in a ``tqdm`` bar when ``enabled`` (tqdm is imported only then)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InvalidArgumentError("progress=True needs tqdm: pip install 'datasetflow[cli]'") from exc
    return tqdm(iterable, desc=desc, total=total, leave=False)


def train_epochs(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    progress: bool,
    desc: str,
    end_epoch: Callable[[int], None] | None = None,
) -> list[float]:
    """Minibatch training: each epoch visits a fresh permutation of the ``n`` samples.

    ``batch_loss(idx)`` returns the mean loss of the samples ``idx`` (a ``(b,)`` long tensor on
    ``device``). Returns the sample-averaged loss of every epoch.
    """
    losses: list[float] = []
    for epoch in progress_bar(range(epochs), progress, desc, epochs):
        module.train()
        order = torch.randperm(n, generator=generator).to(device)
        total = torch.zeros((), device=device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(idx)
            loss.backward()
            optimizer.step()
            total = total + loss.detach().float() * idx.numel()
        losses.append(float(total) / n)
        logger.debug("%s epoch %d/%d: loss %.6g", desc, epoch + 1, epochs, losses[-1])
        if end_epoch is not None:
            end_epoch(epoch)
    module.eval()
    return losses


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` applied to consecutive row blocks of ``x`` and concatenated, without gradients."""
    check_positive_int("batch_size", batch_size)
    with torch.no_grad():
        return torch.cat([fn(x[start : start + batch_size]) for start in range(0, x.shape[0], batch_size)])


def module_placement(model: Any, like: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of ``model``'s first parameter, else those of the data ``like``."""
    if isinstance(model, nn.Module):
        for param in model.parameters():
            return param.device, param.dtype
    return like.device, like.dtype if like.is_floating_point() else torch.get_default_dtype()


def sklearn_missing(what: str) -> InvalidArgumentError:
    """The error raised when scikit-learn is needed but not installed."""
    return InvalidArgumentError(f"{what} needs scikit-learn: pip install 'datasetflow[cluster]'")
