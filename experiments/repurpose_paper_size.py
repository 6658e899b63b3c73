"""The paper-size re-purposing run (paper Table 1 size): 5,000 USPS *train* images (never seen by the classifier)
and 5,000 of the 10,000 Fashion-MNIST test images flow to MNIST; a frozen MNIST LeNet-5 scores them.

Called by ``python experiments/repurpose.py --paper-size [--paper-steps N]``.

* Classifier and target: as in ``repurpose.py`` (``mnist_classifier``, the held-out half of the MNIST test
  split, all of it: 5,001 images).
* Sources: 5,000 images drawn without replacement (seed 0) from the USPS train split (7,291, resized to
  28 x 28) and from the Fashion-MNIST test split (10,000).
* Objective: ½ OTDD² to the target (supervised: the source labels), SGD step 0.5, fd-fl, uniform class masses,
  with the estimators of ``FIRST`` (all but the last ``FINAL_STEPS`` steps) and ``FINAL`` (see ``flow_phases``):

  - ``{"B": B}``: the **minibatch** outer estimator (Fatras et al. 2020): every step, the particles are split into
    disjoint class-stratified minibatches of ``B`` (each particle moves once per step, towards its minibatch's
    target points), each paired with a fresh class-stratified target minibatch and solved exactly; label
    distances are the diagonal Gaussian (Bures) ones between the whole particle classes and the whole target
    classes. ``"matched": True``: with :class:`ClassMatchedLabelCost` (the plan kept on the one-to-one class
    assignment of the label distances); ``"fixed": True``: the same minibatch pairs at every step; ``"reg": f``:
    entropic OT per minibatch at ``f`` x the relative regularisation.
  - ``{"sinkhorn": True}``: the 2,000-particle run's debiased Sinkhorn OTDD on all points (warm-started).
* Writes ``results/repurpose_paper_size.json`` and the ``repurpose_paper_size`` section of ``docs/results.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from _images import (
    check_direction,
    environment,
    load_digits,
    mnist_classifier,
    mnist_split,
    peak_rss_mb,
    update_results_md,
    write_json,
)

from datasetflow import GaussianLabelCost
from datasetflow.functionals.otdd_target import OTDDToTarget
from datasetflow.models import repurpose
from datasetflow.solvers.api import DEFAULT_RELATIVE_REG

PARTICLES = 5000
STEPS = 1000
GOAL_MINUTES = 10.0
STEP_SIZE = 0.5
#: the estimator of the first ``STEPS - FINAL_STEPS`` steps and of the last ``FINAL_STEPS`` (see ``flow_phases``)
FIRST = {"B": 500, "matched": True}
FINAL = {"sinkhorn": True}
FINAL_STEPS = 0


PROBE_DIR = Path(__file__).resolve().parents[1] / "results" / "repurpose_paper_size_probe"
SPLITS = {"usps": "train", "fashion-mnist": "test"}
LABEL_COST = GaussianLabelCost(diagonal=True)


def _draw(dataset, size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return dataset.take(torch.randperm(len(dataset), generator=generator)[:size])


def load_problem(name: str, data_dir, particles: int = PARTICLES, quick: bool = False):
    """``(classifier, source, target, classifier info)``: ``particles`` images of ``name`` (seed 0) and the target
    (the 5,001 held-out MNIST images; ``quick``: ``particles`` of them)."""
    classifier, info = mnist_classifier(data_dir)
    _, heldout = mnist_split(data_dir)
    target = _draw(heldout, particles, 1) if quick else heldout
    source = _draw(load_digits(name, data_dir, split=SPLITS[name]), particles, 0)
    return classifier, source, target, info


def relative_reg(source, target, fraction: float = DEFAULT_RELATIVE_REG) -> float:
    """``fraction`` x the mean OTDD cost between ``source`` and ``target`` (uniform class masses), the entropic
    regularisation the 2,000-particle run's Sinkhorn fixes at its first step."""
    a_data, b_data = source.with_class_weights("uniform"), target.with_class_weights("uniform")
    a, b = a_data.weights.double(), b_data.weights.double()
    x, y = a_data.x.double(), b_data.x.double()
    feature = float(a @ (x * x).sum(1) + b @ (y * y).sum(1) - 2 * (a @ x) @ (b @ y))
    labels = LABEL_COST.between(a_data, b_data).double()
    mass_a = torch.zeros(a_data.num_classes, dtype=torch.float64).index_add(0, a_data.y, a)
    mass_b = torch.zeros(b_data.num_classes, dtype=torch.float64).index_add(0, b_data.y, b)
    return fraction * (feature + float(mass_a @ labels @ mass_b))


class ClassMatchedLabelCost(GaussianLabelCost):
    """The diagonal Gaussian label cost, with the class pairs outside the optimal one-to-one class assignment (the
    Hungarian algorithm on the source-target label distances, recomputed at every evaluation) lifted by a constant
    ``LIFT`` x the largest label distance. With equal class masses on both sides and class-stratified minibatches,
    the exact OT plan then keeps every class's mass on its assigned class: the lifted entries carry no mass, so the
    value and gradients are those of the OTDD cost restricted to the class assignment (an upper bound of OTDD²)."""

    name = "gaussian-class-matched"
    LIFT = 10.0

    def __init__(self) -> None:
        super().__init__(diagonal=True)

    def __repr__(self) -> str:
        return "ClassMatchedLabelCost(GaussianLabelCost(diagonal=True), Hungarian class assignment)"

    def _compare(self, stats1, stats2):
        from scipy.optimize import linear_sum_assignment

        matrix = super()._compare(stats1, stats2)
        if stats2 is None:
            return matrix
        rows, cols = linear_sum_assignment(matrix.detach().double().cpu().numpy())
        lift = torch.ones_like(matrix)
        lift[torch.as_tensor(rows), torch.as_tensor(cols)] = 0
        return matrix + lift * (self.LIFT * float(matrix.detach().max()))


MATCHED_COST = ClassMatchedLabelCost()


class _FixedDraws(OTDDToTarget):
    """``otdd_to`` whose minibatch draws are the same at every step (the generator is re-seeded each time)."""

    def _rng(self, like):
        return torch.Generator(device=like.device).manual_seed(self.seed)


def _functional_options(phase: dict, reg: float) -> dict:
    if phase.get("sinkhorn"):
        return {"inner": LABEL_COST, "outer": "sinkhorn", "reg": reg}
    inner = MATCHED_COST if phase.get("matched") else LABEL_COST
    options = {"inner": inner, "outer": "minibatch", "batch_size": phase["B"], "seed": 0}
    if phase.get("reg"):
        options["reg"] = reg * float(phase["reg"])
    return options


def flow_phases(source, target, classifier, phases, *, reg: float, eval_every: int) -> dict:
    """Flow ``source`` through consecutive ``phases`` ``(steps, estimator, step size)`` (each continues from the
    last one's particles); returns the joined accuracy curve, the flow seconds, the final features and the
    objective values of each phase."""
    import sys

    repurpose_module = sys.modules[repurpose.__module__]  # the module, shadowed by its function in the package

    curve, seconds, done, objectives, current, phase_seconds = [], 0.0, 0, [], source, []
    result = None
    for steps, phase, step_size in phases:
        original = repurpose_module.otdd_to
        if phase.get("fixed"):
            repurpose_module.otdd_to = _FixedDraws
        try:
            result = repurpose(
                current,
                target,
                classifier,
                objective="otdd",
                steps=steps,
                step_size=step_size,
                eval_every=eval_every,
                functional_options=_functional_options(phase, reg),
                seed=0,
            )
        finally:
            repurpose_module.otdd_to = original
        curve += [[done + s, a] for s, a in result.curve if not (done and s == 0)]
        seconds += result.seconds
        phase_seconds.append(result.seconds)
        done += result.flow.steps
        objectives.append([result.flow.objective[0], result.flow.objective[-1]])
        current = result.flow.final
    return {
        "curve": curve,
        "seconds": seconds,
        "phase_seconds": phase_seconds,
        "steps": done,
        "accuracy_after": result.accuracy_after,
        "final_x": result.flow.final.x.detach(),
        "objective_first_last": objectives,
    }


def nearest_target_report(final_x: torch.Tensor, target, classifier, labels: torch.Tensor | None = None) -> dict:
    """The median distance from a particle to its nearest target image, the classifier's accuracy on those
    nearest target images against their own MNIST labels (what a flow that collapsed every particle onto its
    nearest target image would score) and, given the particles' ``labels``, the fraction of particles whose
    nearest target image has the MNIST class most of their class's particles are nearest to (1 - the fraction
    carried to another class)."""
    from datasetflow.models import predict

    x, y = final_x.double().cpu(), target.x.double().cpu()
    nearest = torch.cdist(x, y).min(1)
    predicted = predict(classifier, target.x).cpu()
    right = (predicted == target.y.cpu()).double()
    report = {
        "particle_to_nearest_target": float(nearest.values.median()),
        "classifier_on_nearest_targets": float(right[nearest.indices].mean()),
        "distinct_nearest_targets": int(nearest.indices.unique().numel()),
    }
    if labels is not None:
        labels, near_class = labels.cpu(), target.y.cpu()[nearest.indices]
        agree = 0
        for c in labels.unique().tolist():
            classes = near_class[labels == c]
            agree += int((classes == torch.mode(classes).values).sum())
        report["nearest_target_in_class"] = agree / len(labels)
    return report


def schedule(steps: int, batch_size: int | None = None) -> list[tuple[int, dict, float]]:
    """The phases of a ``steps``-step paper-size flow: ``FIRST``'s minibatch phase (its ``B`` replaced by
    ``batch_size`` when given) shortened so that the final phase (``FINAL_STEPS``, at most a tenth of the run) ends
    the flow."""
    final = min(FINAL_STEPS, max(1, steps // 10)) if FINAL_STEPS else 0
    first = dict(FIRST) if batch_size is None else {**FIRST, "B": int(batch_size)}
    phases = [(steps - final, first, STEP_SIZE)]
    if final:
        phases.append((final, dict(FINAL), STEP_SIZE))
    return [p for p in phases if p[0] > 0]


def describe(phase: dict) -> str:
    """A short name of one phase's estimator (the table's estimator column)."""
    if phase.get("sinkhorn"):
        return "debiased Sinkhorn OTDD (all points, warm-started)"
    text = f"minibatch OTDD, B = {phase['B']}"
    if phase.get("matched"):
        text = "class-matched " + text
    if phase.get("reg"):
        text += ", entropic"
    return text + (", fixed pairs" if phase.get("fixed") else ", fresh target minibatches")


def run(args, steps: int | None = None, batch_size: int | None = None) -> dict:
    """Flow both sources for ``steps`` (default 1,000) steps, minibatches of ``batch_size`` (default ``FIRST``'s);
    write the JSON and the results section."""
    steps = STEPS if steps is None else int(steps)
    particles = 300 if args.quick else PARTICLES
    if args.quick:
        steps = min(steps, 6)
    eval_every = max(1, steps // 10)
    phases = schedule(steps, batch_size)
    if args.quick:  # minibatches of at most the quick run's class-stratified 300 points
        phases = [(n, {**p, "B": min(p["B"], 150)} if "B" in p else p, h) for n, p, h in phases]
    load_before = os.getloadavg()
    runs, info, target = {}, None, None
    for name, split in SPLITS.items():
        classifier, source, target, info = load_problem(name, args.data_dir, particles, quick=args.quick)
        reg = relative_reg(source, target)
        result = flow_phases(source, target, classifier, phases, reg=reg, eval_every=eval_every)
        runs[name] = {
            "split": split,
            "particles": len(source),
            "steps": result["steps"],
            "seconds": result["seconds"],
            "seconds_per_step": result["seconds"] / max(result["steps"], 1),
            "phase_seconds_per_step": [
                sec / max(n, 1) for sec, (n, _, _) in zip(result["phase_seconds"], phases, strict=True)
            ],
            "accuracy_before": result["curve"][0][1],
            "accuracy_after": result["accuracy_after"],
            "accuracy_curve": result["curve"],
            "estimator": " then ".join(f"{describe(p)} ({n} steps)" for n, p, _ in phases),
            "phases": [[n, p, h] for n, p, h in phases],
            "reg": reg,
            "label_cost": repr(LABEL_COST),
            "objective_first_last": result["objective_first_last"],
            **nearest_target_report(result["final_x"], target, classifier, source.y),
        }
        print(
            f"{name:>13}: {len(source)} particles, {result['steps']} steps, {result['seconds']:.0f}s "
            f"({runs[name]['seconds_per_step']:.2f} s/step): accuracy {100 * runs[name]['accuracy_before']:.1f}% -> "
            f"{100 * result['accuracy_after']:.1f}%",
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
            "threads": torch.get_num_threads(),
        },
        "runs": runs,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "environment": environment(),
        "peak_rss_mb": peak_rss_mb(),
    }
    if args.quick:
        check_direction(
            {
                f"{name}: accuracy after the flow above before": run["accuracy_after"] > run["accuracy_before"]
                for name, run in runs.items()
            }
        )
    write_json(args, "repurpose_paper_size", payload)
    update_results_md(args, "repurpose_paper_size", _markdown(payload))
    return payload


def _probe_rows() -> list[dict]:
    """The short measurement runs of ``repurpose_paper_size_probe.py`` (``results/repurpose_paper_size_probe/``)."""
    import json

    if not PROBE_DIR.is_dir():
        return []
    return [json.loads(path.read_text()) for path in sorted(PROBE_DIR.glob("*.json"))]


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
        per_phase = " / ".join(f"{t:.2f}" for t in run["phase_seconds_per_step"])
        lines.append(
            f"| {name} ({run['split']}) | {run['particles']} | {run['steps']} | {run['estimator']} | "
            f"{run['seconds_per_step']:.2f} ({per_phase}) | {run['seconds'] / 60:.1f} | "
            f"{100 * run['accuracy_before']:.1f} | **{100 * run['accuracy_after']:.1f}** |"
        )
    lines += ["", "s/step: the mean over the run (in brackets: per phase). Accuracy (%) during the flows:", ""]
    for name, run in payload["runs"].items():
        curve = ", ".join(f"{step}: {100 * acc:.1f}" for step, acc in run["accuracy_curve"])
        lines.append(f"- {name}: {curve}")
    first = next(iter(payload["runs"].values()))
    lines += [
        "",
        f"Label distances: {first['label_cost']} between the whole particle classes and the whole target classes. "
        "The minibatch OTDD (Fatras et al. 2020) splits the particles into disjoint class-stratified minibatches "
        "and pairs each with a target minibatch, exact OT per pair; it is biased (its value is above OTDD², not 0 "
        "between identical datasets). The debiased Sinkhorn phase is the 2,000-particle run's estimator on all "
        f"5,000 x {s['target'].split()[0]} points, its regularisation fixed at 0.05 x the first step's mean cost "
        f"(usps {payload['runs'].get('usps', first)['reg']:.1f}), each step warm-started from the last one's "
        "potentials.",
        "",
        "After the flows, the median distance from a particle to its nearest target image is "
        + ", ".join(f"{name} {run['particle_to_nearest_target']:.2f}" for name, run in payload["runs"].items())
        + "; the classifier's accuracy on those nearest target images (their own labels) is "
        + ", ".join(
            f"{name} {100 * run['classifier_on_nearest_targets']:.1f} %" for name, run in payload["runs"].items()
        )
        + ", and the fraction of particles whose nearest target image is of their class's most common nearest class "
        + ", ".join(f"{name} {100 * run['nearest_target_in_class']:.1f} %" for name, run in payload["runs"].items())
        + ".",
        "",
        f"Machine: {payload['environment']['threads']} torch threads on a CPU shared with other jobs, load "
        f"average {payload['load_average_before'][0]:.1f} (1 min) before the run and "
        f"{payload['load_average_after'][0]:.1f} after; peak memory {payload['peak_rss_mb']:.0f} MB. Times include "
        "the accuracy evaluations (every tenth of the run); for Fashion-MNIST each evaluation also matches the "
        "flowed classes to the MNIST classes (Hungarian), which the USPS run (scored by digit names) does not need.",
        "",
    ]
    minutes = [run["seconds"] / 60 for run in payload["runs"].values()]
    goal = s["goal_minutes_per_dataset"]
    if s["reduced"]:
        per_step = max(run["seconds_per_step"] for run in payload["runs"].values())
        lines.append(
            f"**Reduced run**: {s['steps']} of the requested {s['requested_steps']} steps (at the measured "
            f"{per_step:.2f} s per step, 1,000 steps would take about "
            f"{per_step * s['requested_steps'] / 60:.0f} min per dataset; the goal is {goal:g} min)."
        )
    else:
        met = all(m <= goal for m in minutes)
        lines.append(
            f"Goal ≤ {goal:g} min per dataset: {'met' if met else '**not met**'} "
            f"({', '.join(f'{m:.1f}' for m in minutes)} min)."
        )
    lines += _against_small_run(payload)
    lines += _probe_table()
    return "\n".join(lines)


def _against_small_run(payload: dict) -> list[str]:
    """The issue's second goal: accuracy after the flow not below the 2,000-particle run's (results/repurpose.json)."""
    import json

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
        parts.append(f"{name} {100 * run['accuracy_after']:.2f} % against {100 * reference:.2f} %")
    if not parts:
        return []
    verdict = "met" if met else "**not met** (the measurements below give the cause)"
    return [
        f"Accuracy after the flow not below the 2,000-particle run's supervised flow (`results/repurpose.json`; "
        f"{'; '.join(parts)}): {verdict}."
    ]


def _probe_table() -> list[str]:
    rows = _probe_rows()
    if not rows:
        return []
    lines = [
        "",
        "**Why the minibatch flow alone ends lower (measured).** Short runs of the same 5,000 particles and target "
        "(`experiments/repurpose_paper_size_probe.py`, 1 thread at low priority on the shared CPU: their seconds are "
        "not timings), one estimator each:",
        "",
        "| source | estimator (steps) | accuracy before | accuracy after | median distance to nearest target | "
        "classifier on nearest targets | nearest target in class |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['source']} | {row['description']} ({row['steps']}) | {100 * row['accuracy_before']:.1f} | "
            f"{100 * row['accuracy_after']:.1f} | {row['particle_to_nearest_target']:.2f} | "
            f"{100 * row['classifier_on_nearest_targets']:.1f} | "
            + (f"{100 * row['nearest_target_in_class']:.1f}" if "nearest_target_in_class" in row else "–")
            + " |"
        )
    return lines
