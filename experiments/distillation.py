r"""WoW dataset distillation in pixel space: p images per class flowed to the training set by MMD-SW.

Bonet, Vauthier & Korba (2025), dataset distillation without embedding: a small synthetic set of
``p`` images per class, initialised from ``p`` real training images per class, follows the WoW
gradient flow of

    F(P) = 1/2 MMD_K^2(P, Q),   K = -SW2 (Riesz),   Q = the training set (uniform class masses),

with heavy-ball momentum (m = 0.9), fresh directions (L = 500) and a fresh minibatch of the target
(``TARGET_BATCH`` images per class) at every step. Each particle moves by
``tau * (n_c / p_c) * dF/dx`` (the engine's one rescaling). After the flow the pixels are clamped
to [0, 1]. A LeNet-5 is then trained on the distilled set (a fixed number of Adam iterations with
random 2-pixel translations, 3 training seeds) and tested on held-out images; the baseline trains
the same network on the ``p`` real images the flow started from, not flowed.

Data (offline): the MNIST *train* split is not available, so the MNIST training set is the
stratified half of the MNIST test split (``mnist_split()[0]``, 4,999 images) and the test set its
other half (5,001 images). Fashion-MNIST: its 10k test split is halved per class with
``default_rng(FMNIST_SPLIT_SEED)`` (5,000 train / 5,000 test). The published numbers were
obtained with the full 60k training splits and the full 10k test splits.

Writes ``results/distillation.json``, the ``distillation`` section of docs/results.md, and the
figures ``distill_<dataset>.png`` (the p = 10 images along the flow, first column initial, last
column distilled) and ``distill_objective.png`` into ``--figures``.

Usage::

    python experiments/distillation.py --threads 1           # full run (MNIST and Fashion-MNIST, p = 1, 10, 50)
    python experiments/distillation.py --quick --threads 1   # smoke test (MNIST, p = 1, 10, few steps, 1 seed)
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np
import torch
from _images import (
    balanced,
    data_available,
    load_digits,
    mnist_split,
    parse_image_args,
    peak_rss_mb,
    update_results_md,
    write_json,
)

from datasetflow import LabeledDataset, mmd_sw_to, potential, run_flow
from datasetflow.models import accuracy, train_classifier
from datasetflow.viz import image_grid, plot_objective

DATASETS = {"mnist": "MNIST", "fashion-mnist": "FMNIST"}
#: Published ambient-space (no embedding) accuracies in %, from a secondary summary (spec, wow.md).
PUBLISHED = {"mnist": {10: 93.0, 50: 97.0}, "fashion-mnist": {10: 77.0, 50: 84.0}}
FMNIST_SPLIT_SEED = 0
INIT_SEED, FLOW_SEED = 0, 0
KERNEL, PROJECTIONS, TARGET_BATCH = "riesz", 500, 200
TAU, MOMENTUM = 3.0, 0.9
FULL = {"per_class": (1, 10, 50), "datasets": ("mnist", "fashion-mnist"), "steps": 400, "seeds": (0, 1, 2)}
QUICK = {"per_class": (1, 10), "datasets": ("mnist",), "steps": 30, "seeds": (0,)}
TRAIN_ITERATIONS, QUICK_TRAIN_ITERATIONS = 500, 100
TRAIN_BATCH, TRAIN_LR = 64, 1e-3
GRID_P, GRID_PER_CLASS, GRID_RECORDS = 10, 3, 4


def add_options(parser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="flow steps (default 400; 30 with --quick)")
    parser.add_argument(
        "--range-weight",
        type=float,
        default=0.0,
        help="weight of the potential sum_j (x_j - clamp(x_j, 0, 1))^2 added to the flow (default 0: clamp only)",
    )


def fmnist_split(data_dir: str | None, seed: int = FMNIST_SPLIT_SEED) -> tuple[LabeledDataset, LabeledDataset]:
    """``(train, test)``: every class of the Fashion-MNIST test split halved with ``default_rng(seed)``."""
    full = load_digits("fashion-mnist", data_dir)
    y = full.y.numpy()
    rng = np.random.default_rng(seed)
    first = [rng.permutation(np.flatnonzero(y == c))[: int((y == c).sum()) // 2] for c in range(full.num_classes)]
    train_idx = np.sort(np.concatenate(first))
    test_idx = np.setdiff1d(np.arange(len(y)), train_idx)
    train, test = full.subset(torch.as_tensor(train_idx)), full.subset(torch.as_tensor(test_idx))
    train.name, test.name = "fashion-mnist-train-half", "fashion-mnist-test-half"
    return train, test


def splits(name: str, data_dir: str | None) -> tuple[LabeledDataset, LabeledDataset]:
    return mnist_split(data_dir) if name == "mnist" else fmnist_split(data_dir)


def evaluate(train: LabeledDataset, test: LabeledDataset, seeds, iterations: int) -> dict[str, Any]:
    """Test accuracy (%) of a LeNet-5 trained on ``train`` for about ``iterations`` Adam steps, per seed."""
    batch = min(TRAIN_BATCH, len(train))
    epochs = math.ceil(iterations / math.ceil(len(train) / batch))
    runs = []
    for seed in seeds:
        model, _ = train_classifier(
            train, epochs=epochs, batch_size=batch, lr=TRAIN_LR, optimizer="adam", seed=seed, augment=True
        )
        runs.append(100.0 * accuracy(model, test))
    return {
        "mean": statistics.fmean(runs),
        "std": statistics.stdev(runs) if len(runs) > 1 else 0.0,
        "runs": runs,
    }


def fmt(entry: dict[str, Any]) -> str:
    return f"{entry['mean']:.1f} ± {entry['std']:.1f}"


def table(datasets: dict[str, dict], published: dict) -> list[str]:
    lines = [
        "| dataset | p / class | distilled (MMD-SW flow) | random real (same images) | published (ambient) |",
        "|---|---|---|---|---|",
    ]
    for name, per_p in datasets.items():
        for p, entry in per_p.items():
            pub = published[name].get(str(p))
            pub_text = "–" if pub is None else f"{pub:.0f}"
            lines.append(
                f"| {DATASETS[name]} | {p} | {fmt(entry['distilled'])} | {fmt(entry['random_real'])} | {pub_text} |"
            )
    return lines


def main(argv=None) -> None:
    """Distil MNIST and Fashion-MNIST, evaluate, and write the JSON, the figures and the results section."""
    start = time.perf_counter()
    args = parse_image_args(__doc__.splitlines()[0], argv, add=add_options)
    if not data_available(args.data_dir):
        raise SystemExit("distillation needs ../shared/data/mnist_test.npz (or --data-dir).")
    mode = QUICK if args.quick else FULL
    steps = args.steps if args.steps is not None else mode["steps"]
    iterations = QUICK_TRAIN_ITERATIONS if args.quick else TRAIN_ITERATIONS
    record_every = max(1, steps // GRID_RECORDS)
    settings = {
        "objective": "1/2 MMD^2 with the Riesz SW kernel K = -SW2 to the training set (uniform class masses)",
        "kernel": KERNEL,
        "n_projections": PROJECTIONS,
        "target_batch": TARGET_BATCH,
        "optimizer": "momentum",
        "momentum": MOMENTUM,
        "step_size": TAU,
        "steps": steps,
        "range_weight": args.range_weight,
        "clamp_after_flow": True,
        "init_seed": INIT_SEED,
        "flow_seed": FLOW_SEED,
        "per_class": list(mode["per_class"]),
        "eval": {
            "model": "LeNet-5",
            "optimizer": "adam",
            "lr": TRAIN_LR,
            "batch_size": f"min({TRAIN_BATCH}, n)",
            "iterations": f"about {iterations} (epochs = ceil(iterations / batches per epoch))",
            "augment": "random translations of up to 2 pixels",
            "seeds": list(mode["seeds"]),
        },
        "splits": {},
        "threads": torch.get_num_threads(),
    }
    datasets: dict[str, dict] = {}
    flows, labels = [], []
    for name in mode["datasets"]:
        train, test = splits(name, args.data_dir)
        note = (
            "MNIST train split unavailable offline: stratified halves of the MNIST test split"
            if name == "mnist"
            else f"Fashion-MNIST test split halved per class, default_rng({FMNIST_SPLIT_SEED})"
        )
        settings["splits"][name] = {"train": len(train), "test": len(test), "note": note}
        target = train.with_class_weights("uniform")
        datasets[name] = {}
        for p in mode["per_class"]:
            initial = balanced(train, p, seed=INIT_SEED).with_class_weights("uniform")
            functional = mmd_sw_to(
                target, kernel=KERNEL, n_projections=PROJECTIONS, target_batch=TARGET_BATCH, seed=FLOW_SEED
            )
            if args.range_weight > 0:
                functional = functional + args.range_weight * potential(
                    lambda x, y: ((x - x.clamp(0.0, 1.0)) ** 2).sum(1), name="pixel_range"
                )
            result = run_flow(
                functional,
                initial,
                optimizer="momentum",
                step_size=TAU,
                steps=steps,
                record_every=record_every,
                optimizer_options={"momentum": MOMENTUM},
            )
            raw = result.final.x
            distilled = result.final.with_features(raw.clamp(0.0, 1.0))
            objective = result.objective
            tail = objective[-max(1, len(objective) // 10) :]
            entry = {
                "distilled": evaluate(distilled, test, mode["seeds"], iterations),
                "random_real": evaluate(initial, test, mode["seeds"], iterations),
                "flow_seconds": result.seconds,
                "objective_first": objective[0],
                "objective_last": objective[-1],
                "objective_last_tenth_mean": statistics.fmean(tail),
                "pixels_out_of_range_before_clamp": float(((raw < 0) | (raw > 1)).double().mean()),
                "mean_pixel_excess_before_clamp": float((raw - raw.clamp(0.0, 1.0)).abs().double().mean()),
                "mean_l2_displacement": float((raw - initial.x).norm(dim=1).mean()),
            }
            datasets[name][str(p)] = entry
            flows.append(result)
            labels.append(f"{DATASETS[name]} p={p}")
            print(
                f"{DATASETS[name]} p={p}: objective {objective[0]:.4g} -> {entry['objective_last_tenth_mean']:.4g} "
                f"(mean of the last tenth), flow {result.seconds:.1f}s; accuracy distilled {fmt(entry['distilled'])}, "
                f"random real {fmt(entry['random_real'])}",
                flush=True,
            )
            if p == GRID_P:
                grid = args.figures / f"distill_{name}.png"
                image_grid(
                    result,
                    path=grid,
                    per_class=GRID_PER_CLASS,
                    seed=0,
                    title=f"{DATASETS[name]}, p={p}: initial (step 0) -> distilled (step {steps})",
                )
                print(f"wrote {grid}")
    curve = args.figures / "distill_objective.png"
    plot_objective(flows, labels=labels, path=curve, title="MMD-SW^2 / 2 to the training set (Riesz kernel)")
    print(f"wrote {curve}")

    published = {name: {str(p): PUBLISHED[name].get(p) for p in mode["per_class"]} for name in mode["datasets"]}
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    write_json(
        args,
        "distillation",
        {
            "settings": settings,
            "datasets": datasets,
            "published": published,
            "seconds": seconds,
            "peak_rss_mb": peak,
        },
    )
    rows = table(datasets, published)
    print("\n".join(rows))
    n_train = {name: s["train"] for name, s in settings["splits"].items()}
    markdown = "\n".join(
        [
            "## Dataset distillation (WoW, MMD-SW, pixel space)",
            "",
            f"`python experiments/distillation.py --threads 1` — p images per class, initialised from p real "
            f"training images per class (seed {INIT_SEED}), flowed for {steps} steps (momentum 0.9, tau = {TAU:g}, "
            f"Riesz SW kernel, L = {PROJECTIONS} fresh directions and {TARGET_BATCH} target images per class per "
            "step) towards the training set, then clamped to [0, 1]. A LeNet-5 is trained on the distilled set "
            f"(Adam, lr {TRAIN_LR:g}, about {iterations} iterations of batch min(64, n), random 2-pixel "
            f"translations) and tested; mean ± std over {len(mode['seeds'])} training seeds, accuracy in %. "
            "*Random real* trains the same network on the same initial images, not flowed.",
            "",
            *rows,
            "",
            f"- Data: the MNIST train split is not available offline; the MNIST training set (flow target) is the "
            f"stratified half of the MNIST test split ({n_train.get('mnist', '–')} images), the test set its other "
            f"half. Fashion-MNIST: its test split halved per class (default_rng({FMNIST_SPLIT_SEED})). The published "
            "numbers (ambient space, from a secondary summary; p = 1 not published) used the 60k train splits, the "
            "10k test splits and many more flow iterations; they are not a like-for-like comparison.",
            f"- Wall time {seconds:.0f} s, peak memory {peak:.0f} MB (1 thread, CPU).",
            "- Figures: `docs/figures/distill_mnist.png`, `docs/figures/distill_fashion-mnist.png` (p = 10, three "
            "images per class along the flow; first column initial, last column distilled), "
            "`docs/figures/distill_objective.png` (objective per step; noisy because the directions and the target "
            "minibatch are redrawn at every step).",
        ]
    )
    update_results_md(args, "distillation", markdown)


if __name__ == "__main__":
    main()
