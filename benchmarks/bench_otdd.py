"""OTDD benchmark: value + gradient against a floor measured in the same process.

Problem (issue #2): two synthetic labeled datasets of 10 classes x 200 points, d = 784,
each class rank-deficient (200 < 784 samples; a 30-dimensional subspace plus isotropic
noise). The *floor* is one 2000 x 2000 x 784 pairwise squared-distance matrix with its
backward pass, the least work any OTDD gradient needs.

Reported: median wall time over ``--repeats`` runs (after one warm-up) of
``otdd(...).distance_squared.backward()`` for several settings, its ratio to the floor,
the same Sinkhorn problem solved by POT and GeomLoss on the explicit OTDD cost, float32
against float64 agreement, and the chunked path at n = 10,000 per side (time and peak RSS,
each in a fresh subprocess).

Usage::

    python benchmarks/bench_otdd.py            # full run, writes docs/benchmarks.md
    python benchmarks/bench_otdd.py --quick    # smaller, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _report import write_section

from datasetflow import GaussianLabelCost, LabeledDataset, OTDDCost, otdd, solve
from datasetflow.costs import sqeuclidean

ROOT = Path(__file__).resolve().parents[1]


def synthetic(
    gen: torch.Generator, classes: int, per_class: int, dim: int, shift: float = 0.0, dtype: torch.dtype = torch.float32
) -> LabeledDataset:
    """Rank-deficient Gaussian classes: random mean + 30-dim subspace + 0.3 isotropic noise."""
    means = torch.randn(classes, dim, generator=gen)
    basis = torch.randn(classes, 30, dim, generator=gen) / 30**0.5
    latent = torch.randn(classes, per_class, 30, generator=gen)
    noise = 0.3 * torch.randn(classes, per_class, dim, generator=gen)
    x = (means[:, None] + latent @ basis + noise).reshape(-1, dim) + shift
    return LabeledDataset(x.to(dtype), torch.arange(classes).repeat_interleave(per_class))


def median_time(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up; returns (seconds, last output)."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def paired_time(fn, floor, repeats: int) -> tuple[float, float, object]:
    """Median wall time of ``fn()`` and the median of its per-repeat ratios to ``floor()`` run just before it.

    On a shared machine the load changes between runs; pairing each run with a floor run right before it
    makes the ratio follow the load. Returns (seconds, ratio, last output), after one warm-up of each.
    """
    floor()
    out = fn()
    times, ratios = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        floor()
        middle = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - middle)
        ratios.append(times[-1] / (middle - start))
    return statistics.median(times), statistics.median(ratios), out


def floor_fn(source: LabeledDataset, target: LabeledDataset, kind: str = "cdist"):
    """One pairwise squared-distance matrix and its backward pass (``torch.cdist(x, y)**2``, the
    issue's floor, or the single-GEMM expansion ``|x|^2 + |y|^2 - 2 x y^T``, a stricter one)."""

    def run():
        x = source.x.clone().requires_grad_()
        cost = torch.cdist(x, target.x) ** 2 if kind == "cdist" else sqeuclidean(x, target.x)
        cost.backward(torch.ones_like(cost))
        return x.grad

    return run


def otdd_fn(source: LabeledDataset, target: LabeledDataset, **options):
    """OTDD value + gradient with respect to the source features."""

    def run():
        x = source.x.clone().requires_grad_()
        result = otdd(source.with_features(x), target, **options)
        result.distance_squared.backward()
        return result, x.grad

    return run


def pot_fn(source, target, reg: float, tol: float):
    """POT's ot.solve (log-domain Sinkhorn, envelope gradient) on the explicit OTDD cost matrix."""
    import ot

    label = GaussianLabelCost().pairwise(source, target).detach()

    def run():
        x = source.x.clone().requires_grad_()
        cost = sqeuclidean(x, target.x) + label[source.y][:, target.y]
        res = ot.solve(
            cost,
            source.weights,
            target.weights,
            reg=reg,
            method="sinkhorn_log",
            tol=tol,
            max_iter=1000,
            grad="envelope",
        )
        res.value.backward()
        return res.value.detach(), x.grad

    return run


def geomloss_fn(source, target, reg: float, scaling: float):
    """GeomLoss SamplesLoss (debiased, tensorized) with the OTDD cost as a custom cost function."""
    from geomloss import SamplesLoss

    label = GaussianLabelCost().pairwise(source, target).detach()
    offset = source.num_classes

    # the label index rides along as a last coordinate; target labels are offset so one lookup table serves all
    table = torch.zeros(offset + target.num_classes, offset + target.num_classes, dtype=label.dtype)
    table[:offset, offset:] = label
    table[offset:, :offset] = label.T
    table[:offset, :offset] = GaussianLabelCost().pairwise(source).detach()
    table[offset:, offset:] = GaussianLabelCost().pairwise(target).detach()

    def cost(x, y):
        feats = sqeuclidean(x[..., :-1], y[..., :-1])
        return feats + table[x[..., -1].long()[..., :, None], y[..., -1].long()[..., None, :]]

    loss = SamplesLoss("sinkhorn", p=2, blur=reg**0.5, scaling=scaling, debias=True, cost=cost, backend="tensorized")
    yt = torch.cat([target.x, (target.y + offset).to(target.x.dtype)[:, None]], 1)

    def run():
        x = source.x.clone().requires_grad_()
        xs = torch.cat([x, source.y.to(x.dtype)[:, None]], 1)
        value = loss(source.weights, xs, target.weights, yt)
        value.backward()
        return value.detach(), x.grad

    return run


def chunked_subprocess(n_per_side: int, backend: str, dtype: str) -> dict:
    """Run one large OTDD value + gradient in a fresh process; report time and peak RSS."""
    code = f"""
import json, resource, time, torch, sys
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
from bench_otdd import synthetic
from datasetflow import otdd
gen = torch.Generator().manual_seed(0)
dtype = getattr(torch, {dtype!r})
src = synthetic(gen, 10, {n_per_side} // 10, 784, dtype=dtype)
tgt = synthetic(gen, 10, {n_per_side} // 10, 784, shift=0.5, dtype=dtype)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
x = src.x.clone().requires_grad_()
res = otdd(src.with_features(x), tgt, backend={backend!r})
res.distance_squared.backward()
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "data_rss_gb": base / 1e6, "n_iter": res.ot.n_iter, "converged": res.ot.converged,
                  "backend": res.ot.backend, "value": float(res.distance_squared)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def full_classes_subprocess(dtype: str) -> dict:
    """``otdd(mnist, fashion-mnist)`` (full test sets, ~1000 images per class > d = 784: the d x d path of the
    Gaussian label cost) in a fresh process: total and label-cost seconds, peak RSS, value."""
    code = f"""
import json, resource, time, torch
from datasetflow import GaussianLabelCost, load_dataset, otdd
dtype = getattr(torch, {dtype!r})
source, target = load_dataset("mnist").to(dtype=dtype), load_dataset("fashion-mnist").to(dtype=dtype)
start = time.perf_counter()
cost = GaussianLabelCost()
first, second = cost.summarize(source), cost.summarize(target)
labels = (cost.pairwise(first, second), cost.pairwise(first), cost.pairwise(second))
label_seconds = time.perf_counter() - start
result = otdd(source, target)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "label_seconds": label_seconds, "value": float(result.distance_squared),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "rank": max(first.factors.shape[1], second.factors.shape[1]),
                  "labels": [m.double().tolist() for m in labels]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def small_reg_runs(source, target, repeats: int, reg: float = 0.2) -> dict:
    """Value + gradient at a small ``reg`` (float32, default settings: annealing, then the value-based stop),
    paired with the floor, against a float64 run converged to tol 1e-5 with ``value_tol=None`` (the reference)."""
    import warnings

    from datasetflow.errors import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        seconds, ratio, (res, grad) = paired_time(otdd_fn(source, target, reg=reg), floor_fn(source, target), repeats)
        src64, tgt64 = source.to(dtype=torch.float64), target.to(dtype=torch.float64)
        start = time.perf_counter()
        ref, ref_grad = otdd_fn(src64, tgt64, reg=reg, max_iter=5000, value_tol=None)()
        ref_seconds = time.perf_counter() - start
    value, reference = float(res.distance_squared), float(ref.distance_squared)
    return {
        "seconds": seconds,
        "ratio": ratio,
        "grad_deviation": float((grad.double() - ref_grad).norm() / ref_grad.norm()),
        "value": value,
        "sweeps": res.ot.n_iter,
        "status": res.ot.config.get("status"),
        "marginal_error": res.ot.marginal_error,
        "reference": reference,
        "reference_seconds": ref_seconds,
        "reference_sweeps": ref.ot.n_iter,
        "reference_converged": ref.ot.converged,
        "deviation": abs(value - reference) / abs(reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problem, no chunked runs, no file written")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--large", type=int, default=10_000, help="points per side for the chunked run")
    parser.add_argument(
        "--skip-large",
        action="store_true",
        help="skip the full-size MNIST and the n = --large runs (minutes each); the section then says so",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    per_class = 40 if args.quick else 200
    per_class = int(os.environ.get("BENCH_PER_CLASS", per_class))
    gen = torch.Generator().manual_seed(0)
    source = synthetic(gen, 10, per_class, 784)
    target = synthetic(gen, 10, per_class, 784, shift=0.5)
    n = len(source)

    rows = []
    floor, _ = median_time(floor_fn(source, target, "cdist"), args.repeats)
    gemm_floor, _ = median_time(floor_fn(source, target, "gemm"), args.repeats)
    rows.append(("floor: `torch.cdist(x, y)**2` + backward", floor, None, "-"))
    rows.append(("stricter floor: one-GEMM squared distances + backward", gemm_floor, None, "-"))
    settings = [
        ("otdd defaults (gaussian inner, debiased sinkhorn outer)", {}),
        ("gaussian inner, sinkhorn outer, not debiased", {"debiased": False}),
        ("gaussian (diagonal) inner, debiased sinkhorn outer", {"inner": GaussianLabelCost(diagonal=True)}),
        ("gaussian inner, exact outer", {"outer": "exact"}),
        ("exact inner, debiased sinkhorn outer", {"inner": "exact"}),
        ("exact inner, exact outer", {"inner": "exact", "outer": "exact"}),
    ]
    results = {}
    paired = {}
    for label, options in settings:
        seconds, ratio, (res, grad) = paired_time(
            otdd_fn(source, target, **options), floor_fn(source, target, "cdist"), args.repeats
        )
        results[label], paired[label] = (res, grad), ratio
        iters = res.ot.n_iter if res.ot.method == "sinkhorn" else "-"
        rows.append((label, seconds, float(res.distance_squared.detach()), iters))

    default, _ = results[settings[0][0]]
    reg = default.config["reg"]
    libs = []
    # the libraries get a precomputed label matrix: time our solver on exactly the same inputs
    label = GaussianLabelCost().pairwise(source, target).detach()
    self_labels = (GaussianLabelCost().pairwise(source).detach(), GaussianLabelCost().pairwise(target).detach())

    def ours(debiased: bool):
        def run():
            x = source.x.clone().requires_grad_()
            cost = OTDDCost(x, target.x, source.y, target.y, label, self_label_matrices=self_labels)
            res = solve(cost, source.weights, target.weights, reg=reg, debiased=debiased)
            res.value.backward()
            return res.value.detach(), x.grad

        return run

    seconds, (plain_value, plain_grad) = median_time(ours(False), args.repeats)
    libs.append(("datasetflow solve(), OTDDCost (not debiased)", seconds, float(plain_value), float(plain_value), 0.0))
    seconds, (debiased_value, default_grad) = median_time(ours(True), args.repeats)
    libs.append(
        ("datasetflow solve(), OTDDCost (debiased)", seconds, float(debiased_value), float(debiased_value), 0.0)
    )
    try:
        seconds, (value, grad) = median_time(pot_fn(source, target, reg, 1e-5), args.repeats)
        err = float((grad - plain_grad).norm() / plain_grad.norm())
        libs.append(
            ("POT ot.solve sinkhorn_log, envelope grad (not debiased)", seconds, float(value), float(plain_value), err)
        )
    except Exception as exc:  # noqa: BLE001 - optional comparison
        libs.append((f"POT failed: {exc}", float("nan"), float("nan"), float("nan"), float("nan")))
    for scaling in (0.5, 0.9):
        try:
            seconds, (value, grad) = median_time(geomloss_fn(source, target, reg, scaling), args.repeats)
            err = float((grad - default_grad).norm() / default_grad.norm())
            libs.append(
                (f"GeomLoss SamplesLoss debiased, scaling={scaling}", seconds, float(value), float(debiased_value), err)
            )
        except ImportError:
            libs.append(("GeomLoss not installed", float("nan"), float("nan"), float("nan"), float("nan")))

    # float32 against float64
    src64, tgt64 = source.to(dtype=torch.float64), target.to(dtype=torch.float64)
    res64, grad64 = otdd_fn(src64, tgt64)()
    default, default_grad = results[settings[0][0]]
    precision = {
        "value_rel_diff": abs(float(default.distance_squared) - float(res64.distance_squared))
        / abs(float(res64.distance_squared)),
        "grad_rel_diff": float((default_grad.double() - grad64).norm() / grad64.norm()),
        "label_rel_diff": float(
            (default.label_distances.double() - res64.label_distances).abs().max() / res64.label_distances.abs().max()
        ),
    }

    small_reg = small_reg_runs(source, target, max(1, args.repeats // 2))
    full = []
    if not args.quick and not args.skip_large:
        full = [(dtype, full_classes_subprocess(dtype)) for dtype in ("float32", "float64")]

    large = []
    if not args.quick and not args.skip_large:
        for backend in ("chunked", "auto"):
            large.append((backend, chunked_subprocess(args.large, backend, "float32")))

    lines = [
        "| setting | median s | x floor (cdist) | x floor, paired | x stricter floor (GEMM) | OTDD^2 "
        "| Sinkhorn sweeps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, seconds, value, iters in rows:
        val = "-" if value is None else f"{value:.6g}"
        pair = f"{paired[label]:.1f}" if label in paired else "-"
        lines.append(
            f"| {label} | {seconds:.3f} | {seconds / floor:.1f} | {pair} | {seconds / gemm_floor:.1f} | {val} "
            f"| {iters} |"
        )
    lib_lines = [
        "| library (same cost, same reg) | median s | x floor | value | datasetflow value | grad rel. diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, seconds, value, ours, err in libs:
        lib_lines.append(f"| {label} | {seconds:.3f} | {seconds / floor:.1f} | {value:.6g} | {ours:.6g} | {err:.2e} |")
    large_lines = [
        "| n per side | backend | seconds (value + grad) | peak RSS GB | sweeps | converged |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for backend, info in large:
        large_lines.append(
            f"| {args.large} | {backend} -> {info['backend']} | {info['seconds']:.1f} | "
            f"{info['peak_rss_gb']:.2f} | {info['n_iter']} | {info['converged']} |"
        )
    precision_line = (
        f"float32 vs float64 (default settings): OTDD^2 relative difference "
        f"{precision['value_rel_diff']:.2e}, gradient {precision['grad_rel_diff']:.2e}, "
        f"label distances (max, relative to the largest) {precision['label_rel_diff']:.2e}."
    )
    small_lines = [
        "| reg | median s (value + grad) | x floor | x floor, paired | OTDD^2 | sweeps | stop | marginal error "
        "| float64 reference (tol 1e-5) | its sweeps | its seconds | value deviation | gradient deviation |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        f"| 0.2 | {small_reg['seconds']:.2f} | {small_reg['seconds'] / floor:.1f} | {small_reg['ratio']:.1f} "
        f"| {small_reg['value']:.7g} | {small_reg['sweeps']} | {small_reg['status']} "
        f"| {small_reg['marginal_error']:.1e} | {small_reg['reference']:.7g} | {small_reg['reference_sweeps']} "
        f"| {small_reg['reference_seconds']:.1f} | {small_reg['deviation']:.1e} | {small_reg['grad_deviation']:.1e} |",
    ]
    default_ratio = paired[settings[0][0]]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    verdicts = [
        f"- item 5, defaults at most 6x the floor: {verdict(default_ratio <= 6)} (paired ratio {default_ratio:.1f}x, "
        f"unpaired {rows[2][1] / floor:.1f}x).",
        f"- item 5, float32 gradient within 1e-4 (relative) of float64: {verdict(precision['grad_rel_diff'] <= 1e-4)} "
        f"({precision['grad_rel_diff']:.1e}).",
        f"- item 6, reg = 0.2 at most 10x the floor: {verdict(small_reg['ratio'] <= 10)} (paired ratio "
        f"{small_reg['ratio']:.1f}x, unpaired {small_reg['seconds'] / floor:.1f}x).",
        f"- item 6, reg = 0.2 value within 0.1 % of the float64 reference: {verdict(small_reg['deviation'] <= 1e-3)} "
        f"({100 * small_reg['deviation']:.3f} %).",
    ]
    full_lines = [
        "| dtype | seconds (otdd, no grad) | of which label costs | peak RSS GB | factor rows (max rank) | OTDD^2 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for dtype, info in full:
        full_lines.append(
            f"| {dtype} | {info['seconds']:.1f} | {info['label_seconds']:.1f} | {info['peak_rss_gb']:.2f} "
            f"| {info['rank']} | {info['value']:.7g} |"
        )
    if full:
        worst = max(
            float((torch.tensor(a) - torch.tensor(b)).abs().max() / torch.tensor(b).abs().max())
            for a, b in zip(full[0][1]["labels"], full[1][1]["labels"], strict=True)
        )
        full_lines.append("")
        full_lines.append(
            f"float32 against float64: OTDD^2 relative difference "
            f"{abs(full[0][1]['value'] - full[1][1]['value']) / abs(full[1][1]['value']):.1e}, label distances "
            f"(max, relative to the largest) {worst:.1e}."
        )
    report = "\n".join(
        lines
        + [""]
        + verdicts
        + [""]
        + lib_lines
        + [""]
        + small_lines
        + [""]
        + ([*full_lines, ""] if full else [])
        + ([*large_lines, ""] if large else [])
        + [precision_line]
    )
    print(report)
    if args.quick:
        return
    header = f"""## OTDD distance (`benchmarks/bench_otdd.py`)

Written by `python benchmarks/bench_otdd.py` on {time.strftime("%Y-%m-%d")}:
{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}
({torch.get_num_threads()} threads), Python {platform.python_version()}. Every time is the median of
{args.repeats} runs after a warm-up, in one process; ratios are against the floors measured in the same run.
The machine was shared with other jobs while this ran (1-minute load average {os.getloadavg()[0]:.1f} when
the report was written, on {os.cpu_count()} cores), so single times are noisy: "x floor, paired" is the
median over the runs of each run's time divided by a floor run made just before it, which follows the load;
the targets are judged on it.

Targets of issue 14 (judged in this run):

{chr(10).join(verdicts)}

### OTDD value + gradient, 10 classes x 200 points per side, d = 784 (float32)

Each class has 200 < 784 samples, so every class covariance is rank-deficient. The floor (issue #2)
is one {n} x {n} x 784 pairwise squared-distance matrix with its backward pass, `torch.cdist(x, y)**2`;
the stricter floor computes the same matrix with one GEMM (`|x|^2 + |y|^2 - 2 x y^T`), as our cost
does. "OTDD^2" is `distance_squared`; the Sinkhorn regularisation is the default, {reg:.4g} (5 % of
the mean ground cost), with tolerance 1e-5 on the L1 marginal error. Target of issue 14 item 5: the
defaults (value + gradient) at most 6x the floor. The Gaussian label cost and the ground cost share one
GEMM per cost matrix: the Gram of the stacked class-centred samples holds the inner products of the feature
cost as its entries and, times one scale per class pair, the class-pair products as its blocks
(`LabelCost.dense_ground_cost`, docs/otdd.md), so the cross cost and the two self-costs take three
2000 x 2000 x 784 GEMMs forward and two backward, with everything else in thin GEMMs. The 190
float64 Gram eigenproblems (with eigenvectors where a gradient is needed, 145 of them) are split over the
intra-op threads, each chunk one single-threaded LAPACK call that also forms the Gram and the polar factor
(in the features' dtype). At this `reg` the cost's spread is about 12 `reg`, so every Sinkhorn problem sweeps in
kernel form: two matrix-vector products with a fixed float32 Gibbs kernel and float64 potentials.

"""
    body = f"""
### The same Sinkhorn problem in POT and GeomLoss

Same data, same precomputed label-distance matrix, same `reg`; every row times cost matrix + solve +
gradient with respect to the source features. Our rows call `solve()` on the implicit `OTDDCost`. POT runs
its log-domain Sinkhorn on the explicit {n} x {n} OTDD cost to the same tolerance (its error is measured
differently) and is compared with our non-debiased value. GeomLoss gets the OTDD cost as a custom cost
function (the reference implementation's approach), `blur = sqrt(reg)`, and is compared with our debiased
value; it anneals epsilon and stops, so its gradient differs from the converged one.

"""
    large_text = f"""
### Large problems: {args.large} points per side, d = 784 (float32)

Value + gradient with default settings, each in a fresh process. `chunked` recomputes {args.large} x
{args.large} cost blocks at every sweep (memory O(n + m) per block; time dominated by the
{args.large} x {args.large} x 784 products); `auto` picks the dense backend because the float32 cost
fits in 1 GiB. 1000 points per class exceed d = 784, so the label cost takes the d x d square-root
path here. Peak RSS includes the datasets and the Python process.

"""
    small_text = """
### Small regularisation: reg = 0.2 (issue 14 item 6)

The reference implementation's setting (its epsilon 0.1 on half our cost) on the same problem, costs of order
10^3: exponents C/reg near 4e4, beyond float32's resolution of the potentials. The solver anneals epsilon by
0.5 from the cost's spread down to reg (one sweep per stage), then iterates (Anderson-accelerated) until tol
1e-5, until the marginal error stalls at the float32 precision floor, or (default `value_tol="auto"` for
annealed solves) until the dual value is estimated within a relative 1e-4 of its limit from its rise and the
error's rate of fall over the last 5 sweeps. The last two stop with `converged=False`, `stop` naming which,
and a `ConvergenceWarning`. The cost spans about 2 x 10^4 `reg`, so the sweeps are log-domain ones (above
`KERNEL_MAX_SPREAD`), their exponents formed in reused work buffers, and the log-sum-exps clamp the shifted
exponents at -80 (fast `exp`). The reference
is the same problem in float64 with `value_tol=None`, converged to tol 1e-5 (max_iter 5000); the gradient
deviation compares the two gradients with respect to the source features. Target of issue 14: at most 10x
the floor, value within 0.1 % of the reference.

"""
    full_text = """
### Full-size classes: `otdd(mnist, fashion-mnist)`, 10,000 test images per side (issue 9 item 1)

About 1,000 images per class > d = 784, so every class takes the d x d path of the Gaussian label cost:
its covariance is accumulated in float64 row blocks and factored once by a float64 eigendecomposition
(eigenvalue floor d eps64 lambda_max; rows = numerical rank), and each class pair's trace term is the
nuclear norm of a rank x rank product (float64 eigenvalues). Each dtype in a fresh process; no gradient
(as `datasetflow distance`). The outer problem is the debiased 10,000 x 10,000 Sinkhorn (dense backend).

"""
    text = header + "\n".join(lines) + "\n" + body + "\n".join(lib_lines) + "\n"
    text += small_text + "\n".join(small_lines) + "\n"
    if full:
        text += full_text + "\n".join(full_lines) + "\n"
    if large:
        text += large_text + "\n".join(large_lines) + "\n"
    if args.skip_large:
        text += (
            "\n### Full-size classes and large problems\n\nNot run this time (`--skip-large`, to fit the shared "
            "machine's time): run `python benchmarks/bench_otdd.py` without it for the full-size MNIST and "
            f"n = {args.large} tables.\n"
        )
    text += "\n### Precision\n\n" + precision_line + "\n"
    write_section(args.output, "bench_otdd", text)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
