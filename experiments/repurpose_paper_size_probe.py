"""Short runs that measure why the paper-size re-purposing flow (``repurpose_paper_size.py``) ends below the
2,000-particle run: the same 5,000 particles and target, a few hundred steps, one estimator setting per run.

    nice -n 15 env OMP_NUM_THREADS=1 python experiments/repurpose_paper_size_probe.py --variant NAME [--source usps]

Each run writes ``results/repurpose_paper_size_probe/<source>_<variant>.json``: the accuracy curve, the time per
step, the median distance from a particle to its nearest target image and the classifier's accuracy on those
nearest target images (what a flow that collapses the particles onto target images would score). The
``repurpose_paper_size`` section of ``docs/results.md`` tabulates them (``repurpose_paper_size.py``).
These are accuracy runs (1 thread, low priority), not timing runs: their seconds are only indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _images import data_dir_or_default  # noqa: E402
from repurpose_paper_size import PROBE_DIR, flow_phases, load_problem, nearest_target_report, relative_reg  # noqa: E402

#: name -> (description, phases); a phase is (steps, functional options, step size); ``"{reg}"`` is replaced by
#: the relative regularisation of the first step (0.05 x the mean cost, as the 2,000-particle run's Sinkhorn)
VARIANTS = {
    "mb500_fresh": ("minibatch B = 500, fresh target minibatches (the paper-size run)", [(100, {"B": 500}, 0.5)]),
    "mb500_fixed": (
        "minibatch B = 500, the same minibatch pairs at every step",
        [(100, {"B": 500, "fixed": True}, 0.5)],
    ),
    "mb1000_fresh": ("minibatch B = 1000, fresh target minibatches", [(100, {"B": 1000}, 0.5)]),
    "mb500_fresh_step0.1": ("minibatch B = 500, fresh, step 0.1", [(100, {"B": 500}, 0.1)]),
    "mb500_fresh_reg": (
        "minibatch B = 500, fresh, entropic (reg of the first step)",
        [(100, {"B": 500, "reg": 1}, 0.5)],
    ),
    "mb500_fixed_reg": (
        "minibatch B = 500, fixed pairs, entropic (reg of the first step)",
        [(100, {"B": 500, "reg": 1, "fixed": True}, 0.5)],
    ),
    "mb500_then_sinkhorn10": (
        "minibatch B = 500 (90 steps), then 10 steps of full debiased Sinkhorn",
        [(90, {"B": 500}, 0.5), (10, {"sinkhorn": True}, 0.5)],
    ),
    "mb500_matched": (
        "minibatch B = 500, fresh, class-matched (plan kept on the Hungarian class assignment)",
        [(100, {"B": 500, "matched": True}, 0.5)],
    ),
    "sinkhorn30": ("full debiased Sinkhorn (warm-started), 30 steps", [(30, {"sinkhorn": True}, 0.5)]),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--source", default="usps", choices=("usps", "fashion-mnist"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--eval-every", type=int, default=25)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data_dir = data_dir_or_default(args.data_dir)
    classifier, source, target, _ = load_problem(args.source, data_dir)
    description, phases = VARIANTS[args.variant]
    reg = relative_reg(source, target)
    start = time.perf_counter()
    result = flow_phases(source, target, classifier, phases, reg=reg, eval_every=args.eval_every)
    seconds = time.perf_counter() - start
    payload = {
        "source": args.source,
        "variant": args.variant,
        "description": description,
        "phases": [[s, o, h] for s, o, h in phases],
        "relative_reg": reg,
        "particles": len(source),
        "steps": result["steps"],
        "seconds": seconds,
        "seconds_per_step": seconds / max(result["steps"], 1),
        "threads": torch.get_num_threads(),
        "accuracy_before": result["curve"][0][1],
        "accuracy_after": result["accuracy_after"],
        "accuracy_curve": result["curve"],
        **nearest_target_report(result["final_x"], target, classifier, source.y),
    }
    PROBE_DIR.mkdir(parents=True, exist_ok=True)
    path = PROBE_DIR / f"{args.source}_{args.variant}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps({k: v for k, v in payload.items() if k != "accuracy_curve"}), flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
