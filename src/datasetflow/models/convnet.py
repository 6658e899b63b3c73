r"""ConvNet-D: the evaluation network of the dataset-distillation literature (Gidaris & Komodakis 2018;
Zhao et al. 2021; Bonet et al. 2025).

``depth`` blocks of conv3x3(``width``) → instance norm → ReLU → average pool 2, then a linear layer.
Instance norm is ``GroupNorm(width, width)`` (one group per channel, with an affine map), as in the
reference implementations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..utils import check_positive_int
from ._utils import image_layout, to_images

__all__ = ["ConvNet"]


class ConvNet(nn.Module):
    r"""ConvNet-``depth`` with ``width`` channels, instance norm, ReLU and average pooling.

    For ``H x W`` inputs the flattened size is :math:`\text{width} \cdot \lfloor H / 2^{D} \rfloor
    \lfloor W / 2^{D} \rfloor` (``D = depth``; 28x28 and ``D = 3``: ``128 * 3 * 3``).

    Args:
        num_classes: outputs ``k``.
        in_channels: image channels ``C``.
        image_size: ``S`` or ``(H, W)``.
        width: channels of every convolution (128 in the literature).
        depth: number of conv blocks (3).

    Shapes:
        ``forward(x)``: ``(b, C, H, W)`` or flat ``(b, C*H*W)`` → ``(b, k)`` logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 28,
        *,
        width: int = 128,
        depth: int = 3,
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            check_positive_int(name, value)
        check_positive_int("depth", depth)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        side = [s // 2**depth for s in size]
        if len(size) != 2 or min(side) < 1:
            raise InvalidArgumentError(
                f"image_size {image_size!r} is too small for depth {depth} (needs >= {2**depth})."
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(),
                nn.AvgPool2d(2),
            ]
            channels = width
        self.image_shape = (in_channels, *size)
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(width * side[0] * side[1], num_classes)

    @classmethod
    def for_feature_shape(cls, feature_shape: Sequence[int], num_classes: int = 10, **kwargs) -> ConvNet:
        """A ConvNet for samples of ``feature_shape`` ``(H, W)`` or ``(C, H, W)``."""
        (channels, height, width), channels_last = image_layout(feature_shape)
        if channels_last:
            raise InvalidArgumentError("ConvNet takes channels-first images; got a channels-last feature_shape.")
        return cls(num_classes, channels, (height, width), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.head(self.body(to_images(x, self.image_shape, False)))
