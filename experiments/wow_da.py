"""WoW domain adaptation: Fashion-MNIST and USPS flow to MNIST under MMD-SW; a frozen MNIST classifier scores them.

Setup (Bonet, Vauthier & Korba 2025, domain adaptation; all seeds fixed):

* Classifier: the frozen classifier of the image experiments (the packaged ensemble of three seeded
  LeNet-5s trained on the stratified half of the MNIST test split; see ``_images.py``).
* Target: ``per_class`` images per class of the held-out half of the MNIST test split.
* Sources: ``per_class`` images per class of Fashion-MNIST (test split) and of USPS (test split,
  resized to 28x28), drawn with seed ``s`` for flow ``s`` (3 flows, seeds 0, 1, 2, which also seed
  the SW directions); results are mean ± std (ddof 1) over the flows.
* Flow: ``mmd_sw_to(target, kernel="riesz")`` (½ MMD² with :math:`K = -\\mathrm{SW}_2` between
  classes, L = 500 fresh directions per step), uniform class weights, WoW gradient (the engine's
  rescaling by :math:`n_c / p_c`), heavy-ball momentum 0.9, step size 3 (in a trial on Fashion-MNIST,
  step 1 reached 88 % after 1500 steps and step 3 reached 90 % after 600).
* Scoring: every ``eval_every`` steps the flowed classes are matched to the MNIST classes by the
  exact WoW coupling (one to one, without looking at the classifier) and the classifier's accuracy
  is measured against the matched classes.
* Collapse: the median distance from a flowed particle to its nearest target image, against the
  median distance between distinct target images.

Writes ``results/wow_da.json``, the ``wow_da`` section of ``docs/results.md``,
``docs/figures/wow_da_curves.png`` and ``docs/figures/wow_da_<source>.png``.

Usage::

    python experiments/wow_da.py            # full run
    python experiments/wow_da.py --quick    # smoke test (build/quick): 1 flow of 600 steps; fails unless
                                            # the accuracy rises on both sources
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _images import (
    balanced,
    check_direction,
    classifier_sentence,
    collapse_distances,
    collapse_sentence,
    load_digits,
    mnist_classifier,
    mnist_split,
    parse_image_args,
    peak_rss_mb,
    update_results_md,
    write_json,
)

from datasetflow.models import repurpose
from datasetflow.viz import image_grid

PUBLISHED = {  # mean of 3 flows, n = 500 per class: accuracy (%) at these iteration counts
    "fashion-mnist": {"start": 15, "10k": 88, "50k": 98, "100k": 99.7, "250k": 100},
    "usps": {"start": 42, "10k": 90, "50k": 98, "100k": 99.8, "250k": 100},
}
GOAL = "≥ 95 % within 5k steps"


def _add_options(parser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="flow steps (default 1000; quick 600)")
    parser.add_argument("--per-class", type=int, default=None, help="images per class (default 100; quick 20)")
    parser.add_argument("--flows", type=int, default=None, help="flows (seeds 0..N-1) per source (default 3; quick 1)")


def main(argv=None) -> None:
    """Run both flows and write results and figures."""
    args = parse_image_args(__doc__.splitlines()[0], argv, add=_add_options)
    per_class = args.per_class or (20 if args.quick else 100)
    steps = args.steps or (600 if args.quick else 1000)
    flows = args.flows or (1 if args.quick else 3)
    eval_every = max(1, steps // 10)
    step_size, projections = 3.0, 500
    started = time.perf_counter()
    classifier, info = mnist_classifier(args.data_dir)
    _, heldout = mnist_split(args.data_dir)
    target = balanced(heldout, per_class, seed=0)
    runs, collapse = {}, {}
    for name in ("fashion-mnist", "usps"):
        flows_of = []
        for seed in range(flows):
            source = balanced(load_digits(name, args.data_dir), per_class, seed=seed)
            result = repurpose(
                source,
                target,
                classifier,
                objective="mmd-sw",
                steps=steps,
                step_size=step_size,
                naming="correspondence",
                eval_every=eval_every,
                record_every=max(1, steps // 8) if seed == 0 else None,
                functional_options={"n_projections": projections},
                seed=seed,
            )
            summary = result.to_dict()
            summary["seconds_per_step"] = result.seconds / max(1, result.flow.steps)
            summary["collapse"] = collapse_distances(result.flow.final.x, target.x)
            flows_of.append(summary)
            print(
                f"{name:>13} flow {seed}: accuracy {100 * result.accuracy_before:.1f}% -> "
                f"{100 * result.accuracy_after:.1f}% after {result.flow.steps} steps ({result.seconds:.0f}s, "
                f"{summary['seconds_per_step']:.3f} s/step); curve {[(s, round(100 * a, 1)) for s, a in result.curve]}"
            )
            if seed == 0:
                image_grid(
                    result.flow, path=args.figures / f"wow_da_{name}.png", per_class=2, title=f"{name} -> MNIST, MMD-SW"
                )
        curves = np.array([[a for _, a in f["curve"]] for f in flows_of])
        runs[name] = {
            "flows": flows_of,
            "steps": [s for s, _ in flows_of[0]["curve"]],
            "mean": curves.mean(0).tolist(),
            "std": (curves.std(0, ddof=1) if flows > 1 else np.zeros(curves.shape[1])).tolist(),
            "seconds_per_step": float(np.mean([f["seconds_per_step"] for f in flows_of])),
        }
        collapse[name] = {
            key: float(np.median([f["collapse"][key] for f in flows_of])) for key in flows_of[0]["collapse"]
        }
    seconds = time.perf_counter() - started
    _plot(runs, args.figures / "wow_da_curves.png")
    payload = {
        "settings": {
            "classifier": info,
            "per_class": per_class,
            "target": f"{len(target)} held-out MNIST images",
            "objective": "mmd_sw_to(kernel='riesz'), L=500 fresh directions per step",
            "optimizer": "momentum 0.9",
            "step_size": step_size,
            "steps": steps,
            "eval_every": eval_every,
            "matching": "exact WoW coupling between the flowed classes and the MNIST classes",
            "flows": flows,
            "seeds": list(range(flows)),
            "threads": torch.get_num_threads(),
        },
        "runs": runs,
        "collapse": collapse,
        "published": PUBLISHED,
        "goal": GOAL,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
    }
    write_json(args, "wow_da", payload)
    update_results_md(args, "wow_da", _markdown(payload))
    if args.quick:
        check_direction(
            {
                f"{name}: accuracy after {steps} steps > before": run["mean"][-1] > run["mean"][0]
                for name, run in runs.items()
            }
        )


def _plot(runs: dict, path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for name, run in runs.items():
        mean, std = 100 * np.array(run["mean"]), 100 * np.array(run["std"])
        ax.plot(run["steps"], mean, marker="o", ms=3, label=f"{name} (mean of {len(run['flows'])} flows)")
        ax.fill_between(run["steps"], mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("flow step")
    ax.set_ylabel("frozen MNIST classifier accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")


def _markdown(payload: dict) -> str:
    s = payload["settings"]
    runs = payload["runs"]
    first = next(iter(runs.values()))
    lines = [
        "## WoW domain adaptation (MMD-SW flows to MNIST)",
        "",
        f"The frozen classifier, the {classifier_sentence(s['classifier'])}, classifies {s['per_class']} images per "
        f"class of each source while they flow to {s['target']} with {s['objective']}, {s['optimizer']}, step "
        f"{s['step_size']:g}, {s['steps']} steps. Classes are matched by the {s['matching']} (one to one). "
        f"{s['flows']} flows per source (seeds {s['seeds']}: source draw and SW directions); accuracy (%) is "
        "mean ± std (ddof 1) over the flows. Command: `python experiments/wow_da.py`.",
        "",
        "| source | start | " + " | ".join(f"step {st}" for st in first["steps"][1:]) + " |",
        "|---|---|" + "---|" * (len(first["steps"]) - 1),
    ]
    for name, run in runs.items():
        cells = " | ".join(f"{100 * m:.1f} ± {100 * d:.1f}" for m, d in zip(run["mean"], run["std"], strict=True))
        lines.append(f"| {name} | {cells} |")
    reached = {}
    for name, run in runs.items():
        hit = [st for st, m in zip(run["steps"], run["mean"], strict=True) if m >= 0.95]
        reached[name] = hit[0] if hit else None
    lines += [
        "",
        "Published (mean of 3 flows, 500 images per class; accuracy % at iterations): "
        + "; ".join(
            f"{name} start {p['start']}, 10k {p['10k']}, 50k {p['50k']}, 100k {p['100k']}"
            for name, p in payload["published"].items()
        )
        + f". Goal: {payload['goal']}: "
        + "; ".join(
            f"{name} " + (f"reached at step {st}" if st is not None else f"not reached in {s['steps']} steps")
            for name, st in reached.items()
        )
        + ".",
        "",
        collapse_sentence(payload["collapse"], "the flows (medians over the flows)"),
        "",
        "Time per step: "
        + ", ".join(f"{name} {run['seconds_per_step']:.3f} s" for name, run in runs.items())
        + f" ({s['threads']} torch thread(s), as in the JSON); wall time {payload['seconds'] / 60:.1f} min, peak "
        f"memory {payload['peak_rss_mb']:.0f} MB.",
        "",
        "![accuracy during the WoW flows](figures/wow_da_curves.png)",
        "",
        "![Fashion-MNIST flowing to MNIST](figures/wow_da_fashion-mnist.png)",
        "![USPS flowing to MNIST](figures/wow_da_usps.png)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
