"""Paper Figs. 2 and 7: one OTDD flow under the three dynamics (fd-fl, jd-fl, jd-vl).

A 2-D source mixture of three Gaussian classes flows towards a target mixture of two classes
under :math:`F(\\rho) = \\tfrac12 \\mathrm{OTDD}^2(\\rho, \\beta)` (exact outer OT, Gaussian label
cost), with Adam as in paper Fig. 7, for:

* fd-fl: features move, class statistics follow; labels are fixed (three classes);
* jd-fl: features and per-class Gaussians move separately; labels are fixed;
* jd-vl + k-means: one Gaussian per particle, re-clustered into k = 3 classes;
* jd-vl + DBSCAN: the same flow re-clustered by DBSCAN (eps = 1.0, min_samples = 4), so the
  number of classes may change. The clustered descriptor is each particle's (mean, covariance
  upper triangle); class means here are about 5 apart and covariances about 0.36 I, so
  eps = 1.0 separates classes (the paper's eps = 5 is for its own scale).

Writes ``dynamics_grid.png`` (all four panels), ``dynamics_objective.png`` and one
``dynamics_<name>.gif`` per dynamics into ``--out`` (default docs/figures).

Usage::

    python experiments/synthetic_dynamics.py            # full run
    python experiments/synthetic_dynamics.py --quick    # smoke test into build/figures-quick
"""

from __future__ import annotations

import warnings

from _common import Timer, gaussian_mixture, parse_args, report

from datasetflow import otdd_to, run_flow
from datasetflow.viz import animate_flow, plot_flows_grid, plot_objective

SOURCE_MEANS = [[-4.0, 2.5], [-4.5, -2.0], [-1.5, 0.0]]
TARGET_MEANS = [[3.0, 2.5], [3.0, -2.5]]
DBSCAN_EPS = 1.0

RUNS = [
    # (file stem, panel title, dynamics, dynamics options)
    ("fd-fl", "fd-fl (Adam)", "fd-fl", {}),
    ("jd-fl", "jd-fl (Adam)", "jd-fl", {}),
    ("jd-vl-kmeans", "jd-vl, k-means k=3 (Adam)", "jd-vl", {"clustering": "kmeans", "recluster_every": 5}),
    (
        "jd-vl-dbscan",
        f"jd-vl, DBSCAN eps={DBSCAN_EPS:g} (Adam)",
        "jd-vl",
        {"clustering": "dbscan", "eps": DBSCAN_EPS, "min_samples": 4, "recluster_every": 5},
    ),
]


def main(argv=None) -> None:
    """Run the four flows and write the figures."""
    args = parse_args(__doc__.splitlines()[0], argv)
    per_class, steps, record_every = (20, 40, 10) if args.quick else (60, 150, 5)
    source = gaussian_mixture(SOURCE_MEANS, per_class, std=0.6, seed=0, name="source")
    target = gaussian_mixture(TARGET_MEANS, per_class * 3 // 2, std=0.6, seed=1, name="target")
    functional = otdd_to(target, outer="exact")
    results, titles = [], []
    for stem, title, dynamics, options in RUNS:
        timer = Timer()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a silent DBSCAN fallback would make the panel misleading
            result = run_flow(
                functional,
                source,
                dynamics=dynamics,
                optimizer="adam",
                step_size=0.1,
                steps=steps,
                seed=0,
                record_every=record_every,
                dynamics_options=options,
            )
        flow_seconds = timer()
        gif = args.out / f"dynamics_{stem}.gif"
        animate_flow(result, gif, fps=8, target=target, title=title, dpi=64)
        classes = len(set(result.final.y.tolist()))
        report(
            gif,
            f"{stem}: objective {result.objective[0]:.3g} -> {result.objective[-1]:.3g}, "
            f"{classes} final classes, flow {flow_seconds:.1f}s, {len(result.trajectory)} frames",
        )
        results.append(result)
        titles.append(title)
    grid = args.out / "dynamics_grid.png"
    plot_flows_grid(results, titles, target=target, path=grid, ncols=2, panel_size=4.2)
    report(grid, f"{len(results)} panels (source {len(source)} particles, 3 classes; target {len(target)}, 2 classes)")
    curves = args.out / "dynamics_objective.png"
    plot_objective(results, labels=[stem for stem, *_ in RUNS], path=curves, title="1/2 OTDD^2 to the target")
    report(curves, "objective against step")


if __name__ == "__main__":
    main()
