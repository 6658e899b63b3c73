"""The paper-size re-purposing run (paper Table 1 size): 5,000 USPS *train* images (never seen by the classifier)
and 5,000 of the 10,000 Fashion-MNIST test images flow to MNIST; a frozen MNIST LeNet-5 scores them.

Called by ``python experiments/repurpose.py --paper-size [--paper-steps N]``.

* Classifier and target: as in ``repurpose.py`` (``mnist_classifier``, the held-out half of the MNIST test
  split, all of it: 5,001 images).
* Sources: 5,000 images drawn without replacement (seed 0) from the USPS train split (7,291, resized to
  28 x 28) and from the Fashion-MNIST test split (10,000).
* Objective: ½ OTDD² to the target (supervised: the source labels), with the **minibatch** outer estimator
  (Fatras et al. 2020): every step, the particles are split into disjoint class-stratified minibatches of
  ``BATCH`` (each particle moves once per step, towards its minibatch's target points), each paired with a
  fresh target minibatch and solved exactly; label distances are the diagonal Gaussian (Bures) ones between
  the whole particle classes and the whole target classes. SGD, step 0.5, fd-fl, uniform class masses.
* Writes ``results/repurpose_paper_size.json`` and the ``repurpose_paper_size`` section of ``docs/results.md``.
"""

from __future__ import annotations

import os

import torch
from _images import environment, load_digits, mnist_classifier, mnist_split, peak_rss_mb, update_results_md, write_json

from datasetflow import GaussianLabelCost
from datasetflow.models import repurpose

PARTICLES = 5000
STEPS = 1000
BATCH = 500
GOAL_MINUTES = 10.0
ESTIMATOR = {"outer": "minibatch", "batch_size": BATCH, "seed": 0}


def _draw(dataset, size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return dataset.take(torch.randperm(len(dataset), generator=generator)[:size])


def run(args, steps: int | None = None) -> dict:
    """Flow both sources for ``steps`` (default 1,000) steps; write the JSON and the results section."""
    steps = STEPS if steps is None else int(steps)
    particles = 300 if args.quick else PARTICLES
    if args.quick:
        steps = min(steps, 4)
    eval_every = max(1, steps // 10)
    classifier, info = mnist_classifier(args.data_dir)
    _, heldout = mnist_split(args.data_dir)
    target = _draw(heldout, particles, 1) if args.quick else heldout
    label_cost = GaussianLabelCost(diagonal=True)
    load_before = os.getloadavg()
    runs = {}
    for name, split in (("usps", "train"), ("fashion-mnist", "test")):
        source = _draw(load_digits(name, args.data_dir, split=split), particles, 0)
        options = dict(ESTIMATOR, batch_size=min(BATCH, particles))
        result = repurpose(
            source,
            target,
            classifier,
            objective="otdd",
            steps=steps,
            eval_every=eval_every,
            functional_options={"inner": label_cost, **options},
            seed=0,
        )
        runs[name] = {
            "split": split,
            "particles": len(source),
            "steps": result.flow.steps,
            "seconds": result.seconds,
            "seconds_per_step": result.seconds / max(result.flow.steps, 1),
            "accuracy_before": result.accuracy_before,
            "accuracy_after": result.accuracy_after,
            "accuracy_curve": [[s, a] for s, a in result.curve],
            "estimator": "otdd minibatch (exact OT per minibatch) " + str(options),
            "label_cost": repr(label_cost),
            "objective_first_last": [result.flow.objective[0], result.flow.objective[-1]],
        }
        print(
            f"{name:>13}: {len(source)} particles, {result.flow.steps} steps, {result.seconds:.0f}s "
            f"({runs[name]['seconds_per_step']:.2f} s/step): accuracy {100 * result.accuracy_before:.1f}% -> "
            f"{100 * result.accuracy_after:.1f}%",
            flush=True,
        )
    payload = {
        "settings": {
            "classifier": info,
            "target": f"{len(target)} held-out MNIST images",
            "objective": "1/2 OTDD^2, supervised, fd-fl, SGD step 0.5, uniform class masses",
            "requested_steps": STEPS,
            "steps": steps,
            "reduced": steps < STEPS,
            "goal_minutes_per_dataset": GOAL_MINUTES,
        },
        "runs": runs,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "environment": environment(),
        "peak_rss_mb": peak_rss_mb(),
    }
    write_json(args, "repurpose_paper_size", payload)
    update_results_md(args, "repurpose_paper_size", _markdown(payload))
    return payload


def _markdown(payload: dict) -> str:
    s = payload["settings"]
    lines = [
        "## Paper-size re-purposing (5,000 particles)",
        "",
        f"5,000 USPS **train** images (never seen by the classifier) and 5,000 of the 10,000 Fashion-MNIST test "
        f"images flow to {s['target']} ({s['objective']}); the frozen classifier ({s['classifier']['train_set']}) "
        f"scores them. Command: `python experiments/repurpose.py --paper-size"
        + (f" --paper-steps {s['steps']}`." if s["reduced"] else "`."),
        "",
        "| source | particles | steps | estimator | s/step | minutes | accuracy before | accuracy after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in payload["runs"].items():
        lines.append(
            f"| {name} ({run['split']}) | {run['particles']} | {run['steps']} | minibatch OTDD, B = "
            f"{ESTIMATOR['batch_size']} | {run['seconds_per_step']:.2f} | {run['seconds'] / 60:.1f} | "
            f"{100 * run['accuracy_before']:.1f} | **{100 * run['accuracy_after']:.1f}** |"
        )
    lines += ["", "Accuracy (%) during the flows:", ""]
    for name, run in payload["runs"].items():
        curve = ", ".join(f"{step}: {100 * acc:.1f}" for step, acc in run["accuracy_curve"])
        lines.append(f"- {name}: {curve}")
    load = payload["load_average_before"]
    lines += [
        "",
        f"Estimator: the minibatch OTDD (disjoint class-stratified particle minibatches of {ESTIMATOR['batch_size']}, "
        "a fresh target minibatch each, exact OT per pair, diagonal Gaussian label distances between whole "
        "classes). It is biased (its value is above OTDD², not 0 between identical datasets) but each particle "
        "moves towards the target points of its minibatch's optimal coupling at every step.",
        "",
        f"Machine: {payload['environment']['threads']} torch threads on a CPU shared with other jobs, load "
        f"average {load[0]:.1f} (1 min) before the run and {payload['load_average_after'][0]:.1f} after; peak "
        f"memory {payload['peak_rss_mb']:.0f} MB.",
    ]
    lines.append(
        "Times include the accuracy evaluations (every tenth of the run); for Fashion-MNIST each evaluation "
        "also matches the flowed classes to the MNIST classes (WoW, exact inner OT), which the USPS run (scored "
        "by digit names) does not need."
    )
    minutes = [run["seconds"] / 60 for run in payload["runs"].values()]
    goal = s["goal_minutes_per_dataset"]
    if s["reduced"]:
        per_step = max(run["seconds_per_step"] for run in payload["runs"].values())
        lines.append(
            f"**Reduced run**: {s['steps']} of the requested {s['requested_steps']} steps (at the measured "
            f"{per_step:.2f} s per step on this loaded machine, 1,000 steps would take about "
            f"{per_step * s['requested_steps'] / 60:.0f} min per dataset; the goal is {goal:g} min)."
        )
    else:
        met = all(m <= goal for m in minutes)
        lines.append(f"Goal ≤ {goal:g} min per dataset: {'met' if met else 'not met'}.")
    lines += _against_small_run(payload)
    return "\n".join(lines)


def _against_small_run(payload: dict) -> list[str]:
    """The issue's second goal: accuracy after the flow not below the 2,000-particle run's (results/repurpose.json)."""
    import json
    from pathlib import Path

    small_path = Path(__file__).resolve().parents[1] / "results" / "repurpose.json"
    if not small_path.is_file():
        return []
    small = json.loads(small_path.read_text())["runs"]
    parts, met = [], True
    for name, run in payload["runs"].items():
        if name not in small or "supervised" not in small[name]:
            continue
        reference = small[name]["supervised"]["accuracy_after"]
        met &= run["accuracy_after"] >= reference
        parts.append(f"{name} {100 * run['accuracy_after']:.1f} % against {100 * reference:.1f} %")
    if not parts:
        return []
    verdict = (
        "met"
        if met
        else (
            "**not met**, probably (not measured) because the minibatch estimator moves each particle towards a "
            "fresh random target minibatch at every step, so the particles keep a spread around the target images "
            "instead of settling on them as the full Sinkhorn flow of the 2,000-particle run does "
            "(`results/repurpose.json`, 60 steps)"
        )
    )
    return [
        f"Accuracy after the flow not below the 2,000-particle run's supervised flow ({'; '.join(parts)}): {verdict}."
    ]
