"""Shared plumbing of the learning components: image layouts, training loop, progress bars.

Argument checks, seeding and batching shared with other layers live in :mod:`datasetflow.utils`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError, ShapeMismatchError
from ..utils import check_choice, check_positive_float

logger = logging.getLogger("datasetflow.models")

OPTIMIZERS = ("adam", "adamw")


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


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    degrees: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    shear: float = 0.15,
    translate: float = 0.1,
) -> torch.Tensor:
    r"""A random affine map per ``(C, H, W)`` image, bilinear, zero-filled.

    The sampling grid is :math:`A\,u + t` with
    :math:`A = s\,R(\theta)\begin{pmatrix}1 & h\\ 0 & 1\end{pmatrix}`, :math:`\theta \sim U(\pm` ``degrees``:math:`)`,
    :math:`s \sim U(\text{scale})`, :math:`h \sim U(\pm` ``shear``:math:`)` and
    :math:`t \sim U(\pm 2\,` ``translate``:math:`)^2` in the normalised coordinates
    :math:`u \in [-1, 1]^2` of ``torch.nn.functional.affine_grid`` (``translate`` is a fraction of the side).
    Random numbers come from ``generator`` (CPU), so the augmentation is reproducible.
    """
    n = images.shape[0]
    draw = torch.rand(5, n, generator=generator, dtype=torch.float64)
    theta = (2 * draw[0] - 1) * degrees * torch.pi / 180
    s = scale[0] + (scale[1] - scale[0]) * draw[1]
    h = (2 * draw[2] - 1) * shear
    t = (2 * draw[3:5] - 1) * 2 * translate
    cos, sin = torch.cos(theta), torch.sin(theta)
    matrix = torch.stack(
        [
            torch.stack([s * cos, s * (cos * h - sin), t[0]], 1),
            torch.stack([s * sin, s * (sin * h + cos), t[1]], 1),
        ],
        1,
    ).to(device=images.device, dtype=images.dtype)
    grid = nn.functional.affine_grid(matrix, list(images.shape), align_corners=False)
    return nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def resolve_device(device: torch.device | str | None, like: torch.Tensor) -> torch.device:
    """``device`` if given, else the device of the data ``like``."""
    return like.device if device is None else torch.device(device)


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
    scheduler: Any = None,
) -> list[float]:
    """Minibatch training: each epoch visits a fresh permutation of the ``n`` samples.

    ``batch_loss(idx)`` returns the mean loss of the samples ``idx`` (a ``(b,)`` long tensor on
    ``device``). ``scheduler`` (a ``torch.optim.lr_scheduler``) steps after every optimizer step.
    Returns the sample-averaged loss of every epoch.
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
            if scheduler is not None:
                scheduler.step()
            total = total + loss.detach().float() * idx.numel()
        losses.append(float(total) / n)
        logger.debug("%s epoch %d/%d: loss %.6g", desc, epoch + 1, epochs, losses[-1])
        if end_epoch is not None:
            end_epoch(epoch)
    module.eval()
    return losses
