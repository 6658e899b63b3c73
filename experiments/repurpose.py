"""Model re-purposing (paper Table 1): a frozen MNIST LeNet-5 classifies USPS and Fashion-MNIST after
they flow to MNIST.

Setup (all seeds fixed):

* Classifier: LeNet-5 trained on the stratified half of the MNIST *test* split (the train split is
  not available offline; see ``_images.py``), then frozen.
* Target: ``per_class`` images per class of the other (held-out) half of the MNIST test split.
* Sources: ``per_class`` images per class of the USPS test split (resized to 28x28) and of the
  Fashion-MNIST test split.
* Flow: ``otdd_to(target)`` (½ OTDD², Gaussian label cost, debiased Sinkhorn with the default
  relative regularisation), fd-fl dynamics, SGD with step 0.5, uniform class masses on both sides
  (USPS classes have 147 to 200 images here; proportional masses would push part of the larger
  classes into other classes' regions).
* Supervised: the flow uses the source labels. Unsupervised: it uses k-means pseudo-labels (10
  clusters) of the L2-normalised 84-d features of the frozen classifier, renamed after the MNIST
  classes by the OTDD label distances (``align_pseudo_labels``); source labels only score.
* Scoring: USPS digits are scored by name. Garments have no digit names: before the flow the
  §6.4 class correspondence names them, after it the WoW coupling of the flowed classes to the
  MNIST classes (see ``datasetflow.models.repurpose``).

Writes ``results/repurpose.json``, the ``repurpose`` section of ``docs/results.md``,
``docs/figures/repurpose_<source>.png`` (image grids over time) and ``repurpose_curves.png``.

Usage::

    python experiments/repurpose.py            # full run
    python experiments/repurpose.py --quick    # smoke test (build/quick)
    python experiments/repurpose.py --paper-size [--paper-steps N]   # 5,000 particles (repurpose_paper_size.py)
"""

from __future__ import annotations

import time

import torch
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

PUBLISHED = {  # paper Table 1, accuracy (%) of the MNIST model on 5k flowed samples
    "usps": {"before": None, "supervised": 99.1, "unsupervised": 66.4},
    "fashion-mnist": {"before": None, "supervised": 99.1, "unsupervised": 54.9},
}
GOALS = {
    "usps": {"supervised": 99.0, "unsupervised": 85.0},
    "fashion-mnist": {"supervised": 99.0, "unsupervised": 70.0},
}


def main(argv=None) -> None:
    """Run the four flows (two sources x supervised/unsupervised) and write results and figures."""
    args = parse_image_args(__doc__.splitlines()[0], argv, add=_paper_size_flags)
    if args.paper_size:
        import repurpose_paper_size

        repurpose_paper_size.run(args, steps=args.paper_steps)
        return
    per_class, steps, eval_every = (30, 8, 4) if args.quick else (200, 60, 5)
    started = time.perf_counter()
    classifier, info = mnist_classifier(args.data_dir)
    _, heldout = mnist_split(args.data_dir)
    target = balanced(heldout, per_class, seed=0)

    def embedding(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(classifier.model.features(x), dim=1)

    runs: dict[str, dict] = {}
    for name in ("usps", "fashion-mnist"):
        source = balanced(load_digits(name, args.data_dir), per_class, seed=0)
        runs[name] = {"n": len(source)}
        for mode, labels in (("supervised", "true"), ("unsupervised", "kmeans")):
            result = repurpose(
                source,
                target,
                classifier,
                objective="otdd",
                steps=steps,
                flow_labels=labels,
                embedding=embedding if labels == "kmeans" else None,
                eval_every=eval_every,
                record_every=max(1, steps // 8) if mode == "supervised" else None,
                seed=0,
            )
            summary = result.to_dict()
            runs[name][mode] = summary
            print(
                f"{name:>13} {mode:>12}: accuracy {100 * result.accuracy_before:.1f}% -> "
                f"{100 * result.accuracy_after:.1f}% ({result.flow.steps} steps, {result.seconds:.0f}s"
                + (f", pseudo-labels {100 * result.pseudo_label_accuracy:.1f}% right" if labels == "kmeans" else "")
                + ")"
            )
            if mode == "supervised":
                grid = args.figures / f"repurpose_{name}.png"
                image_grid(result.flow, path=grid, per_class=2, title=f"{name} -> MNIST (OTDD flow)")
    seconds = time.perf_counter() - started
    curves = args.figures / "repurpose_curves.png"
    _plot_curves(runs, curves)
    payload = {
        "settings": {
            "classifier": info,
            "per_class": per_class,
            "target": f"{len(target)} held-out MNIST images",
            "objective": "otdd (1/2 OTDD^2, gaussian label cost, debiased sinkhorn)",
            "dynamics": "fd-fl",
            "class_weights": "uniform on both sides",
            "optimizer": "sgd",
            "step_size": 0.5,
            "steps": steps,
            "pseudo_labels": "k-means (10 clusters) on L2-normalised LeNet-5 features, aligned by OTDD label distances",
        },
        "runs": runs,
        "published": PUBLISHED,
        "goals": GOALS,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
    }
    write_json(args, "repurpose", payload)
    update_results_md(args, "repurpose", _markdown(payload))


def _paper_size_flags(parser) -> None:
    parser.add_argument(
        "--paper-size", action="store_true", help="5,000 particles per source (see repurpose_paper_size.py)"
    )
    parser.add_argument("--paper-steps", type=int, default=None, help="steps of the --paper-size run (default 1000)")


def _plot_curves(runs: dict, path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for name, modes in runs.items():
        for mode, style in (("supervised", "-"), ("unsupervised", "--")):
            steps, acc = zip(*modes[mode]["curve"], strict=True)
            ax.plot(steps, [100 * a for a in acc], style, marker="o", ms=3, label=f"{name}, {mode}")
    ax.set_xlabel("flow step")
    ax.set_ylabel("frozen MNIST classifier accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")


def _markdown(payload: dict) -> str:
    s = payload["settings"]
    lines = [
        "## Model re-purposing (paper Table 1)",
        "",
        f"A frozen LeNet-5 trained on {s['classifier']['train_set']} (held-out MNIST accuracy "
        f"{100 * s['classifier']['heldout_accuracy']:.1f}%) classifies {s['per_class']} images per class of each "
        f"source (at most; USPS has 147 to 359 per class) before and after an OTDD flow to {s['target']} "
        f"({s['steps']} SGD steps of size {s['step_size']}, fd-fl, class masses {s['class_weights']}). "
        f"Unsupervised flows use {s['pseudo_labels']}. Command: `python experiments/repurpose.py`.",
        "",
        "| source | before | supervised (ours) | supervised (paper) | unsupervised (ours) | unsupervised (paper) "
        "| pseudo-labels right |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, modes in payload["runs"].items():
        pub = payload["published"][name]
        sup, uns = modes["supervised"], modes["unsupervised"]
        lines.append(
            f"| {name} | {100 * sup['accuracy_before']:.1f} | **{100 * sup['accuracy_after']:.1f}** | "
            f"{pub['supervised']} | **{100 * uns['accuracy_after']:.1f}** | {pub['unsupervised']} | "
            f"{100 * uns['pseudo_label_accuracy']:.1f} |"
        )
    goals = payload["goals"]
    lines += [
        "",
        "Goals: supervised ≥ 99 for both; unsupervised ≥ "
        f"{goals['usps']['unsupervised']:g} (USPS) and ≥ {goals['fashion-mnist']['unsupervised']:g} (Fashion-MNIST).",
        "Accuracy is in %. Garments are scored through the class correspondence (before) and the WoW class "
        "matching (after); unsupervised accuracy cannot exceed much the share of samples whose pseudo-label "
        "cluster is matched to their class. *Pseudo-labels right* is the share of samples whose cluster's "
        "aligned MNIST name is the name their true class gets (by name for USPS; for garments the §6.4 "
        "correspondence, an arbitrary naming, so that column says little there). The supervised flows reach "
        "the frozen classifier's own held-out accuracy (98.6 %), which bounds them; the paper's classifier was "
        "trained on 60,000 images.",
        "",
        "The issue's performance target (5,000 particles, 1,000 steps in 10 min) is not met: the USPS test split "
        "has 2,007 images, so these flows move at most 2,000 particles, for 60 steps (the accuracy curves are "
        "flat after about 30), at 1.7 to 4.3 s per step on one thread (4.3 with the WoW class matching scored "
        "every 5 steps). OTDD flows of 5,000 particles would cost "
        "several seconds per step. At the same size (10 x 200 x 784) an MMD-SW step costs about 11 times less "
        "than an OTDD step (benchmarks.md: 0.09 s against 1.03 s on two threads).",
        "",
        f"Wall time {payload['seconds'] / 60:.1f} min for the four flows (classifier loading included), peak "
        f"memory {payload['peak_rss_mb']:.0f} MB, {environment()['threads']} torch threads.",
        "",
        "![accuracy during the flows](figures/repurpose_curves.png)",
        "",
        "![USPS flowing to MNIST](figures/repurpose_usps.png)",
        "![Fashion-MNIST flowing to MNIST](figures/repurpose_fashion-mnist.png)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
