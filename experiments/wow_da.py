"""WoW domain adaptation: Fashion-MNIST and USPS flow to MNIST under MMD-SW; a frozen MNIST classifier scores them.

Setup (Bonet, Vauthier & Korba 2025, domain adaptation; all seeds fixed):

* Classifier: the frozen LeNet-5 of the image experiments (trained on the stratified half of the
  MNIST test split; see ``_images.py``).
* Target: ``per_class`` images per class of the held-out half of the MNIST test split.
* Sources: ``per_class`` images per class of Fashion-MNIST (test split) and of USPS (test split,
  resized to 28x28).
* Flow: ``mmd_sw_to(target, kernel="riesz")`` (½ MMD² with :math:`K = -\\mathrm{SW}_2` between
  classes, L = 500 fresh directions per step), uniform class weights, WoW gradient (the engine's
  rescaling by :math:`n_c / p_c`), heavy-ball momentum 0.9, step size 3 (in a trial on Fashion-MNIST,
  step 1 reached 88 % after 1500 steps and step 3 reached 90 % after 600).
* Scoring: every ``eval_every`` steps the flowed classes are matched to the MNIST classes by the
  exact WoW coupling and the classifier's accuracy is measured against the matched classes.

Writes ``results/wow_da.json``, the ``wow_da`` section of ``docs/results.md``,
``docs/figures/wow_da_curves.png`` and ``docs/figures/wow_da_<source>.png``.

Usage::

    python experiments/wow_da.py            # full run
    python experiments/wow_da.py --quick    # smoke test (build/quick)
"""

from __future__ import annotations

import time

from _images import (
    balanced,
    environment,
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
    parser.add_argument("--steps", type=int, default=None, help="flow steps (default 2000; quick 60)")
    parser.add_argument("--per-class", type=int, default=None, help="images per class (default 100; quick 20)")


def main(argv=None) -> None:
    """Run both flows and write results and figures."""
    args = parse_image_args(__doc__.splitlines()[0], argv, add=_add_options)
    per_class = args.per_class or (20 if args.quick else 100)
    steps = args.steps or (60 if args.quick else 2000)
    eval_every = max(1, steps // 10)
    step_size, projections = 3.0, 500
    started = time.perf_counter()
    classifier, info = mnist_classifier(args.data_dir)
    _, heldout = mnist_split(args.data_dir)
    target = balanced(heldout, per_class, seed=0)
    runs = {}
    for name in ("fashion-mnist", "usps"):
        source = balanced(load_digits(name, args.data_dir), per_class, seed=0)
        result = repurpose(
            source,
            target,
            classifier,
            objective="mmd-sw",
            steps=steps,
            step_size=step_size,
            naming="correspondence",
            eval_every=eval_every,
            record_every=max(1, steps // 8),
            functional_options={"n_projections": projections},
            seed=0,
        )
        runs[name] = result.to_dict()
        runs[name]["seconds_per_step"] = result.seconds / max(1, result.flow.steps)
        print(
            f"{name:>13}: accuracy {100 * result.accuracy_before:.1f}% -> {100 * result.accuracy_after:.1f}% "
            f"after {result.flow.steps} steps ({result.seconds:.0f}s, {runs[name]['seconds_per_step']:.3f} s/step); "
            f"curve {[(s, round(100 * a, 1)) for s, a in result.curve]}"
        )
        image_grid(result.flow, path=args.figures / f"wow_da_{name}.png", per_class=2, title=f"{name} -> MNIST, MMD-SW")
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
        },
        "runs": runs,
        "published": PUBLISHED,
        "goal": GOAL,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
    }
    write_json(args, "wow_da", payload)
    update_results_md(args, "wow_da", _markdown(payload))


def _plot(runs: dict, path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for name, run in runs.items():
        steps, acc = zip(*run["curve"], strict=True)
        ax.plot(steps, [100 * a for a in acc], marker="o", ms=3, label=name)
    ax.set_xlabel("flow step")
    ax.set_ylabel("frozen MNIST classifier accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")


def _markdown(payload: dict) -> str:
    s = payload["settings"]
    lines = [
        "## WoW domain adaptation (MMD-SW flows to MNIST)",
        "",
        f"The frozen LeNet-5 ({s['classifier']['train_set']}; {100 * s['classifier']['heldout_accuracy']:.1f}% on "
        f"held-out MNIST) classifies {s['per_class']} images per class of each source while they flow to "
        f"{s['target']} with {s['objective']}, {s['optimizer']}, step {s['step_size']:g}, {s['steps']} steps. "
        f"Classes are matched by the {s['matching']}. Command: `python experiments/wow_da.py`.",
        "",
        "| source | start | " + " | ".join(f"step {st}" for st, _ in payload["runs"]["usps"]["curve"][1:]) + " |",
        "|---|---|" + "---|" * (len(payload["runs"]["usps"]["curve"]) - 1),
    ]
    for name, run in payload["runs"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * a:.1f}" for _, a in run["curve"]) + " |")
    lines += [
        "",
        "Published (mean of 3 flows, 500 images per class; accuracy % at iterations): "
        + "; ".join(
            f"{name} start {p['start']}, 10k {p['10k']}, 50k {p['50k']}, 100k {p['100k']}"
            for name, p in payload["published"].items()
        )
        + f". Goal: {payload['goal']}.",
        "",
        "Time per step: "
        + ", ".join(f"{name} {run['seconds_per_step']:.3f} s" for name, run in payload["runs"].items())
        + f" ({environment()['threads']} torch thread(s)); wall time {payload['seconds'] / 60:.1f} min, peak memory "
        f"{payload['peak_rss_mb']:.0f} MB.",
        "",
        "![accuracy during the WoW flows](figures/wow_da_curves.png)",
        "",
        "![Fashion-MNIST flowing to MNIST](figures/wow_da_fashion-mnist.png)",
        "![USPS flowing to MNIST](figures/wow_da_usps.png)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
