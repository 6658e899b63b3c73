"""Paper Fig. 8: flows of a 2-D labeled dataset under different functionals (SGD + jd-vl).

The source is three overlapping Gaussian classes on the left, the target three overlapping
classes on the right. Each panel follows the Wasserstein gradient flow of one functional:

* ``otdd``: :math:`\\tfrac12 \\mathrm{OTDD}^2(\\rho, \\beta)` alone (the reference);
* ``ball``: the ball constraint :math:`\\int (\\|x - x_0\\| - r)_+ \\, d\\rho` alone
  (:math:`x_0 = 0`, :math:`r = 2.5`);
* ``repulsion``: the class repulsion of paper §5,
  :math:`\\tfrac12 \\iint e^{-\\|x - x'\\|} 1\\{y \\ne y'\\} \\, d\\rho\\, d\\rho`, alone (weight 20);
* ``otdd + ball`` (ball weight 3), ``otdd + repulsion`` (weight 20) and all three.

Paper Fig. 8 uses the unbounded quadratic repulsion :math:`-\\|x - x'\\|^2 1\\{y \\ne y'\\}`;
the bounded exponential kernel of §5 is used here so that the repulsion-only flow stays finite.
Dynamics: jd-vl with DBSCAN re-clustering (eps = 1.0), SGD with step 0.05, as in paper Fig. 8.

Writes ``functionals_grid.png``, ``functionals_objective.png`` and one
``functionals_<name>.gif`` per functional into ``--out`` (default docs/figures).

Usage::

    python experiments/functionals_2d.py            # full run
    python experiments/functionals_2d.py --quick    # smoke test into build/figures-quick
"""

from __future__ import annotations

import warnings

from _common import Timer, gaussian_mixture, parse_args, report

from datasetflow import ball_constraint, class_repulsion, otdd_to, run_flow
from datasetflow.viz import animate_flow, plot_flows_grid, plot_objective

SOURCE_MEANS = [[-4.0, 1.0], [-4.0, -1.0], [-2.5, 0.0]]
TARGET_MEANS = [[3.0, 0.8], [3.0, -0.8], [4.4, 0.0]]
BALL_CENTER, BALL_RADIUS, BALL_WEIGHT = (0.0, 0.0), 2.5, 3.0
REPULSION_WEIGHT = 20.0


def functionals(target):
    """``(file stem, panel title, functional)`` of every panel."""
    otdd = otdd_to(target, outer="exact")
    ball = ball_constraint(center=list(BALL_CENTER), radius=BALL_RADIUS)
    repulsion = class_repulsion(scale=1.0)
    b, r = BALL_WEIGHT, REPULSION_WEIGHT
    return [
        ("otdd", "OTDD", otdd),
        ("ball", "ball", ball),
        ("repulsion", f"{r:g} repulsion", r * repulsion),
        ("otdd-ball", f"OTDD + {b:g} ball", otdd + b * ball),
        ("otdd-repulsion", f"OTDD + {r:g} repulsion", otdd + r * repulsion),
        ("otdd-ball-repulsion", f"OTDD + {b:g} ball + {r:g} repulsion", otdd + b * ball + r * repulsion),
    ]


def main(argv=None) -> None:
    """Run one flow per functional and write the figures."""
    args = parse_args(__doc__.splitlines()[0], argv)
    per_class, steps, record_every = (20, 40, 10) if args.quick else (60, 200, 10)
    source = gaussian_mixture(SOURCE_MEANS, per_class, std=0.6, seed=0, name="source")
    target = gaussian_mixture(TARGET_MEANS, per_class, std=0.6, seed=1, name="target")
    options = {"clustering": "dbscan", "eps": 1.0, "min_samples": 4, "recluster_every": 5}
    results, titles, stems = [], [], []
    for stem, title, functional in functionals(target):
        timer = Timer()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a silent DBSCAN fallback would make the panel misleading
            result = run_flow(
                functional,
                source,
                dynamics="jd-vl",
                optimizer="sgd",
                step_size=0.05,
                steps=steps,
                seed=0,
                record_every=record_every,
                dynamics_options=options,
            )
        flow_seconds = timer()
        gif = args.out / f"functionals_{stem}.gif"
        animate_flow(result, gif, fps=8, target=target, title=title, dpi=64)
        terms = ", ".join(f"{name} {values[0]:.3g} -> {values[-1]:.3g}" for name, values in result.terms.items())
        report(gif, f"{stem}: {terms}; flow {flow_seconds:.1f}s, {len(result.trajectory)} frames")
        results.append(result)
        titles.append(title)
        stems.append(stem)
    fig = plot_flows_grid(results, titles, target=target, ncols=3, panel_size=3.8)
    from matplotlib.patches import Circle

    for ax, stem in zip(fig.axes, stems, strict=True):
        if "ball" in stem:
            ax.add_patch(Circle(BALL_CENTER, BALL_RADIUS, fill=False, linestyle="--", linewidth=0.8, color="0.3"))
    grid = args.out / "functionals_grid.png"
    fig.savefig(grid, dpi=110, bbox_inches="tight")
    report(grid, f"{len(results)} panels (source {len(source)} particles, target {len(target)}; dashed: the ball)")
    curves = args.out / "functionals_objective.png"
    plot_objective(results, labels=stems, path=curves, title="objective (sum of the weighted terms)")
    report(curves, "objective and per-term curves against step")


if __name__ == "__main__":
    main()
