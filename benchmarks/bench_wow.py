"""MMD-SW (WoW) flow-step benchmark: value + WoW gradient per step, against the floor, same process.

One step evaluates ½ MMD² with the Riesz kernel K = -SW2 between the classes of a source (with
gradient) and a target dataset, with L = 500 directions drawn afresh, and back-propagates to the
source particles (``MMDSWToTarget.value`` + ``backward``, as ``run_flow`` does).

* Floor (issue #4): project all source and target points on the L directions (one product), sort
  every class, and back-propagate a sum of the sorted source projections to the particles.
* Library baseline: the same objective built from POT's ``ot.sliced_wasserstein_distance`` (torch
  backend, the same directions) called once per class pair, with its gradient.

Cases: 10 classes x 200 points, 10 x 500 and 20 x 100 per side, d = 784, float32; plus unequal
class sizes (10 classes of 150..249 points). Times are medians of ``--repeats`` runs.

Usage::

    python benchmarks/bench_wow.py            # writes its section of docs/benchmarks.md
    python benchmarks/bench_wow.py --quick    # fewer repeats, prints only
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import ot
import torch
from _report import write_section
from datasetflow.functionals.state import FlowState

from datasetflow import LabeledDataset, mmd_sw_to
from datasetflow.distances import draw_directions

ROOT = Path(__file__).resolve().parents[1]
L, D = 500, 784


def dataset(gen: torch.Generator, sizes: list[int], shift: float = 0.0) -> LabeledDataset:
    """Random image-like classes in [0, 1] with per-class means (float32)."""
    xs = [torch.rand(n, D, generator=gen) * 0.5 + 0.5 * torch.rand(1, D, generator=gen) + shift for n in sizes]
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return LabeledDataset(torch.cat(xs), y).with_class_weights("uniform")


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ours(source: LabeledDataset, target: LabeledDataset):
    functional = mmd_sw_to(target, n_projections=L, seed=0)
    state = FlowState.from_dataset(source)
    state.x.requires_grad_()

    def step():
        state.x.grad = None
        functional.value(state).backward()

    return step, functional, state


def floor(source: LabeledDataset, target: LabeledDataset):
    x = source.x.clone().requires_grad_()
    gen = torch.Generator().manual_seed(1)
    pad = len(source) + len(target)  # the row of +inf that pads unequal classes
    rows_s, rows_t = _class_rows(source, 0, pad), _class_rows(target, len(source), pad)

    def step():
        x.grad = None
        theta = draw_directions(L, D, generator=gen)
        projected = torch.cat([x, target.x]) @ theta.T
        padded = torch.cat([projected, projected.new_full((1, L), float("inf"))])
        src = padded[rows_s].sort(dim=1).values
        padded[rows_t].sort(dim=1)
        src.nan_to_num(posinf=0.0).sum().backward()

    return step


def _class_rows(data: LabeledDataset, offset: int, pad: int) -> torch.Tensor:
    """``(C, n_max)`` rows of every class in the stacked projections, padded with row ``pad``."""
    counts = data.class_counts()
    rows = torch.full((data.num_classes, int(counts.max())), pad, dtype=torch.long)
    for c in range(data.num_classes):
        members = torch.nonzero(data.y == c).flatten()
        rows[c, : len(members)] = members + offset
    return rows


def pot_baseline(source: LabeledDataset, target: LabeledDataset):
    """½ MMD² with K = -SW2 from POT's per-pair sliced Wasserstein (same directions), with its gradient."""
    x = source.x.clone().requires_grad_()
    gen = torch.Generator().manual_seed(2)
    c1, c2 = source.num_classes, target.num_classes
    p = torch.full((c1,), 1.0 / c1)
    q = torch.full((c2,), 1.0 / c2)

    def step():
        x.grad = None
        theta = draw_directions(L, D, generator=gen).T.contiguous()
        classes_s = [x[source.y == c] for c in range(c1)]
        classes_t = [target.x[target.y == c] for c in range(c2)]
        value = torch.zeros(())
        for i in range(c1):
            for j in range(i + 1, c1):
                sw = ot.sliced_wasserstein_distance(classes_s[i], classes_s[j], projections=theta)
                value = value - 2 * p[i] * p[j] * sw
            for j in range(c2):
                sw = ot.sliced_wasserstein_distance(classes_s[i], classes_t[j], projections=theta)
                value = value + 2 * p[i] * q[j] * sw
        (0.5 * value).backward()

    return step


def agreement() -> float:
    """Relative difference of our class-pair SW2 and POT's on one pair, same directions."""
    gen = torch.Generator().manual_seed(3)
    a, b = (
        torch.rand(200, D, generator=gen, dtype=torch.float64),
        torch.rand(150, D, generator=gen, dtype=torch.float64),
    )
    theta = draw_directions(L, D, generator=gen, dtype=torch.float64)
    from datasetflow import sliced_wasserstein

    ours_value = float(sliced_wasserstein(a, b, projections=theta)) ** 0.5
    pot_value = float(ot.sliced_wasserstein_distance(a, b, projections=theta.T))
    return abs(ours_value - pot_value) / pot_value


def precision(seeds: int = 5) -> tuple[float, float]:
    """Largest relative value and gradient difference of ½ MMD² in float32 against float64 over ``seeds``
    direction draws (embedded USPS -> MNIST)."""
    from datasetflow import load_dataset, mmd_sw

    source, target = load_dataset("usps-mini", resize=(28, 28)), load_dataset("mnist-mini")
    worst_value = worst_grad = 0.0
    for seed in range(seeds):
        theta = draw_directions(L, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        out = {}
        for dtype in (torch.float32, torch.float64):
            x = source.x.to(dtype).clone().requires_grad_()
            data = source.to(dtype=dtype).with_features(x)
            value = mmd_sw(data, target.to(dtype=dtype), projections=theta.to(dtype))
            value.backward()
            out[dtype] = (float(value.detach()), x.grad.double())
        (v32, g32), (v64, g64) = out[torch.float32], out[torch.float64]
        worst_value = max(worst_value, abs(v32 - v64) / abs(v64))
        worst_grad = max(worst_grad, float((g32 - g64).norm() / g64.norm()))
    return worst_value, worst_grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, this machine's cores)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 9)
    gen = torch.Generator().manual_seed(0)
    cases = [
        ("10 x 200", [200] * 10, [200] * 10, True),
        ("10 x 500", [500] * 10, [500] * 10, False),
        ("20 x 100", [100] * 20, [100] * 20, False),
        ("10 x 150..249 (unequal)", [150 + 11 * c for c in range(10)], [249 - 11 * c for c in range(10)], False),
    ]
    rows = []
    for name, sizes_s, sizes_t, with_pot in cases:
        source, target = dataset(gen, sizes_s), dataset(gen, sizes_t, shift=0.1)
        step, _, _ = ours(source, target)
        t_ours = median_time(step, repeats)
        t_floor = median_time(floor(source, target), repeats)
        t_pot = median_time(pot_baseline(source, target), max(1, repeats // 3)) if with_pot else None
        rows.append((name, t_ours, t_floor, t_pot))
        pot_text = f"{t_pot:.3f}" if t_pot is not None else "-"
        print(
            f"{name:>24}: ours {t_ours:.4f} s/step, floor {t_floor:.4f} s, x{t_ours / t_floor:.2f}; POT loop {pot_text}"
        )
    diff = agreement()
    value_err, grad_err = precision()
    print(f"SW2 ours vs POT, same directions: relative difference {diff:.1e}")
    print(f"float32 vs float64: value {value_err:.1e}, gradient {grad_err:.1e}")
    lines = [
        "## MMD-SW flow step (WoW, issue #4)",
        "",
        "One step: ½ MMD² with K = -SW2 between classes, L = 500 fresh directions, d = 784, float32, value and "
        "gradient (`MMDSWToTarget.value` + `backward`). Floor: one projection product of all source and target "
        "points, per-class sorts, backward of the sorted source projections. POT loop: the same objective from "
        "`ot.sliced_wasserstein_distance` per class pair (torch backend, same directions), with gradient. "
        f"Medians of {repeats} runs, `torch.get_num_threads()` = {torch.get_num_threads()}. "
        "Command: `python benchmarks/bench_wow.py`.",
        "",
        "| classes x points per side | ours s / step | floor s | ours / floor | POT loop s / step | POT / ours |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t_ours, t_floor, t_pot in rows:
        pot = f"{t_pot:.3f} | {t_pot / t_ours:.1f}x" if t_pot is not None else "- | -"
        lines.append(f"| {name} | {t_ours:.4f} | {t_floor:.4f} | {t_ours / t_floor:.2f} | {pot} |")
    lines += [
        "",
        f"SW2 between two clouds (200 and 150 points), ours against POT with the same directions: relative "
        f"difference {diff:.1e}. ½ MMD² between the embedded USPS and MNIST subsets in float32 against float64 "
        f"(same directions; the largest over 5 draws of 500 directions): value {value_err:.1e}, gradient "
        f"{grad_err:.1e} (relative). The gradient difference comes from the float32 projections and sorts "
        "(projections that tie in float32 sort differently), not from the Gram product, which is centred and "
        "checked pair by pair. Unequal class "
        "sizes take the merged-quantile path (one common grid of levels).",
    ]
    if args.quick:
        print("\n".join(lines))
    else:
        write_section(args.output, "wow", "\n".join(lines))
        print(f"wrote the 'wow' section of {args.output}")


if __name__ == "__main__":
    main()
