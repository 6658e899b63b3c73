"""Shared fixtures: seeded generators and small synthetic labeled datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datasetflow import LabeledDataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh seeded CPU generator."""
    return torch.Generator().manual_seed(1234)


def gaussian_classes(
    gen: torch.Generator,
    *,
    num_classes: int = 3,
    per_class: int = 12,
    dim: int = 4,
    spread: float = 3.0,
    dtype: torch.dtype = torch.float64,
    labels: list | None = None,
) -> LabeledDataset:
    """``num_classes`` Gaussian blobs with random means; labels default to 0..C-1."""
    means = spread * torch.randn(num_classes, dim, generator=gen, dtype=dtype)
    x = means.repeat_interleave(per_class, 0) + torch.randn(num_classes * per_class, dim, generator=gen, dtype=dtype)
    names = labels if labels is not None else list(range(num_classes))
    y = [names[k] for k in range(num_classes) for _ in range(per_class)]
    return LabeledDataset(x, y)


@pytest.fixture
def small_pair(gen):
    """Two small float64 labeled datasets with different class counts."""
    return gaussian_classes(gen, num_classes=3, per_class=10), gaussian_classes(gen, num_classes=2, per_class=14)


def invoke_cli(*args):
    """Run the ``datasetflow`` click CLI in-process on ``args`` (stringified), stderr kept apart."""
    from click.testing import CliRunner

    from datasetflow.cli.main import build_cli

    try:  # click < 8.2 mixes stderr into stdout unless told not to
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)
