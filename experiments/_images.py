"""Shared helpers of the image experiments: data splits, the frozen MNIST classifier, result files.

Not part of the library: the scripts import it as a sibling module (``from _images import ...``).

Data conventions
----------------
* Pixels are floats in ``[0, 1]`` (``uint8 / 255``); USPS (16x16) is resized to 28x28 bilinearly.
* The MNIST *train* split is not available offline. The MNIST *test* split (10,000 images) is
  split once, stratified by class with ``numpy.random.default_rng(1)``: half of every class
  trains the classifier (``mnist_split()[0]``, 4,999 images) and the other half
  (``mnist_split()[1]``, 5,001 images) is the flow target and the held-out evaluation set. The 500
  images of the embedded ``mnist-mini`` subset are always in the held-out half, so a classifier
  trained on the first half never saw them.
* ``results/<name>.json`` holds every number; ``--quick`` runs write ``results/quick/<name>.json``
  and never touch ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasetflow import LabeledDataset
from datasetflow.data import load_dataset, resolve_data_dir
from datasetflow.models import FrozenClassifier, accuracy, pretrained_mnist_lenet5, pretrained_mnist_provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
RESULTS_MD = ROOT / "docs" / "results.md"
FIGURES = ROOT / "docs" / "figures"
QUICK = ROOT / "build" / "quick"
MINI_SEED, MINI_PER_CLASS = 0, 50  # the embedded mnist-mini selection (scripts/make_embedded.py)


def data_dir_or_default(data_dir: str | None) -> str | None:
    """``data_dir``, else ``$DATASETFLOW_DATA_DIR``, else the repository's ``../shared/data``."""
    if data_dir is not None or resolve_data_dir(None) is not None:
        return data_dir
    shared = ROOT.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def parse_image_args(description: str, argv: Sequence[str] | None = None, add=None) -> argparse.Namespace:
    """``--quick``, ``--data-dir``, ``--figures DIR``, ``--results DIR``, ``--threads N`` (+ ``add(parser)``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a small smoke-test run (< 2 minutes)")
    parser.add_argument("--data-dir", default=None, help="directory of the .npz datasets (default ../shared/data)")
    parser.add_argument("--figures", type=Path, default=None, help="figure folder (default docs/figures)")
    parser.add_argument("--results", type=Path, default=None, help="JSON folder (default results/)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    if add is not None:
        add(parser)
    args = parser.parse_args(argv)
    args.data_dir = data_dir_or_default(args.data_dir)
    torch.set_num_threads(args.threads)
    if args.figures is None:
        args.figures = QUICK / "figures" if args.quick else FIGURES
    if args.results is None:
        args.results = QUICK / "results" if args.quick else RESULTS
    args.figures.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    return args


def mini_indices(y: np.ndarray) -> np.ndarray:
    """Indices of the embedded ``mnist-mini`` images in the MNIST test split (same rule as make_embedded)."""
    rng = np.random.default_rng(MINI_SEED)
    chosen = [rng.choice(np.flatnonzero(y == c), size=MINI_PER_CLASS, replace=False) for c in range(int(y.max()) + 1)]
    return np.sort(np.concatenate(chosen))


def mnist_split(data_dir: str | None = None) -> tuple[LabeledDataset, LabeledDataset]:
    """``(classifier_train, heldout)``: the stratified halves of the MNIST test split (see module doc)."""
    full = load_dataset("mnist", data_dir=data_dir_or_default(data_dir))
    y = full.y.numpy()
    mini = set(mini_indices(y).tolist())
    rng = np.random.default_rng(1)
    train = []
    for c in range(full.num_classes):
        members = np.flatnonzero(y == c)
        free = np.array([i for i in members if i not in mini])
        train.append(rng.permutation(free)[: len(members) // 2])
    train_idx = np.sort(np.concatenate(train))
    held = np.setdiff1d(np.arange(len(y)), train_idx)
    first = full.subset(torch.as_tensor(train_idx))
    second = full.subset(torch.as_tensor(held))
    first.name, second.name = "mnist-train-half", "mnist-heldout-half"
    return first, second


def balanced(dataset: LabeledDataset, per_class: int, seed: int = 0) -> LabeledDataset:
    """``per_class`` samples of every class (all of a smaller class), drawn with ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    y = dataset.y.cpu().numpy()
    picked = [
        rng.choice(np.flatnonzero(y == c), size=min(per_class, int((y == c).sum())), replace=False)
        for c in range(dataset.num_classes)
    ]
    out = dataset.subset(torch.as_tensor(np.sort(np.concatenate(picked))))
    out.name = dataset.name
    return out


def load_digits(name: str, data_dir: str | None = None, split: str = "test") -> LabeledDataset:
    """A 28x28 grayscale dataset in ``[0, 1]`` (USPS resized bilinearly)."""
    resize = (28, 28) if name.startswith("usps") else None
    return load_dataset(name, data_dir=data_dir_or_default(data_dir), split=split, resize=resize)


def mnist_classifier(data_dir: str | None = None) -> tuple[FrozenClassifier, dict[str, Any]]:
    """The frozen MNIST classifier of every experiment: the packaged ensemble of seeded LeNet-5s
    (``pretrained_mnist_lenet5()``, trained on ``mnist_split()[0]`` by ``scripts/make_embedded_classifier.py``).

    Returns the frozen model and a summary: its provenance (seeds, split, settings) and its held-out
    accuracy, re-measured here on ``mnist_split()[1]``.
    """
    _, held = mnist_split(data_dir)
    frozen = pretrained_mnist_lenet5()
    provenance = pretrained_mnist_provenance()
    info = {
        "architecture": provenance["architecture"],
        "train_set": provenance["train_set"],
        "seeds": provenance["seeds"],
        "settings": provenance["settings"],
        "heldout_accuracy": accuracy(frozen, held),
        "member_heldout_accuracy": provenance["member_heldout_accuracy"],
        "weights": f"src/datasetflow/models/weights/{provenance['file']}",
        "sha256": provenance["sha256"],
    }
    return frozen, info


def classifier_sentence(info: dict[str, Any]) -> str:
    """One sentence naming the frozen classifier and its held-out accuracy (for the result sections)."""
    s = info["settings"]
    return (
        f"ensemble of {len(info['seeds'])} LeNet-5s (mean of their probabilities) trained on {info['train_set']} "
        f"(seeds {info['seeds']}, affine augmentation, "
        f"one-cycle schedule, {s['epochs']} epochs; held-out MNIST accuracy {100 * info['heldout_accuracy']:.2f} %)"
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20


def environment() -> dict[str, Any]:
    """Machine facts for the result files."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }


def write_json(args: argparse.Namespace, name: str, payload: dict[str, Any]) -> Path:
    """Write ``<results>/<name>.json`` and print its path."""
    path = args.results / f"{name}.json"
    payload = {"name": name, "quick": bool(args.quick), "environment": environment(), **payload}
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")
    return path


def update_results_md(args: argparse.Namespace, name: str, markdown: str) -> None:
    """Replace the ``name`` section of docs/results.md (full runs only; quick runs print it)."""
    if args.quick:
        print(markdown)
        return
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = RESULTS_MD.read_text() if RESULTS_MD.is_file() else "# Results\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS_MD.write_text(text)
    print(f"updated {RESULTS_MD.relative_to(ROOT)} ({name})")


def data_available(data_dir: str | None = None) -> bool:
    """Whether the full datasets can be found (the experiments need them)."""
    root = resolve_data_dir(data_dir_or_default(data_dir))
    return root is not None and (root / "mnist_test.npz").is_file()


def collapse_distances(final_x: torch.Tensor, target_x: torch.Tensor) -> dict[str, float]:
    """How close flowed particles sit to target images (in pixel units, Euclidean on [0, 1] pixels).

    ``particle_to_nearest_target``: the median over particles of the distance to the nearest target
    image. ``target_nearest_neighbour``: the median over target images of the distance to the nearest
    *other* target image, the scale of "distinct MNIST images". A ratio far below 1 means the flow has
    collapsed the particles onto target images, so the classifier scores (near) copies of them.
    """
    final_x, target_x = final_x.detach().double().cpu(), target_x.detach().double().cpu()
    to_target = torch.cdist(final_x, target_x).min(1).values
    within = torch.cdist(target_x, target_x)
    within.fill_diagonal_(float("inf"))
    return {
        "particle_to_nearest_target": float(to_target.median()),
        "target_nearest_neighbour": float(within.min(1).values.median()),
    }


def collapse_sentence(distances: dict[str, dict[str, float]], flows: str = "the supervised flows") -> str:
    """The sentence reporting :func:`collapse_distances` of several flows (keyed by source name); its
    conclusion follows the ratio to the target's nearest-neighbour scale (collapse below one half)."""
    parts = ", ".join(f"{name} {d['particle_to_nearest_target']:.2f}" for name, d in distances.items())
    scale = next(iter(distances.values()))["target_nearest_neighbour"]
    ratio = max(d["particle_to_nearest_target"] for d in distances.values()) / scale
    if ratio < 0.5:
        verdict = (
            "the flow towards an empirical target collapses the particles onto (near) copies of target images, so "
            "the accuracy after the flow is essentially the classifier's accuracy on those images."
        )
    else:
        verdict = (
            "the particles end about as far from the target images as distinct target images are from each other, "
            "so they have not collapsed onto copies of target images."
        )
    return (
        f"After {flows}, the median distance from a particle to its nearest target MNIST image is {parts}, against "
        f"{scale:.2f} between a target image and its nearest distinct target image (Euclidean, pixels in [0, 1]): "
        + verdict
    )


class DirectionError(AssertionError):
    """A ``--quick`` run whose result does not point the way the experiment claims."""


def check_direction(checks: dict[str, bool]) -> None:
    """Fail (exit status 1 with the failed claims listed) unless every claimed direction holds."""
    failed = [claim for claim, ok in checks.items() if not ok]
    for claim, ok in checks.items():
        print(f"direction check {'passed' if ok else 'FAILED'}: {claim}")
    if failed:
        raise DirectionError("claims that did not hold: " + "; ".join(failed))
