"""Shared helpers of the experiment scripts: command line, synthetic datasets, output lines.

Not part of the library: the scripts import it as a sibling module (``from _common import ...``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from datasetflow import LabeledDataset

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"
QUICK_FIGURES = ROOT / "build" / "figures-quick"


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--quick`` (small smoke-test run) and ``--out DIR`` (default docs/figures; with
    ``--quick``, build/figures-quick so that a smoke test never replaces the documented figures).
    Also pins torch to one thread."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="few particles and steps (a smoke test, < 20 s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default docs/figures; build/figures-quick with --quick)",
    )
    args = parser.parse_args(argv)
    # These flows are small (a few hundred particles): one thread is fastest, and several
    # threads slow every step down by 10-50x when other processes share the cores.
    torch.set_num_threads(1)
    if args.out is None:
        args.out = QUICK_FIGURES if args.quick else FIGURES
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (for summary lines)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def report(path: Path, text: str) -> None:
    """The one summary line of an output file."""
    print(f"{shown(path)}: {text}")


class Timer:
    """Wall time since creation, in seconds."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


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


def segment_purity(final: LabeledDataset, target: LabeledDataset) -> float:
    """How well the final labels follow the target's classes: each final particle takes the class
    of its nearest target point; purity is the fraction of particles in the majority target class
    of their own label (1.0: every label sits on a single target class)."""
    nearest = target.y[torch.cdist(final.x, target.x.to(final.x.dtype)).argmin(1)]
    counts = torch.zeros(int(final.y.max()) + 1, target.num_classes)
    counts.index_put_((final.y, nearest), torch.ones(len(nearest)), accumulate=True)
    return float(counts.max(1).values.sum() / len(nearest))
