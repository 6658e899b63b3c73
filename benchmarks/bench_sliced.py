"""Sliced dataset distances at scale: value + gradient against a floor measured in the same run.

For n = 10^3, 10^4 and 10^5 points per side, d = 784, 10 equal classes, float32, one thread, each case
runs in a fresh process (time: median of ``repeats`` runs after a warm-up; memory: the peak RSS of the
process after the method's warm-up, minus its RSS once the data exist). Every method's process also times
the floor, alternating floor and method runs: its ratio to the floor is the median of the paired ratios
measured in the same process, which follows the load of the shared machine. The load average
(``os.getloadavg``) is recorded before every case and ``uptime`` at the start and end of the invocation:

* floor: project both datasets on the L = 1000 directions (in the same chunks as the sliced
  distances), sort every projection (the library's row sort), and back-propagate a sum over the sorted
  values to both feature tensors: the work no sliced distance can avoid;
* ``sotdd`` (k = 5), ``swb1dg``, ``swbg`` (PCA-10 label space): ``value_pow`` and its gradient with respect
  to both datasets' features;
* MMD-SW (``mmd_sw_to``, L = 1000, Riesz kernel): value + gradient for the source;
* OTDD (Gaussian inner) with a Sinkhorn outer problem and with an exact one, where it fits in time.

A log-log figure of time against n with the fitted slopes goes to ``docs/figures/bench_sliced.png``.

Usage::

    python benchmarks/bench_sliced.py            # writes its section of docs/benchmarks.md
    python benchmarks/bench_sliced.py --quick    # n = 10^3 and 10^4 only, prints only
    python benchmarks/bench_sliced.py --sizes 1000,10000 --methods floor,sotdd   # rerun these, keep the others
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
D, L, C = 784, 1000, 10
METHODS = ("floor", "sotdd", "swb1dg", "swbg", "mmd_sw", "otdd_sinkhorn", "otdd_exact")
#: the largest n per side each method runs at (time on a shared 2-core CPU)
LIMITS = {"otdd_sinkhorn": 10_000, "otdd_exact": 1_000}
LABELS = {
    "floor": "floor (project, sort, backward)",
    "sotdd": "s-OTDD (k = 5)",
    "swb1dg": "SWB1DG",
    "swbg": "SWBG (PCA-10)",
    "mmd_sw": "MMD-SW (L = 1000, float64)",
    "otdd_sinkhorn": "OTDD, Sinkhorn outer",
    "otdd_exact": "OTDD, exact outer",
}


def case(method: str, n: int, repeats: int) -> dict:
    """Run one case in this process; returns seconds (median), peak and baseline RSS in MB."""
    import resource

    import torch

    import datasetflow as dfl
    from datasetflow.distances.sliced import CHUNK_ELEMENTS
    from datasetflow.solvers.sliced import argsort_rows, draw_directions

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % C
    means = torch.rand(C, D, generator=gen)
    x1 = 0.5 * torch.rand(n, D, generator=gen) + 0.5 * means[y]
    x2 = 0.5 * torch.rand(n, D, generator=gen) + 0.5 * means[(y + 1) % C]
    source, target = dfl.LabeledDataset(x1, y), dfl.LabeledDataset(x2, y)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def floor():
        a = x1.clone().requires_grad_(True)
        b = x2.clone().requires_grad_(True)
        chunk = max(1, min(L, CHUNK_ELEMENTS // (2 * n)))
        g = torch.Generator().manual_seed(1)
        for start in range(0, L, chunk):
            theta = draw_directions(min(chunk, L - start), D, generator=g)
            pa, pb = theta @ a.T, theta @ b.T
            sa, sb = pa.gather(1, argsort_rows(pa)), pb.gather(1, argsort_rows(pb))
            (sa.square().sum() + sb.square().sum()).backward()

    def run():
        a = x1.clone().requires_grad_(True)
        b = x2.clone().requires_grad_(True)
        if method == "floor":
            floor()
            return
        if method in ("sotdd", "swb1dg", "swbg"):
            result = dfl.distances.sliced_distance(
                source.with_features(a), target.with_features(b), family=method, n_projections=L
            )
            result.value_pow.backward()
            return
        if method == "mmd_sw":
            # float64: in float32 the class-mixture view's check that weights are uniform inside a class
            # (distances.mmd.class_masses, rtol 1e-5) fails from ~1000 points per class (float32 sums)
            a64 = a.detach().double().requires_grad_(True)
            particles = source.to(dtype=torch.float64).with_features(a64)
            dfl.mmd_sw_to(target.to(dtype=torch.float64), n_projections=L)(particles).backward()
            return
        outer = "sinkhorn" if method == "otdd_sinkhorn" else "exact"
        dfl.otdd(source.with_features(a), target, outer=outer).distance_squared.backward()

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    load = os.getloadavg()[0]
    if n < 100_000:
        run()  # warm-up (skipped at 10^5, where one run takes tens of seconds)
    times = [timed(run)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before any floor run
    floors, ratios = [], []
    if method != "floor":
        if n < 100_000:
            floor()  # warm-up
        floors.append(timed(floor))
        ratios.append(times[0] / floors[0])
    for _ in range(repeats - 1):
        if method != "floor":
            floors.append(timed(floor))
        times.append(timed(run))
        if method != "floor":
            ratios.append(times[-1] / floors[-1])
    out = {"seconds": statistics.median(times), "peak_rss_mb": peak, "base_rss_mb": base, "repeats": repeats}
    out["load_1min"] = load
    if method != "floor":
        out["floor_seconds"] = statistics.median(floors)
        out["ratio_paired"] = statistics.median(ratios)
        out["ratios"] = ratios
    return out


def in_subprocess(method: str, n: int, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--case", method, str(n), str(repeats)]
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT / "benchmarks")
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def slope(ns: list[int], seconds: list[float]) -> float | None:
    if len(ns) < 2:
        return None
    return float(np.polyfit(np.log(ns), np.log(seconds), 1)[0])


EARLIER = "earlier"  # rows saved before run stamps were recorded (the code before the overhead cuts)


def run_order(stamps) -> list[str]:
    """Run stamps, oldest first (the unstamped earlier rows first)."""
    return sorted(stamps, key=lambda k: (k != EARLIER, k))


def load_saved(path: Path) -> tuple[dict, dict]:
    """``(rows[run][method][n], runs[run])`` from results/bench_sliced.json (older flat files: one run per row's
    ``run`` field, unstamped rows in the earlier run)."""
    if not path.is_file():
        return {}, {}
    loaded = json.loads(path.read_text())
    if "rows" in loaded:
        rows = {
            run: {m: {int(n): r for n, r in v.items()} for m, v in per.items()} for run, per in loaded["rows"].items()
        }
        return rows, loaded.get("runs", {})
    rows: dict = {}
    for method in METHODS:
        for n, r in loaded.get(method, {}).items():
            rows.setdefault(r.get("run", EARLIER), {}).setdefault(method, {})[int(n)] = r
    return rows, loaded.get("runs", {})


def latest(rows: dict) -> dict[str, dict[int, tuple[str, dict]]]:
    """``{method: {n: (run, row)}}``, the most recent successful row of every case."""
    out: dict[str, dict[int, tuple[str, dict]]] = {m: {} for m in METHODS}
    for run in run_order(rows):
        for method, per in rows[run].items():
            for n, r in per.items():
                if "seconds" in r or n not in out[method]:
                    out[method][n] = (run, r)
    return out


def figure(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    order = run_order(rows)
    for k, run in enumerate(order):
        for method in METHODS:
            points = [(n, r["seconds"]) for n, r in sorted(rows[run].get(method, {}).items()) if "seconds" in r]
            if not points:
                continue
            ns, ts = zip(*points, strict=True)
            fitted = slope(list(ns), list(ts))
            label = f"{LABELS[method]}, {run}" + (f" (slope {fitted:.2f})" if fitted is not None else "")
            style = "--" if k < len(order) - 1 else "-"
            color = f"C{METHODS.index(method)}"
            ax.loglog(ns, ts, marker="o" if method != "floor" else "s", label=label, linestyle=style, color=color)
    ax.set_xlabel("n per side")
    ax.set_ylabel("seconds (value + gradient)")
    ax.set_title(f"d = {D}, L = {L}, {C} classes, float32, 1 thread (dashed: earlier runs)", fontsize=9)
    ax.legend(fontsize=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def report(rows: dict, runs: dict) -> str:
    shown = latest(rows)
    lines = [
        "## Sliced dataset distances (`benchmarks/bench_sliced.py`)",
        "",
        f"Value + gradient with respect to both datasets' features (OTDD and MMD-SW: the source's), d = {D}, "
        f"L = {L}, {C} equal classes, float32, one thread (`OMP_NUM_THREADS=1`: on this shared 2-core machine two "
        "threads were measured slower), each case in a fresh process, at normal priority on the shared machine. "
        "Seconds: median of the repeats after a warm-up (7 at n = 10^3, 3 at 10^4, 1 at 10^5 without warm-up, 1 "
        "for OTDD above 10^3; the earlier run: 3, 2, 1). Memory: peak RSS after the method's runs (before any "
        "floor run in that process) minus the RSS once the data exist. The floor projects both datasets on the L "
        "directions in the same chunks, sorts (the library's row sort) and back-propagates. **x floor** is the "
        "median of the ratios of each run to a floor run made just before it *in the same process*; rows of the "
        "earlier run (before the overhead cuts, no paired floor) give their ratio to that run's floor process, "
        "marked unpaired. Load: the 1-minute load average when the case started. Each row is the latest run of "
        "its case; the runs are listed below the table.",
        "",
        "| method | n per side | seconds | floor s (same process) | x floor | extra peak RSS MB | load | run |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method in METHODS:
        for n, (run, r) in sorted(shown[method].items()):
            if "seconds" not in r:
                lines.append(f"| {LABELS[method]} | {n:,} | failed: {r['error']} | | | | | {run} |")
                continue
            floor_row = rows.get(run, {}).get("floor", {}).get(n, {})
            if "ratio_paired" in r:
                ratio_text, floor_text = f"{r['ratio_paired']:.2f}", f"{r['floor_seconds']:.3f}"
            elif method == "floor":
                ratio_text, floor_text = "1.00", f"{r['seconds']:.3f}"
            elif "seconds" in floor_row:
                ratio_text, floor_text = f"{r['seconds'] / floor_row['seconds']:.2f} (unpaired)", ""
            else:
                ratio_text, floor_text = "", ""
            extra = r["peak_rss_mb"] - r["base_rss_mb"]
            load = f"{r['load_1min']:.1f}" if "load_1min" in r else ""
            lines.append(
                f"| {LABELS[method]} | {n:,} | {r['seconds']:.3f} | {floor_text} | {ratio_text} | {extra:.0f} | {load} "
                f"| {run} |"
            )
    lines += ["", "Targets (issue 11: s-OTDD and SWB1DG value + gradient at most 2x the floor, memory linear in n):"]
    for method in ("sotdd", "swb1dg"):
        for n, (run, r) in sorted(shown[method].items()):
            if "ratio_paired" in r:
                verdict = "met" if r["ratio_paired"] <= 2.0 else "**missed**"
                lines.append(
                    f"- {LABELS[method]}, n = {n:,}: {verdict} ({r['ratio_paired']:.2f}x; paired ratios "
                    f"{min(r['ratios']):.2f}-{max(r['ratios']):.2f} over {len(r['ratios'])} runs, "
                    f"load {r['load_1min']:.1f}; {run})"
                )
            elif "seconds" in r and "seconds" in rows.get(run, {}).get("floor", {}).get(n, {}):
                ratio = r["seconds"] / rows[run]["floor"][n]["seconds"]
                verdict = "met" if ratio <= 2.0 else "**missed**"
                lines.append(f"- {LABELS[method]}, n = {n:,}: {verdict} ({ratio:.2f}x unpaired; {run} run, not rerun)")
    lines += [
        "",
        "Fitted log-log slopes of time against n (within one run; a load change between runs would bias a fit",
    ]
    lines[-1] += " across them):"
    for run in run_order(rows):
        for method in METHODS:
            points = [(n, r["seconds"]) for n, r in sorted(rows[run].get(method, {}).items()) if "seconds" in r]
            fitted = slope([q[0] for q in points], [q[1] for q in points]) if points else None
            if fitted is not None:
                lines.append(f"- {LABELS[method]}, {run}: {fitted:.2f} (n = {', '.join(f'{q[0]:,}' for q in points)})")
    lines += ["", "![time against n](figures/bench_sliced.png)", "", "Runs:"]
    for run in run_order(rows):
        info = runs.get(run)
        if info is None:
            lines.append(
                f"- {run}: rows saved before run stamps were recorded (the code before the overhead cuts; "
                "load not recorded)."
            )
        else:
            lines.append(
                f"- {run}: {info['seconds']:.0f} s; `uptime` at the start: `{info['uptime_start']}`; at the end: "
                f"`{info['uptime_end']}`."
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", nargs=3, metavar=("METHOD", "N", "REPEATS"))
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--retry-failed", action="store_true", help="rerun only the failed cases of results/bench_sliced.json"
    )
    parser.add_argument("--sizes", help="comma-separated sizes to (re)run; the other rows keep their saved runs")
    parser.add_argument("--methods", help="comma-separated methods to (re)run; the other rows keep their saved runs")
    parser.add_argument("--render", action="store_true", help="rewrite the section and figure from the saved JSON")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.case[0], int(args.case[1]), int(args.case[2]))))
        return
    saved = ROOT / "results" / "bench_sliced.json"
    rows, runs = load_saved(saved) if (args.retry_failed or args.sizes or args.methods or args.render) else ({}, {})
    if not args.render:
        all_sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
        sizes = tuple(int(v) for v in args.sizes.split(",")) if args.sizes else all_sizes
        chosen = tuple(args.methods.split(",")) if args.methods else METHODS
        repeats = {1_000: 7, 10_000: 3, 100_000: 1}
        done = latest(rows)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        info = {"uptime_start": uptime()}
        print(info["uptime_start"], flush=True)
        start = time.perf_counter()
        for n in sizes:
            for method in chosen:
                if n > LIMITS.get(method, n):
                    continue
                if args.retry_failed and n in done[method] and "seconds" in done[method][n][1]:
                    continue
                reps = 1 if method.startswith("otdd") and n > 1_000 else repeats[n]
                row = in_subprocess(method, n, reps)
                rows.setdefault(stamp, {}).setdefault(method, {})[n] = row
                print(method, n, row, flush=True)
        info["uptime_end"] = uptime()
        info["seconds"] = time.perf_counter() - start
        runs[stamp] = info
        print(info["uptime_end"], flush=True)
    text = report(rows, runs)
    print(text)
    if not args.quick:
        figure(rows, ROOT / "docs" / "figures" / "bench_sliced.png")
        saved.parent.mkdir(exist_ok=True)
        payload = {
            "rows": {run: {m: {str(n): r for n, r in v.items()} for m, v in per.items()} for run, per in rows.items()},
            "runs": runs,
        }
        saved.write_text(json.dumps(payload, indent=1) + "\n")
        write_section(args.output, "sliced", text)


if __name__ == "__main__":
    main()
