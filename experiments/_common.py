"""Shared helpers of the experiment scripts: command line, synthetic datasets, output lines.

Not part of the library: the scripts import it as a sibling module (``from _common import ...``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from datasetflow import LabeledDataset
from datasetflow.data.synthetic import gaussian_mixture, swiss_roll  # noqa: F401 - re-exported for the scripts

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


def segment_purity(final: LabeledDataset, target: LabeledDataset) -> float:
    """How well the final labels follow the target's classes: each final particle takes the class
    of its nearest target point; purity is the fraction of particles in the majority target class
    of their own label (1.0: every label sits on a single target class)."""
    nearest = target.y[torch.cdist(final.x, target.x.to(final.x.dtype)).argmin(1)]
    counts = torch.zeros(int(final.y.max()) + 1, target.num_classes)
    counts.index_put_((final.y, nearest), torch.ones(len(nearest)), accumulate=True)
    return float(counts.max(1).values.sum() / len(nearest))
