"""Synthetic labeled datasets with known structure: Gaussian mixtures and the labeled Swiss roll.

Used by the paper's synthetic experiments (``experiments/``) and by tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .dataset import LabeledDataset

__all__ = ["gaussian_mixture", "swiss_roll"]


def gaussian_mixture(
    means: Sequence[Sequence[float]],
    per_class: int,
    *,
    std: float | Sequence[float] = 1.0,
    seed: int = 0,
    name: str | None = None,
) -> LabeledDataset:
    """``per_class`` isotropic Gaussian samples around each mean; class ``k`` is label ``k`` (float64)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.as_tensor(means, dtype=torch.float64)
    stds = torch.as_tensor(std, dtype=torch.float64).expand(len(centres))
    x = torch.cat(
        [
            c + s * torch.randn(per_class, centres.shape[1], generator=gen, dtype=torch.float64)
            for c, s in zip(centres, stds, strict=True)
        ]
    )
    y = torch.arange(len(centres)).repeat_interleave(per_class)
    return LabeledDataset(x, y, name=name)


def swiss_roll(
    n: int, *, classes: int = 4, turns: float = 1.25, width: float = 4.0, noise: float = 0.1, seed: int = 0
) -> LabeledDataset:
    r"""A 3-D swiss roll: angle :math:`t` uniform in :math:`[1.5\pi, 1.5\pi + 2\pi\,\text{turns}]`,
    point :math:`(t\cos t/\pi,\ t\sin t/\pi,\ h)` with height ``h`` uniform in
    ``[-width/2, width/2]``, plus Gaussian noise; labels are ``classes`` consecutive segments
    along the roll with equal counts (float64)."""
    gen = torch.Generator().manual_seed(seed)
    start, stop = 1.5 * math.pi, 1.5 * math.pi + 2.0 * math.pi * turns
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    t = start + (stop - start) * u
    h = width * (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5)
    x = torch.stack([t * torch.cos(t) / math.pi, t * torch.sin(t) / math.pi, h], 1)
    x = x + noise * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    order = torch.argsort(u)  # sorted along the roll: equal-count segments are the classes
    y = torch.arange(n) * classes // n
    return LabeledDataset(x[order], y, name="swiss-roll")
