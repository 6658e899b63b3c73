"""How well do the sliced dataset distances track exact OTDD? Rank and linear correlation over random subset pairs.

For MNIST and CIFAR-10 (the test splits in ``../shared/data``; flattened pixels, CIFAR-10 in colour), draw
pairs of disjoint subsets with random sizes and random class proportions (Dirichlet(1) over the 10
classes), and compute for every pair

* the reference: OTDD with an exact outer problem (network simplex) and the exact inner label cost
  (W2^2 between the class clouds by exact OT), ``otdd(..., inner="exact", outer="exact").distance``;
* s-OTDD (k = 5 moments, rates 1..5), SWB1DG (eps = 0) and SWBG (eps = 1, label space: a randomized
  PCA-10 fitted on the pair) at L = 10, 100, 500, 1000, 5000 directions, reported in root units
  (``value``). The values at the smaller L are the means of the first L per-projection values of the
  L_max run: the direction bank makes them exactly the estimates ``n_projections=L`` returns.

Pixels are normalised as in the published protocol: MNIST ``(x - 0.1307) / 0.3081``, CIFAR-10 per
channel with mean (0.4914, 0.4822, 0.4465) and std (0.247, 0.243, 0.261) (on [0, 1] pixels), applied to
the data before every method. Spearman and Pearson correlations with the reference come with 95 %
percentile bootstrap intervals over pairs (2000 resamples). Wall times: the mean time per pair of
each method at each L (separate calls on the first pairs) and of the reference.

The full run is sized to about 15 minutes of a shared 2-core CPU; its pair count and subset sizes
(below the 100 pairs of 2,000-5,000 points the issue asks for) are written in the JSON and the page.
``--quick`` runs MNIST only, with small pairs and L up to 500.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _images import load_digits, parse_image_args, peak_rss_mb, update_results_md, write_json  # noqa: E402

from datasetflow import LabeledDataset, load_dataset, otdd  # noqa: E402
from datasetflow.distances import sliced_distance  # noqa: E402

NAME = "distance_correlation"
METHODS = {"sotdd": "s-OTDD", "swb1dg": "SWB1DG", "swbg": "SWBG"}
FULL = {"pairs": 20, "sizes": (500, 1000), "L": (10, 100, 500, 1000, 5000), "datasets": ("mnist", "cifar10")}
QUICK = {"pairs": 12, "sizes": (150, 300), "L": (10, 100, 500), "datasets": ("mnist",)}
TIMED_PAIRS = 2
BOOTSTRAP = 2000
NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
}
#: Published Spearman correlations (Bonet et al., printed outputs of results_correlation_subdatasets.ipynb,
#: 200 MNIST-train / CIFAR10-train pairs of 5,000-10,000 points; ../shared/spec/sliced.md §7.1).
PUBLISHED_SPEARMAN = {
    "mnist": {
        "sotdd": {10: 0.44, 100: 0.63, 500: 0.67, 1000: 0.78, 5000: 0.79},
        "swb1dg": {10: 0.58, 100: 0.84, 500: 0.90, 1000: 0.90, 5000: 0.91},
        "swbg": {10: 0.62, 100: 0.84, 500: 0.91, 1000: 0.91, 5000: 0.93},
    },
    "cifar10": {
        "sotdd": {10: 0.14, 100: 0.15, 500: 0.52, 1000: 0.52, 5000: 0.72},
        "swb1dg": {10: 0.44, 100: 0.72, 500: 0.82, 1000: 0.84, 5000: 0.89},
        "swbg": {10: 0.40, 100: 0.68, 500: 0.78, 1000: 0.84, 5000: 0.89},
    },
}


def normalised(name: str, data_dir: str | None) -> LabeledDataset:
    ds = load_dataset(name, data_dir=data_dir) if name == "cifar10" else load_digits(name, data_dir)
    mean, std = NORMALISATION[name]
    channels = len(mean)  # CIFAR-10 is stored height x width x channel: the channel is the last axis
    shift = torch.tensor(mean * (ds.dim // channels), dtype=ds.x.dtype)
    scale = torch.tensor(std * (ds.dim // channels), dtype=ds.x.dtype)
    return ds.with_features((ds.x - shift) / scale)


def draw_pairs(ds: LabeledDataset, count: int, sizes: tuple[int, int], seed: int) -> list[dict]:
    """Disjoint subset pairs: the two halves of one random split feed the two sides; random sizes and
    Dirichlet(1) class proportions (capped by what a half holds)."""
    rng = np.random.default_rng(seed)
    y = ds.y.numpy()
    halves = np.array_split(rng.permutation(len(ds)), 2)
    pools = [[h[y[h] == c] for c in range(ds.num_classes)] for h in halves]
    pairs = []
    for _ in range(count):
        sides = []
        for pool in pools:
            n = int(rng.integers(sizes[0], sizes[1] + 1))
            counts = rng.multinomial(n, rng.dirichlet(np.ones(ds.num_classes)))
            counts = np.minimum(counts, [len(p) for p in pool])
            index = np.concatenate([rng.choice(p, size=k, replace=False) for p, k in zip(pool, counts, strict=True)])
            sides.append(ds.subset(torch.as_tensor(np.sort(index))))
        pairs.append({"source": sides[0], "target": sides[1]})
    return pairs


def correlations(reference: np.ndarray, values: np.ndarray, rng: np.random.Generator) -> dict:
    """Spearman and Pearson with 95 % percentile bootstrap intervals over pairs."""
    out = {}
    for key, fn in (("spearman", stats.spearmanr), ("pearson", stats.pearsonr)):
        point = float(fn(reference, values)[0])
        boot = []
        for _ in range(BOOTSTRAP):
            pick = rng.integers(0, len(values), len(values))
            if np.ptp(values[pick]) > 0 and np.ptp(reference[pick]) > 0:
                boot.append(float(fn(reference[pick], values[pick])[0]))
        low, high = np.percentile(boot, [2.5, 97.5])
        out[key] = {"value": point, "low": float(low), "high": float(high)}
    return out


def run_dataset(name: str, config: dict, data_dir: str | None, seed: int) -> dict:
    ds = normalised(name, data_dir)
    pairs = draw_pairs(ds, config["pairs"], config["sizes"], seed)
    lmax = max(config["L"])
    reference, reference_seconds = [], []
    values = {m: {L: [] for L in config["L"]} for m in METHODS}
    seconds = {m: {L: [] for L in config["L"]} for m in METHODS}
    sizes = []
    with torch.no_grad():
        for k, pair in enumerate(pairs):
            source, target = pair["source"], pair["target"]
            sizes.append([len(source), len(target)])
            start = time.perf_counter()
            reference.append(float(otdd(source, target, inner="exact", outer="exact").distance))
            reference_seconds.append(time.perf_counter() - start)
            for method in METHODS:
                start = time.perf_counter()
                per = sliced_distance(source, target, family=method, n_projections=lmax, seed=k).per_projection
                elapsed = time.perf_counter() - start
                for L in config["L"]:
                    values[method][L].append(float(per[:L].mean()) ** 0.5)
                    if L == lmax:
                        seconds[method][L].append(elapsed)
                    elif k < TIMED_PAIRS:
                        start = time.perf_counter()
                        sliced_distance(source, target, family=method, n_projections=L, seed=k)
                        seconds[method][L].append(time.perf_counter() - start)
            print(
                f"{name} pair {k + 1}/{len(pairs)}: OTDD {reference[-1]:.4g} ({reference_seconds[-1]:.1f} s)",
                flush=True,
            )
    rng = np.random.default_rng(seed + 1)
    ref = np.asarray(reference)
    inverse_size = np.asarray([1.0 / a + 1.0 / b for a, b in sizes])
    result = {
        "pairs": len(pairs),
        "sizes": sizes,
        "reference": reference,
        "reference_seconds_mean": float(np.mean(reference_seconds)),
        "baseline_inverse_size": correlations(ref, inverse_size, rng),
        "methods": {},
    }
    for method in METHODS:
        result["methods"][method] = {
            str(L): {
                **correlations(ref, np.asarray(values[method][L]), rng),
                "seconds_mean": float(np.mean(seconds[method][L])),
                "values": values[method][L],
            }
            for L in config["L"]
        }
    return result


def interval(entry: dict) -> str:
    return f"{entry['value']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def markdown(payload: dict, figures: list[str]) -> str:
    config = payload["settings"]
    lines = [
        "## Sliced dataset distances against exact OTDD (`experiments/distance_correlation.py`)",
        "",
        f"Reference: OTDD with exact outer and exact inner OT (`otdd(inner='exact', outer='exact').distance`). "
        f"{config['pairs']} pairs of disjoint subsets per dataset (test splits), "
        f"{config['sizes'][0]}-{config['sizes'][1]} points per side with Dirichlet(1) class proportions. "
        f"**Reduced** from the 100 pairs of 2,000-5,000 points asked for, to fit "
        "~15 minutes of a shared 2-core CPU (the L = 5000 sliced runs dominate the cost). Sliced values in root "
        "units; the "
        "values at L < L_max are prefix means of the L_max run (the direction bank makes them the estimates "
        "`n_projections=L` returns). Intervals: 95 % percentile bootstrap over pairs. SWBG uses a randomized "
        "PCA-10 label space fitted on each pair (the authors use t-SNE-10).",
        "",
    ]
    for name, result in payload["datasets"].items():
        lines += [
            f"### {name} (baseline: Spearman of OTDD with 1/n1 + 1/n2 = "
            f"{interval(result['baseline_inverse_size']['spearman'])})",
            "",
            "| L | " + " | ".join(f"{label} Spearman | {label} Pearson" for label in METHODS.values()) + " |",
            "|---:|" + "---|---|" * len(METHODS),
        ]
        for L in config["L"]:
            cells = []
            for method in METHODS:
                entry = result["methods"][method][str(L)]
                cells += [interval(entry["spearman"]), interval(entry["pearson"])]
            lines.append(f"| {L} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Published Spearman (Bonet et al., 200 train-split pairs of 5,000-10,000 points, mean over bootstrap "
            "draws of 50 pairs): "
            + "; ".join(
                f"{label} " + ", ".join(f"L={L}: {PUBLISHED_SPEARMAN[name][m][L]:.2f}" for L in config["L"])
                for m, label in METHODS.items()
                if name in PUBLISHED_SPEARMAN
            )
            + ".",
            "",
            "Mean wall time per pair (s): exact OTDD "
            f"{result['reference_seconds_mean']:.2f}; "
            + "; ".join(
                f"{label} "
                + ", ".join(f"L={L}: {result['methods'][m][str(L)]['seconds_mean']:.3f}" for L in config["L"])
                for m, label in METHODS.items()
            )
            + ".",
            "",
        ]
    lines += [
        "**Reading.** These pairs differ in their class proportions (Dirichlet(1)), so their distances spread much "
        "more than in the published protocol, where the pairs are iid splits of one dataset and only size and "
        "sampling noise vary: a ranking is easier to recover here, and the numbers are not comparable one to one.",
    ]
    for name, result in payload["datasets"].items():
        baseline = result["baseline_inverse_size"]["spearman"]["value"]
        if abs(baseline) > 0.3:
            lines[-1] += (
                f" On {name}, exact OTDD itself correlates with 1/n1 + 1/n2 (Spearman {baseline:.2f}): at a few "
                "hundred points per class in this dimension its finite-sample bias, which the sliced distances do "
                "not share (1-D transports converge at rate n^-1/2 in any dimension), competes with the "
                "class-proportion signal."
            )
            top = str(max(config["L"]))
            flat = [
                label
                for m, label in METHODS.items()
                if "100" in result["methods"][m]
                and abs(
                    result["methods"][m][top]["spearman"]["value"] - result["methods"][m]["100"]["spearman"]["value"]
                )
                < 0.1
            ]
            if flat:
                lines[-1] += (
                    f" For {', '.join(flat)} the correlation moves by less than 0.1 from L = 100 to L = {top}: there "
                    "the number of projections is not the limiting factor."
                )
            lines[-1] += (
                " The published CIFAR-10 runs use 5,000-10,000 points and a random convolution feature map "
                "(not implemented here)."
            )
    lines += [""]
    lines += [f"![{Path(f).stem}](figures/{Path(f).name})" for f in figures]
    lines += ["", f"Total {payload['seconds']:.0f} s, peak memory {payload['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines)


def scatter(payload: dict, args) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    from datasetflow.viz import plot_distance_scatter

    paths = []
    config = payload["settings"]
    shown = [L for L in (100, 500, max(config["L"])) if L in config["L"]]
    for method, label in METHODS.items():
        panels = []
        for name, result in payload["datasets"].items():
            for L in dict.fromkeys(shown):
                entry = result["methods"][method][str(L)]
                panels.append(
                    {
                        "x": result["reference"],
                        "y": entry["values"],
                        "title": f"{name}, {label}, L={L}: Spearman {entry['spearman']['value']:.2f}",
                        "ylabel": f"{label} (root units)",
                    }
                )
        path = args.figures / f"{NAME}_{method}.png"
        plot_distance_scatter(panels, xlabel="exact OTDD", path=path, columns=len(dict.fromkeys(shown)))
        paths.append(str(path))
    return paths


def main(argv=None) -> None:
    args = parse_image_args(
        __doc__.splitlines()[0],
        argv,
        add=lambda parser: parser.add_argument(
            "--render", action="store_true", help="rewrite the page and figures from the saved JSON (no computation)"
        ),
    )
    if args.render:
        import json

        payload = json.loads((args.results / f"{NAME}.json").read_text())
        update_results_md(args, NAME, markdown(payload, scatter(payload, args)))
        return
    config = QUICK if args.quick else FULL
    start = time.perf_counter()
    datasets = {name: run_dataset(name, config, args.data_dir, seed=11) for name in config["datasets"]}
    payload = {
        "settings": {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
            "reference": "otdd(inner='exact', outer='exact').distance",
            "sliced": {
                "sotdd": "n_moments=5, rates='sotdd'",
                "swb1dg": "eps=0",
                "swbg": "eps=1, label_map='pca' (randomized PCA-10 per pair)",
            },
            "units": "root units (value); OTDD distance",
            "normalisation": {k: {"mean": v[0], "std": v[1]} for k, v in NORMALISATION.items()},
            "bootstrap": BOOTSTRAP,
            "reduction": "pairs and sizes reduced from 100 pairs of 2,000-5,000 points to fit ~15 CPU minutes",
        },
        "published_spearman": PUBLISHED_SPEARMAN,
        "datasets": datasets,
    }
    payload["seconds"] = time.perf_counter() - start
    payload["peak_rss_mb"] = peak_rss_mb()
    figures = scatter(payload, args)
    write_json(args, NAME, payload)
    for name, result in datasets.items():
        for method, label in METHODS.items():
            row = ", ".join(f"L={L}: {result['methods'][method][str(L)]['spearman']['value']:.2f}" for L in config["L"])
            print(f"{name} {label} Spearman {row}")
    update_results_md(args, NAME, markdown(payload, figures))


if __name__ == "__main__":
    main()
