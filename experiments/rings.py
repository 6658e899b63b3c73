"""WoW rings: a blob of three classes flows to three rings under MMD-SW (Riesz vs Gaussian kernel).

Bonet, Vauthier & Korba (2025), the rings example: 3 classes x 80 points in 2-D start in one
Gaussian blob and follow the WoW gradient flow (explicit Euler, tau = 0.1, 501 steps, fresh
directions every step, L = 500) of

    F(P) = 1/2 MMD_K^2(P, Q),   P = sum_c 1/3 delta_{mu_c},   Q = the three rings,

once with the Riesz kernel K = -SW2 and once with the Gaussian kernel K = exp(-SW2^2 / (2h)),
h = 0.1. Each particle moves by tau * (n_c / p_c) * dF/dx (the engine's one rescaling).

Summary lines report the final objective, the sliced distance SW2^2 between every flowed class
and its target ring (mean over classes, exact, 2000 directions), and the WoW class matching.

Writes ``rings_grid.png`` (both flows with trajectories), ``rings_objective.png`` and
``rings_riesz.gif`` / ``rings_gaussian.gif`` into ``--out`` (default docs/figures).

Usage::

    python experiments/rings.py            # full run (501 steps)
    python experiments/rings.py --quick    # smoke test into build/figures-quick
"""

from __future__ import annotations

import math

import torch
from _common import Timer, parse_args, report

from datasetflow import LabeledDataset, class_sliced_wasserstein, mmd_sw_to, run_flow, wow
from datasetflow.viz import animate_flow, plot_flows_grid, plot_objective

CENTRES = [(-1.0, 0.0), (1.0, 0.0), (0.0, 1.7)]
RADIUS, NOISE = 0.6, 0.05
TAU, BANDWIDTH, PROJECTIONS = 0.1, 0.1, 500


def rings(per_class: int, *, seed: int = 1) -> LabeledDataset:
    """Three noisy circles of radius 0.6 around ``CENTRES``, one class each (float64)."""
    gen = torch.Generator().manual_seed(seed)
    xs = []
    for cx, cy in CENTRES:
        angle = 2 * math.pi * torch.rand(per_class, generator=gen, dtype=torch.float64)
        ring = torch.stack([cx + RADIUS * angle.cos(), cy + RADIUS * angle.sin()], 1)
        xs.append(ring + NOISE * torch.randn(per_class, 2, generator=gen, dtype=torch.float64))
    y = torch.arange(len(CENTRES)).repeat_interleave(per_class)
    return LabeledDataset(torch.cat(xs), y, name="rings")


def blob(per_class: int, *, seed: int = 0) -> LabeledDataset:
    """Three classes drawn from one Gaussian blob N(0, 0.5^2 I) (float64), uniform class weights."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.5 * torch.randn(len(CENTRES) * per_class, 2, generator=gen, dtype=torch.float64)
    y = torch.arange(len(CENTRES)).repeat_interleave(per_class)
    return LabeledDataset(x, y, name="blob").with_class_weights("uniform")


def main(argv=None) -> None:
    """Run the Riesz and Gaussian flows and write the figures."""
    args = parse_args(__doc__.splitlines()[0], argv)
    per_class, steps, record_every, projections = (30, 60, 10, 100) if args.quick else (80, 501, 10, PROJECTIONS)
    target, source = rings(per_class), blob(per_class)
    runs = [
        ("riesz", "Riesz  K = -SW2", {"kernel": "riesz"}),
        (
            "gaussian",
            f"Gaussian  K = exp(-SW2^2 / 2h), h = {BANDWIDTH:g}",
            {"kernel": "gaussian", "bandwidth": BANDWIDTH},
        ),
    ]
    results = []
    for stem, title, options in runs:
        timer = Timer()
        functional = mmd_sw_to(target, n_projections=projections, seed=0, **options)
        result = run_flow(functional, source, optimizer="sgd", step_size=TAU, steps=steps, record_every=record_every)
        seconds = timer()
        matching = wow(result.final, target, inner="exact")
        to_rings = class_sliced_wasserstein(result.final, target, n_projections=2000, seed=1)
        mean_sw = float(torch.diagonal(to_rings[:, matching.matching]).mean())
        gif = args.out / f"rings_{stem}.gif"
        animate_flow(result, gif, fps=10, target=target, title=title, dpi=70)
        objective = result.objective
        report(
            gif,
            f"{stem}: objective {objective[0]:.4g} -> {objective[-1]:.4g} (min {min(objective):.4g}); "
            f"mean SW2^2 to the matched ring {mean_sw:.4f}; matching {matching.matched_classes}; "
            f"{steps} steps in {seconds:.1f}s",
        )
        results.append((title, result))

    grid = args.out / "rings_grid.png"
    plot_flows_grid([r for _, r in results], [t for t, _ in results], target=target, max_paths=90, path=grid)
    report(grid, "blob -> three rings, Riesz and Gaussian SW kernels, trajectories")
    curve = args.out / "rings_objective.png"
    plot_objective([r for _, r in results], labels=[s for s, _, _ in runs], path=curve, title="MMD-SW^2 / 2")
    report(curve, "objective per step, Riesz vs Gaussian kernel")


if __name__ == "__main__":
    main()
