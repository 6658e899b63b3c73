"""Paper Figs. 1 and 12: shaping a 3-D dataset with flows towards a swiss-roll reference.

The reference (target) is a swiss roll whose classes are consecutive segments along the roll
(4 segments, and a 2-segment version for the binary hyperplane potential); the source is a 3-D
Gaussian mixture with as many classes. All flows use fd-fl dynamics (fixed labels, so every
particle keeps its source class and one can see where each class goes), SGD with step 0.05:

* ``otdd``: :math:`\\tfrac12 \\mathrm{OTDD}^2(\\rho, \\beta)` (exact outer OT, Gaussian label cost);
* ``otdd-collapse``: OTDD + 4 * collapse of the height coordinate ``x[2]``
  (:math:`V = \\tfrac12 x_2^2`, paper Fig. 12);
* ``ot-features``: the feature-only OT flow (``otdd_to(target, label_weight=0.0)``), which
  matches the roll's shape but not its classes (paper Fig. 12, bottom row);
* ``otdd-2class`` and ``otdd-hyperplane``: binary labels, OTDD alone and OTDD + 5 * the margin
  potential :math:`\\max\\{0, s_y\\, x_0\\}` of the hyperplane :math:`x_0 = 0` (paper Fig. 1).

Summary lines report the segment purity of the final particles: each takes the class of its
nearest reference point, and purity is the fraction that lands in the majority segment of its
own label (1.0: every source class sits on a single segment).

Writes ``swiss_roll_reference.png``, ``swiss_roll_grid.png`` (Fig. 12 analogue),
``swiss_roll_hyperplane.png`` (Fig. 1 analogue), ``swiss_roll_objective.png`` and one
``swiss_roll_<name>.gif`` per flow into ``--out`` (default docs/figures).

Usage::

    python experiments/swiss_roll.py            # full run
    python experiments/swiss_roll.py --quick    # smoke test into build/figures-quick
"""

from __future__ import annotations

import numpy as np
from _common import Timer, gaussian_mixture, parse_args, report, segment_purity, swiss_roll

from datasetflow import collapse, hyperplane_margin, otdd_to, run_flow
from datasetflow.viz import animate_flow, plot_flows_grid, plot_objective, scatter_particles

VIEW = (58.0, -75.0)
SOURCE4 = [[-1.5, -1.5, -1.0], [1.5, 1.5, -1.0], [1.5, -1.5, 1.0], [-1.5, 1.5, 1.0]]
SOURCE2 = [[-1.5, -1.5, 0.0], [1.5, 1.5, 0.0]]
COLLAPSE_WEIGHT, HYPERPLANE_WEIGHT = 4.0, 5.0
NORMAL, BIAS = (1.0, 0.0, 0.0), 0.0


def correct_side(final) -> float:
    """Fraction of particles on their class's side of the hyperplane, up to one SGD step of the
    potential (weight 5 x step 0.05 = 0.25): class 0 wants ``w.x >= b``, class 1 ``w.x <= b``."""
    sign = 1.0 - 2.0 * final.y.to(final.x.dtype)
    margin = sign * (final.x @ final.x.new_tensor(NORMAL) - BIAS)
    return float((margin >= -0.25).to(final.x.dtype).mean())


def main(argv=None) -> None:
    """Build the reference rolls, run the five flows and write the figures."""
    args = parse_args(__doc__.splitlines()[0], argv)
    per_class, steps, record_every = (30, 60, 20) if args.quick else (60, 200, 10)
    roll4 = swiss_roll(4 * per_class, classes=4, seed=1)
    roll2 = swiss_roll(4 * per_class, classes=2, seed=1)
    source4 = gaussian_mixture(SOURCE4, per_class, std=0.5, seed=0, name="source")
    source2 = gaussian_mixture(SOURCE2, 2 * per_class, std=0.6, seed=0, name="source")

    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.6))
    for k, (roll, title) in enumerate([(roll4, "4 segments"), (roll2, "2 segments")]):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        scatter_particles(roll, ax=ax, title=f"swiss roll reference, {title}", view=VIEW)
    reference = args.out / "swiss_roll_reference.png"
    fig.savefig(reference, dpi=110, bbox_inches="tight")
    report(reference, f"{len(roll4)} points per roll")

    runs = [
        ("otdd", "OTDD", otdd_to(roll4, outer="exact"), source4, roll4),
        (
            "otdd-collapse",
            f"OTDD + {COLLAPSE_WEIGHT:g} collapse(x[2])",
            otdd_to(roll4, outer="exact") + COLLAPSE_WEIGHT * collapse([2]),
            source4,
            roll4,
        ),
        ("ot-features", "OT, features only", otdd_to(roll4, outer="exact", label_weight=0.0), source4, roll4),
        ("otdd-2class", "OTDD, 2 classes", otdd_to(roll2, outer="exact"), source2, roll2),
        (
            "otdd-hyperplane",
            f"OTDD + {HYPERPLANE_WEIGHT:g} hyperplane x[0]=0",
            otdd_to(roll2, outer="exact") + HYPERPLANE_WEIGHT * hyperplane_margin(list(NORMAL), BIAS),
            source2,
            roll2,
        ),
    ]
    results = {}
    for stem, title, functional, source, target in runs:
        timer = Timer()
        result = run_flow(
            functional,
            source,
            dynamics="fd-fl",
            optimizer="sgd",
            step_size=0.05,
            steps=steps,
            seed=0,
            record_every=record_every,
        )
        flow_seconds = timer()
        gif = args.out / f"swiss_roll_{stem}.gif"
        animate_flow(result, gif, fps=6, target=target, title=title, view=VIEW, dpi=80)
        terms = ", ".join(f"{name} {values[0]:.3g} -> {values[-1]:.3g}" for name, values in result.terms.items())
        purity = segment_purity(result.final, target)
        extra = ""
        if stem == "otdd-hyperplane":
            extra = f"; {correct_side(result.final):.0%} of particles on their side of the plane (tolerance 0.25)"
        report(gif, f"{stem}: {terms}; segment purity {purity:.2f}{extra}; flow {flow_seconds:.1f}s")
        results[stem] = (title, result, target)

    fig12 = ["otdd", "otdd-collapse", "ot-features"]
    grid = args.out / "swiss_roll_grid.png"
    plot_flows_grid(
        [results[s][1] for s in fig12],
        [results[s][0] for s in fig12],
        target=[results[s][2] for s in fig12],
        max_paths=120,
        panel_size=4.2,
        view=VIEW,
        path=grid,
    )
    report(grid, "OTDD, OTDD + collapse and feature-only OT flows to the 4-segment roll")

    fig1 = ["otdd-2class", "otdd-hyperplane"]
    fig = plot_flows_grid(
        [results[s][1] for s in fig1],
        [results[s][0] for s in fig1],
        target=[results[s][2] for s in fig1],
        max_paths=120,
        panel_size=4.6,
        view=VIEW,
    )
    ax = fig.axes[1]  # draw the hyperplane x[0] = 0 in the hyperplane panel
    (y0, y1), (z0, z1) = ax.get_ylim(), ax.get_zlim()
    yy, zz = np.meshgrid(np.linspace(y0, y1, 2), np.linspace(z0, z1, 2))
    ax.plot_surface(np.full_like(yy, BIAS), yy, zz, color="0.5", alpha=0.15, linewidth=0)
    hyper = args.out / "swiss_roll_hyperplane.png"
    fig.savefig(hyper, dpi=110, bbox_inches="tight")
    report(hyper, "OTDD and OTDD + hyperplane potential flows to the 2-segment roll (grey: the plane)")

    curves = args.out / "swiss_roll_objective.png"
    plot_objective([results[s][1] for s in results], labels=list(results), path=curves)
    report(curves, "objective and per-term curves against step")


if __name__ == "__main__":
    main()
