"""Transfer correlation: does a dataset distance predict how much pretraining on a source helps a k-shot target?

The use case of dataset distances that the sliced-distance issue names: ranking source datasets by expected
transfer (Alvarez-Melis & Fusi, 2020, Fig. 5). Datasets: MNIST, USPS and Fashion-MNIST (28x28 grayscale in
[0, 1]), each plain, inverted (``1 - x``) and rotated by 90 degrees: 9 datasets, 72 ordered (source, target) pairs.

Data (fixed seeds)
------------------
* Every base dataset has a *pool* and a *test* set: MNIST the two halves of its test split
  (``mnist_split()``), USPS its train and test splits (resized to 28x28), Fashion-MNIST its test split halved per
  class (``default_rng(2)``, as in ``kshot.py``). Each pool is halved again per class (``default_rng(3)``): the
  source role draws from the first half, the target role from the second, so a source never shares an image
  with a target built from the same base (inverted MNIST against MNIST, say).
* Source: 200 images per class of the first pool half (``balanced(.., 200, seed=0)``).
* Target (run ``s``): k = 10 images per class of the second pool half, drawn as in ``kshot.py``
  (``default_rng(1000 + s)``); its test set is the base's test set, transformed in the same way.

Transfer gain (run ``s``): a LeNet-5 is pretrained on the source (``pretrain_steps``), its last layer is
re-initialised, and it is fine-tuned on the k-shot set (``finetune_steps``); a LeNet-5 trained from scratch on the
k-shot set for the same number of steps is the baseline. Gain = fine-tuned accuracy - scratch accuracy (points).
Every classifier: AdamW, lr 3e-4, weight decay 1e-2, batch 64, random 2-pixel translations (``kshot.train``).

Distances (run ``s``) between the 2,000-image source and the 100-image k-shot set: exactly the data a user has
when choosing a source, never the target's test set or its unlabeled pool. Exact OTDD (exact inner and outer OT,
``otdd(inner="exact", outer="exact").distance``), s-OTDD, SWB1DG and SWBG (``sliced_distance``, published
defaults, L projections), in root units.

Reported: Spearman and Pearson correlation between the run-mean distance and the run-mean gain over the 72 pairs,
with 95 % bootstrap intervals over pairs; and the use case itself, ranking the 8 sources of every target (3 in
the quick run): the Spearman correlation over each target's sources, averaged over the targets. The claim is a
negative correlation (closer sources transfer better). A scatter figure per method, coloured by target.

Writes ``<results>/transfer_correlation.json``, the ``transfer_correlation`` section of docs/results.md (full runs
only) and ``transfer_correlation.png``.

Usage::

    python experiments/transfer_correlation.py --threads 1            # full run
    python experiments/transfer_correlation.py --quick --threads 1    # smoke test (< 2 minutes)
    python experiments/transfer_correlation.py --report-only          # section + figure from the JSON
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from typing import Any

import numpy as np
import torch
from _images import (
    balanced,
    check_direction,
    load_digits,
    mnist_split,
    parse_image_args,
    peak_rss_mb,
    update_results_md,
    write_json,
)
from distance_correlation import correlations, interval
from kshot import FMNIST_SPLIT_SEED, images, kshot_draw, percent, split_per_class, train
from scipy import stats

from datasetflow import LabeledDataset, otdd
from datasetflow.distances import sliced_distance
from datasetflow.errors import DegenerateClassWarning

NAME = "transfer_correlation"
BASES = ("mnist", "usps", "fmnist")
VARIANTS = {"": "plain", "inv": "inverted", "rot": "rotated 90 degrees"}
METHODS = {"otdd": "OTDD (exact)", "sotdd": "s-OTDD", "swb1dg": "SWB1DG", "swbg": "SWBG"}
ROLE_SPLIT_SEED, SOURCE_SEED = 3, 0
FULL = {
    "datasets": tuple(f"{b}-{v}" if v else b for b in BASES for v in VARIANTS),
    "per_class": 200,
    "k": 10,
    "pretrain_steps": 600,
    "finetune_steps": 300,
    "seeds": 2,
    "projections": 500,
}
QUICK = {
    "datasets": ("mnist", "mnist-inv", "usps", "fmnist"),
    "per_class": 30,
    "k": 5,
    "pretrain_steps": 150,
    "finetune_steps": 60,
    "seeds": 1,
    "projections": 100,
}


# ----------------------------------------------------------------------------- data
def transformed(dataset: LabeledDataset, variant: str, name: str) -> LabeledDataset:
    """``dataset`` as ``(n, 28, 28)`` images, inverted (``1 - x``), rotated by 90 degrees, or unchanged."""
    x = images(dataset)
    if variant == "inv":
        x = 1.0 - x
    elif variant == "rot":
        x = torch.rot90(x, 1, dims=(1, 2)).contiguous()
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    return LabeledDataset(x, dataset.y, classes=dataset.classes, name=name)


def base_splits(base: str, data_dir: str | None) -> tuple[LabeledDataset, LabeledDataset, LabeledDataset]:
    """``(source half, target half, test)`` of a base dataset (see the module doc)."""
    if base == "mnist":
        pool, test = mnist_split(data_dir)
    elif base == "usps":
        pool, test = load_digits("usps", data_dir, split="train"), load_digits("usps", data_dir, split="test")
    elif base == "fmnist":
        pool, test = split_per_class(load_digits("fashion-mnist", data_dir, split="test"), FMNIST_SPLIT_SEED)
    else:
        raise ValueError(f"unknown base dataset {base!r}; choose from {list(BASES)}")
    source_half, target_half = split_per_class(pool, ROLE_SPLIT_SEED)
    return source_half, target_half, test


def roles(config: dict, data_dir: str | None) -> dict[str, dict[str, LabeledDataset]]:
    """Every dataset's source set, k-shot pool and test set, transformed by its variant."""
    splits: dict[str, tuple] = {}
    out = {}
    for name in config["datasets"]:
        base, _, variant = name.partition("-")
        if base not in splits:
            splits[base] = base_splits(base, data_dir)
        source_half, target_half, test = splits[base]
        out[name] = {
            "source": transformed(balanced(source_half, config["per_class"], seed=SOURCE_SEED), variant, name),
            "pool": transformed(target_half, variant, name),
            "test": transformed(test, variant, name),
        }
    return out


def flat(dataset: LabeledDataset) -> LabeledDataset:
    """``(n, 784)`` features for the distances."""
    return LabeledDataset(dataset.x.reshape(len(dataset), -1), dataset.y, classes=dataset.classes)


# ----------------------------------------------------------------------------- measurements
def fine_tuned(pretrained: torch.nn.Module, kshot: LabeledDataset, steps: int, seed: int) -> torch.nn.Module:
    """``pretrained`` with a freshly initialised last layer (seeded), fine-tuned on ``kshot``."""
    model = copy.deepcopy(pretrained)
    torch.manual_seed(seed)
    model.head.reset_parameters()
    return train(kshot, steps, seed, model=model.train())[0]


def distances(source: LabeledDataset, kshot: LabeledDataset, projections: int, seed: int) -> dict[str, float]:
    """Every method's distance (root units) between a source and a k-shot set."""
    source, kshot = flat(source), flat(kshot)
    out = {"otdd": float(otdd(source, kshot, inner="exact", outer="exact").distance)}
    for method in ("sotdd", "swb1dg", "swbg"):
        result = sliced_distance(source, kshot, family=method, n_projections=projections, seed=seed)
        out[method] = float(result.value_pow.detach()) ** 0.5
    return out


def per_target_spearman(pairs: list[dict], method: str) -> dict[str, float]:
    """The Spearman correlation between distance and gain over each target's sources."""
    out = {}
    for target in sorted({p["target"] for p in pairs}):
        mine = [p for p in pairs if p["target"] == target]
        d = np.array([p["distance"][method] for p in mine])
        g = np.array([p["gain"] for p in mine])
        if len(mine) >= 3 and np.ptp(d) > 0 and np.ptp(g) > 0:
            out[target] = float(stats.spearmanr(d, g)[0])
    return out


def summarise(pairs: list[dict], seed: int) -> dict[str, Any]:
    """Correlations of every method over the pairs, pooled and per target."""
    rng = np.random.default_rng(seed)
    gains = np.array([p["gain"] for p in pairs])
    out = {}
    for method in METHODS:
        values = np.array([p["distance"][method] for p in pairs])
        per_target = per_target_spearman(pairs, method)
        out[method] = {
            "pooled": correlations(values, gains, rng),
            "per_target_spearman": per_target,
            "per_target_mean": float(np.mean(list(per_target.values()))) if per_target else float("nan"),
        }
    return out


# ----------------------------------------------------------------------------- report
def markdown(payload: dict[str, Any], figure: str | None) -> str:
    """The docs/results.md section."""
    s = payload["settings"]
    pairs, summary = payload["pairs"], payload["correlations"]
    lines = [
        "## Transfer correlation: dataset distance against fine-tuning gain (`experiments/transfer_correlation.py`)",
        "",
        f"`python experiments/transfer_correlation.py`. Datasets: {', '.join(s['datasets'])} "
        "(MNIST, USPS and Fashion-MNIST, plain, inverted `1 - x` and rotated by 90 degrees); every ordered pair of "
        f"two different datasets, {len(pairs)} pairs. Source: {s['per_class']} images per class. Target: "
        f"k = {s['k']} images per class (drawn per run), tested on its base's test set, transformed alike; the "
        "source and target roles draw from disjoint halves of each base's pool. Gain = accuracy of a LeNet-5 "
        f"pretrained on the source ({s['pretrain_steps']} steps), last layer re-initialised, fine-tuned on the "
        f"k-shot set ({s['finetune_steps']} steps), minus a LeNet-5 trained on the k-shot set alone for as many "
        f"steps; mean over {len(s['seeds'])} runs (k-shot draws and classifier seeds). Distances between the "
        "source and the k-shot set (the data a user has when choosing a source: no test or unlabeled target "
        f"data), mean over the runs: exact OTDD, and the sliced distances at L = {s['projections']}. "
        "Intervals: 95 % bootstrap over pairs.",
        "",
        "| method | Spearman (pooled) | Pearson (pooled) | mean per-target Spearman (ranking a target's sources) |",
        "|---|---|---|---|",
    ]
    for method, label in METHODS.items():
        entry = summary[method]
        lines.append(
            f"| {label} | {interval(entry['pooled']['spearman'])} | {interval(entry['pooled']['pearson'])} "
            f"| {entry['per_target_mean']:.2f} |"
        )
    targets = sorted({p["target"] for p in pairs}, key=s["datasets"].index)
    lines += [
        "",
        "Per-target Spearman (each target's sources ranked by distance against their gain), and each target's "
        "scratch accuracy and best source:",
        "",
        "| target | scratch acc. (%) | best source (gain) | " + " | ".join(METHODS.values()) + " |",
        "|---|---:|---|" + "---:|" * len(METHODS),
    ]
    for target in targets:
        mine = [p for p in pairs if p["target"] == target]
        best = max(mine, key=lambda p: p["gain"])
        cells = " | ".join(f"{summary[m]['per_target_spearman'].get(target, float('nan')):.2f}" for m in METHODS)
        lines.append(f"| {target} | {mine[0]['scratch']:.1f} | {best['source']} ({best['gain']:+.1f}) | {cells} |")
    threads = payload.get("environment", {}).get("threads", torch.get_num_threads())
    lines += ["", "**Reading.**", ""]
    lines += [f"- {text}" for text in reading(payload)]
    if figure:
        lines += ["", f"![transfer_correlation](figures/{figure})"]
    lines += [
        "",
        f"Wall time {payload['seconds'] / 60:.1f} min on {threads} CPU thread(s) of a "
        f"shared 2-core machine, peak memory {payload['peak_rss_mb']:.0f} MB.",
    ]
    return "\n".join(lines)


def reading(payload: dict[str, Any]) -> list[str]:
    """Sentences generated from the measured numbers."""
    pairs, summary = payload["pairs"], payload["correlations"]
    best = min(METHODS, key=lambda m: summary[m]["pooled"]["spearman"]["value"])
    entry = summary[best]["pooled"]["spearman"]
    sign = "negative" if entry["high"] < 0 else ("not settled" if entry["low"] < 0 else "positive")
    gains = np.array([p["gain"] for p in pairs])
    helped = int((gains > 0).sum())
    out = [
        f"The most negative pooled correlation is {METHODS[best]}'s, Spearman {interval(entry)}: {sign} (the claim "
        "is negative: closer sources transfer better)"
        + (" and the interval excludes 0." if entry["high"] < 0 else "; the interval includes 0.")
    ]
    out.append(
        f"Pretraining helped in {helped} of {len(pairs)} pairs (mean gain {gains.mean():+.1f} points, range "
        f"{gains.min():+.1f} to {gains.max():+.1f})."
    )
    runs = np.array([p["gain_runs"] for p in pairs])
    if runs.shape[1] > 1:
        agreement = float(stats.spearmanr(runs[:, 0], runs[:, 1])[0])
        out.append(
            f"How reproducible the gains are: the first two runs' gains have Spearman {agreement:.2f} over the pairs "
            f"and differ by {float(np.abs(runs[:, 0] - runs[:, 1]).mean()):.1f} points on average, against a spread "
            f"(sd) of {float(gains.std()):.1f} points of the run-mean gains across pairs: the gains are small, and "
            "part of their ranking is noise."
        )
    wrong = [m for m in METHODS if summary[m]["per_target_mean"] > 0]
    if wrong:
        out.append(
            "Within one target the claim does not hold for "
            + ", ".join(METHODS[m] for m in wrong)
            + ": their mean per-target Spearman is positive, so among the sources of a given target the closer ones "
            "did not transfer better here. The pooled correlation mixes targets whose distances and gains differ in "
            "level, and that is where the (weak) negative sign comes from."
        )
    ranked = sorted(METHODS, key=lambda m: summary[m]["per_target_mean"])
    names = payload["settings"]["datasets"]
    out.append(
        "Ranking the sources of one target, the mean per-target Spearman is "
        + ", ".join(f"{METHODS[m]} {summary[m]['per_target_mean']:.2f}" for m in ranked)
        + f" ({len(names) - 1} sources per target, so a single target's value is coarse)."
    )
    return out


def scatter(payload: dict[str, Any], path) -> None:
    """Distance against gain, one panel per method, coloured by target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = payload["pairs"]
    targets = list(dict.fromkeys(p["target"] for p in pairs))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(METHODS), figsize=(4.2 * len(METHODS), 3.8), squeeze=False)
    for ax, (method, label) in zip(axes[0], METHODS.items(), strict=True):
        for k, target in enumerate(targets):
            mine = [p for p in pairs if p["target"] == target]
            ax.scatter(
                [p["distance"][method] for p in mine],
                [p["gain"] for p in mine],
                s=18,
                color=colours(k % 10),
                label=target,
            )
        rho = payload["correlations"][method]["pooled"]["spearman"]["value"]
        ax.set_title(f"{label} (Spearman {rho:.2f})")
        ax.set_xlabel("distance (source, k-shot target)")
        ax.axhline(0.0, color="0.6", lw=0.8)
    axes[0][0].set_ylabel("fine-tuning gain (accuracy points)")
    axes[0][-1].legend(title="target", fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- main
def add_options(parser) -> None:
    """``--report-only``: recompute the statistics and rewrite the JSON, the docs section and the figure from the
    saved pairs (no training)."""
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the docs section and figure from the saved JSON"
    )


def main(argv=None) -> None:
    """Train, fine-tune and measure every pair; write the JSON, the figure and the docs section."""
    args = parse_image_args(__doc__.splitlines()[0], argv, add=add_options)
    if args.report_only:
        path = args.results / f"{NAME}.json"
        payload = json.loads(path.read_text())
        payload["correlations"] = summarise(payload["pairs"], seed=0)  # (the statistics of this code version)
        path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        figure = "transfer_correlation.png"
        scatter(payload, args.figures / figure)
        update_results_md(args, NAME, markdown(payload, None if args.quick else figure))
        return
    config = dict(QUICK if args.quick else FULL)
    start = time.perf_counter()
    data = roles(config, args.data_dir)
    names = list(config["datasets"])
    seeds = list(range(config["seeds"]))
    records: dict[tuple[str, str], dict[str, list]] = {}
    scratch: dict[str, list[float]] = {name: [] for name in names}
    for s in seeds:
        run_start = time.perf_counter()
        pretrained = {name: train(data[name]["source"], config["pretrain_steps"], s)[0] for name in names}
        for target in names:
            kshot = kshot_draw(data[target]["pool"], config["k"], s)
            test = data[target]["test"]
            base = percent(train(kshot, config["finetune_steps"], s)[0], test)
            scratch[target].append(base)
            for source in names:
                if source == target:
                    continue
                acc = percent(fine_tuned(pretrained[source], kshot, config["finetune_steps"], s), test)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DegenerateClassWarning)
                    dist = distances(data[source]["source"], kshot, config["projections"], s)
                entry = records.setdefault((source, target), {"accuracy": [], "gain": [], "distance": []})
                entry["accuracy"].append(acc)
                entry["gain"].append(acc - base)
                entry["distance"].append(dist)
            print(f"  run {s} target {target}: scratch {base:.1f}", flush=True)
        print(f"run {s}: {time.perf_counter() - run_start:.0f} s", flush=True)
    pairs = []
    for (source, target), entry in records.items():
        pairs.append(
            {
                "source": source,
                "target": target,
                "scratch": float(np.mean(scratch[target])),
                "accuracy": float(np.mean(entry["accuracy"])),
                "gain": float(np.mean(entry["gain"])),
                "gain_runs": entry["gain"],
                "distance": {m: float(np.mean([d[m] for d in entry["distance"]])) for m in METHODS},
                "distance_runs": entry["distance"],
            }
        )
    correlations = summarise(pairs, seed=0)
    seconds = time.perf_counter() - start
    settings = {
        **{key: list(v) if isinstance(v, tuple) else v for key, v in config.items()},
        "seeds": seeds,
        "units": "gain in accuracy points (percent); distances in root units on [0, 1] pixels",
        "variants": VARIANTS,
        "role_split": f"each base's pool halved per class with default_rng({ROLE_SPLIT_SEED}): source | target",
        "source": f"balanced(source half, per_class, seed={SOURCE_SEED})",
        "kshot_draw": "kshot.kshot_draw(target half, k, run)",
        "finetune": "pretrained LeNet-5, head.reset_parameters() (seeded), kshot.train for finetune_steps",
        "scratch": "kshot.train(kshot, finetune_steps, run)",
        "distances": "between the source set and the k-shot set: otdd(inner='exact', outer='exact').distance; "
        "sliced_distance(family, n_projections=projections, seed=run).value_pow ** 0.5",
    }
    payload = {
        "settings": settings,
        "pairs": pairs,
        "correlations": correlations,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
    }
    figure = "transfer_correlation.png"
    scatter(payload, args.figures / figure)
    write_json(args, NAME, payload)
    update_results_md(args, NAME, markdown(payload, None if args.quick else figure))
    for method, label in METHODS.items():
        entry = correlations[method]
        print(
            f"{label}: pooled Spearman {interval(entry['pooled']['spearman'])}, "
            f"mean per-target Spearman {entry['per_target_mean']:.2f}"
        )
    print(f"{NAME}: {seconds:.0f} s wall, peak memory {payload['peak_rss_mb']:.0f} MB")
    # the claim: a closer source transfers better (a negative correlation), for the exact reference distance
    check_direction(
        {
            "exact OTDD correlates negatively with the fine-tuning gain": correlations["otdd"]["pooled"]["spearman"][
                "value"
            ]
            < 0
        }
    )


if __name__ == "__main__":
    main()
