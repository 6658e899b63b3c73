"""Distributed benchmark: traffic per flow step, per-rank memory and time, loopback collectives, a projection.

Two cores cannot show a speed-up, so this script measures what one machine can and projects the rest:

1. **Bytes per step per objective**, from the traffic model of ``docs/distributed.md`` (a function of n, C, L, Q,
   d and the world size W) and *measured* on 2 gloo ranks by counting the bytes every rank puts into
   ``all_reduce`` / ``all_gather`` during one evaluation and backward pass of each objective (float64).
2. **Loopback collective time**: ``all_reduce`` and ``all_gather`` of growing float32 tensors between 2 gloo ranks
   on 127.0.0.1, fitted to ``alpha + bytes / beta``.
3. **One rank's share of a 10^6-particle MMD-SW step**: 125,000 particles at d = 784 (10 classes), L = 500
   directions, the scalable (quantile-sketch, Q = 256) mode, value and gradient, in a fresh process (time and peak
   RSS). The exact mode's replicated part (sorting all n x L gathered projections on every rank) is modelled.
4. **Projected time per step at 10^6 particles on 8 ranks** = measured local share + modelled traffic at the
   measured loopback rate (and at an assumed link rate, given by ``--link-gbps``): a projection, not a measurement.

Usage::

    python benchmarks/bench_distributed.py            # writes its section of docs/benchmarks.md
    python benchmarks/bench_distributed.py --quick    # smaller local share (12,500 particles), prints only
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
F64 = 8  # bytes of a float64 / int64


# ---------------------------------------------------------------------- the traffic model (bytes per rank per step)
def model_bytes(
    objective: str,
    *,
    n_max: int,
    m: int,
    classes: int,
    target_classes: int,
    dim: int,
    world: int,
    size: int,
    projections: int = 0,
    bins: int = 0,
    sweeps: tuple[int, int] = (0, 0),
    chunks: int = 1,
    n_total: int = 0,
    batches: int = 0,
) -> int:
    """Bytes this rank puts into collectives for one evaluation + backward (``size``: bytes of the data dtype;
    ``n_max``: the largest shard; ``sweeps``: Sinkhorn sweeps of the cross and source self problems; ``chunks``:
    direction chunks of a sketched sliced distance; ``n_total``: all particles; ``batches``: minibatch pairs K)."""
    c, ct, d, s = classes, target_classes, dim, size
    L, Q = projections, bins
    gather = F64  # every gather_rows first all-gathers one int64 row count
    dataset_gather = 3 * gather + n_max * (d * s + F64 + s)  # gather_dataset: x, y, weights
    if objective == "potential":
        return s
    if objective in ("sotdd exact", "otdd lowrank"):
        return dataset_gather
    if objective.endswith(" sketch") and not objective.startswith("mmd_sw"):
        # n, class masses, class counts, the weight check; per chunk: counts, ranges, histograms (float64)
        fixed = F64 * (2 * c + 2) + F64 * c * (chunks + 2 * L + L * Q)
        if objective == "swbg sketch":
            return fixed + F64 * c * (d + d * d)  # label-space sums (identity label map: d' = d), once
        return fixed + F64 * c * L  # the exact class terms (moments; SWB1DG's class means), per direction
    if objective == "otdd minibatch":
        # gather, the K values (data dtype), K linear values + 3 counters, the marginal error; backward: the
        # gradient of the gathered features summed over the ranks (mark_replicated)
        return dataset_gather + batches * s + F64 * (batches + 3) + F64 + n_total * d * s
    if objective == "interaction":
        return 3 * gather + n_max * (d * s + F64 + s) + s
    if objective == "mmd_sw exact":
        return c * s + 2 * gather + n_max * (projections * s + F64)
    if objective == "mmd_sw sketch":
        return F64 * c * (1 + 2 * projections + projections * bins) + c * s
    if objective == "otdd":
        cross, self_ = sweeps
        stats = F64 * (3 * c + c * d + c * d * d)
        fixed = stats + 3 * F64 + world * F64  # n total, reg scale (twice), row offset
        cross_part = 2 * F64 + cross * 2 * m * s + (2 + m) * s
        gathers = 4 * gather + n_max * (d * s + F64 + s + s)  # x, y, weights, f of the cross problem
        self_part = 2 * F64 + self_ * (gather + n_max * s) + (2 + n_max * world) * s
        backward = (c * ct + c * c) * s  # mark_replicated label matrices
        return fixed + cross_part + gathers + self_part + backward
    raise ValueError(objective)


# ---------------------------------------------------------------------- ranks on 127.0.0.1
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, size: int, port: int, job: str, args: dict, queue) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
    )
    torch.set_num_threads(1)
    from datasetflow.distributed import init_from_env

    world = init_from_env(timeout=120)
    out = {"traffic": _traffic, "collectives": _collectives}[job](world, **args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    buffer = io.BytesIO()
    torch.save(out, buffer)
    queue.put((rank, buffer.getvalue()))
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def run_ranks(job: str, size: int = 2, **args) -> list[dict]:
    """Run ``job`` on ``size`` gloo ranks; its per-rank results in rank order."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    procs = [context.Process(target=_rank_main, args=(r, size, port, job, args, queue)) for r in range(size)]
    for proc in procs:
        proc.start()
    results = {}
    for _ in range(size):
        rank, value = queue.get(timeout=1800)
        results[rank] = torch.load(io.BytesIO(value), weights_only=False)
    for proc in procs:
        proc.join(timeout=60)
    return [results[r] for r in range(size)]


class _Counter:
    """Counts the bytes this rank puts into all_reduce / all_gather (the calls ``datasetflow.distributed`` makes)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist, self.bytes = dist, 0
        self.reduce, self.gather = dist.all_reduce, dist.all_gather

        def all_reduce(tensor, *a, **k):
            self.bytes += tensor.numel() * tensor.element_size()
            return self.reduce(tensor, *a, **k)

        def all_gather(out, tensor, *a, **k):
            self.bytes += tensor.numel() * tensor.element_size()
            return self.gather(out, tensor, *a, **k)

        dist.all_reduce, dist.all_gather = all_reduce, all_gather

    def take(self) -> int:
        value, self.bytes = self.bytes, 0
        return value


def _labeled(counts: list[int], dim: int, seed: int, shift: float, dtype=torch.float64):
    from datasetflow import LabeledDataset

    gen = torch.Generator().manual_seed(seed)
    x = torch.cat(
        [torch.randn(k, dim, generator=gen, dtype=dtype) * (0.5 + 0.2 * c) + shift * c for c, k in enumerate(counts)]
    )
    labels = [c for c, k in enumerate(counts) for _ in range(k)]
    return LabeledDataset(x, labels).with_class_weights("uniform")


def _traffic(world, n: int, m: int, classes: int, dim: int, projections: int, bins: int) -> dict:
    """Measured bytes of one evaluation + backward of every sharded objective (float64)."""
    from datasetflow import busemann, class_repulsion, otdd, potential, sotdd
    from datasetflow.data import shard
    from datasetflow.flows import FlowState
    from datasetflow.functionals import mmd_sw_to

    base = n // classes
    source = _labeled([base + (1 if c < n % classes else 0) for c in range(classes)], dim, 1, 1.0)
    target = _labeled([m // classes] * classes, dim, 2, 1.3)
    part = shard(source, world)
    counter = _Counter()
    measured, sweeps = {}, None

    def evaluate(functional) -> int:
        state = FlowState.from_dataset(part)
        state.world = world
        state.x.requires_grad_()
        counter.take()
        functional(state).backward()
        return counter.take()

    measured["potential"] = evaluate(potential(lambda x, y: 0.5 * (x**2).sum(1)))
    measured["interaction"] = evaluate(class_repulsion(scale=1.0))
    measured["mmd_sw exact"] = evaluate(mmd_sw_to(target, n_projections=projections))
    measured["mmd_sw sketch"] = evaluate(mmd_sw_to(target, n_projections=projections, quantiles=bins))
    x = part.x.clone().requires_grad_()
    counter.take()
    result = otdd(part.with_features(x), target, world=world)
    result.distance_squared.backward()
    measured["otdd"] = counter.take()
    sweeps = (result.ot.config["sweeps"]["cross"], result.ot.config["sweeps"]["source_self"])
    chunks = {}
    for name, call, options in (
        ("sotdd exact", sotdd, {}),
        ("sotdd sketch", sotdd, {"quantiles": bins}),
        ("swb1dg sketch", busemann, {"quantiles": bins}),
        ("swbg sketch", busemann, {"quantiles": bins, "variant": "swbg", "label_map": "identity"}),
    ):
        x = part.x.clone().requires_grad_()
        counter.take()
        res = call(part.with_features(x), target, world=world, n_projections=projections, **options)
        res.value_pow.backward()
        measured[name] = counter.take()
        chunks[name] = -(-projections // res.config["chunk"])
    for name, options in (
        ("otdd minibatch", {"outer": "minibatch", "batch_size": 50, "n_batches": 5}),
        ("otdd lowrank", {"outer": "lowrank", "rank": 5}),
    ):
        x = part.x.clone().requires_grad_()
        counter.take()
        otdd(part.with_features(x), target, world=world, **options).distance_squared.backward()
        measured[name] = counter.take()
    return {"measured": measured, "sweeps": sweeps, "n_local": len(part), "chunks": chunks, "batches": 5}


def _collectives(world, sizes: list[int], repeats: int) -> dict:
    """Median loopback times of all_reduce and all_gather of float32 tensors of the given sizes."""
    import torch.distributed as dist

    out = {}
    for count in sizes:
        tensor = torch.ones(count)
        parts = [torch.empty_like(tensor) for _ in range(world.size)]
        for name, call in (
            ("all_reduce", lambda tensor=tensor: dist.all_reduce(tensor)),
            ("all_gather", lambda tensor=tensor, parts=parts: dist.all_gather(parts, tensor)),
        ):
            call()
            times = []
            for _ in range(repeats):
                dist.barrier()
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            out[(name, count)] = statistics.median(times)
    return {"times": out}


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``t = alpha + bytes / beta``; returns (alpha seconds, beta bytes/s)."""
    xs, ys = (
        torch.tensor([p[0] for p in points], dtype=torch.float64),
        torch.tensor([p[1] for p in points], dtype=torch.float64),
    )
    design = torch.stack([torch.ones_like(xs), xs], dim=1)
    alpha, slope = torch.linalg.lstsq(design, ys[:, None]).solution.flatten().tolist()
    return max(alpha, 0.0), 1.0 / max(slope, 1e-30)


# ---------------------------------------------------------------------- one rank's share, in a fresh process
LOCAL_SNIPPET = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {bench!r})
from bench_distributed import _labeled
from datasetflow.flows import FlowState
from datasetflow.functionals import mmd_sw_to, sotdd_to
torch.set_num_threads({threads})
n, classes, dim, L, Q, m = {n}, {classes}, {dim}, {L}, {Q}, {m}
source = _labeled([n // classes] * classes, dim, 1, 0.05, dtype=torch.float32)
target = _labeled([m // classes] * classes, dim, 2, 0.06, dtype=torch.float32)
functional = {{"mmd_sw": mmd_sw_to, "sotdd": sotdd_to}}[{objective!r}](target, n_projections=L, quantiles=Q)
state = FlowState.from_dataset(source)
state.x.requires_grad_()
times = []
for _ in range({repeats} + 1):
    state.x.grad = None
    start = time.perf_counter()
    functional(state).backward()
    times.append(time.perf_counter() - start)
print(json.dumps({{"seconds": sorted(times[1:])[len(times[1:]) // 2], "first": times[0],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def local_share(
    n: int,
    classes: int,
    dim: int,
    projections: int,
    bins: int,
    m: int,
    repeats: int,
    threads: int,
    objective: str = "mmd_sw",
) -> dict:
    code = LOCAL_SNIPPET.format(
        objective=objective,
        bench=str(Path(__file__).resolve().parent),
        n=n,
        classes=classes,
        dim=dim,
        L=projections,
        Q=bins,
        m=m,
        repeats=repeats,
        threads=threads,
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- the report
def ring_seconds(objective_bytes: list[tuple[str, int]], world: int, alpha: float, beta: float) -> float:
    """Time of a list of (kind, payload bytes) collectives on a ring of ``world`` ranks: an all-reduce moves
    ``2 (W - 1) / W`` times its payload per rank, an all-gather ``(W - 1)`` times this rank's part."""
    total = 0.0
    for kind, payload in objective_bytes:
        factor = 2 * (world - 1) / world if kind == "all_reduce" else (world - 1)
        total += alpha * (2 * (world - 1) if kind == "all_reduce" else world - 1) + factor * payload / beta
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 12,500-particle local share; print only")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--link-gbps", type=float, default=100.0, help="assumed inter-node link for the projection")
    parser.add_argument("--threads", type=int, default=1, help="threads of the local-share process")
    args = parser.parse_args()

    # 1. traffic, measured on 2 ranks against the model (float64, small problem)
    small = {"n": 601, "m": 200, "classes": 4, "dim": 6, "projections": 40, "bins": 32}
    traffic = run_ranks("traffic", 2, **small)
    n_max = max(r["n_local"] for r in traffic)
    sweeps = traffic[0]["sweeps"]
    rows = []
    for objective, measured in traffic[0]["measured"].items():
        model = model_bytes(
            objective,
            n_max=n_max,
            m=small["m"],
            classes=small["classes"],
            target_classes=small["classes"],
            dim=small["dim"],
            world=2,
            size=F64,
            projections=small["projections"],
            bins=small["bins"],
            sweeps=sweeps,
            chunks=traffic[0]["chunks"].get(objective, 1),
            n_total=small["n"],
            batches=traffic[0]["batches"],
        )
        rows.append((objective, model, measured, max(r["measured"][objective] for r in traffic)))

    # 2. loopback collectives
    sizes = [1_000, 100_000, 1_000_000, 4_000_000] if not args.quick else [1_000, 100_000, 1_000_000]
    times = run_ranks("collectives", 2, sizes=sizes, repeats=5)[0]["times"]
    fits = {
        kind: fit_line([(4 * count, times[(kind, count)]) for count in sizes]) for kind in ("all_reduce", "all_gather")
    }

    # 3. one rank's share of a 10^6-particle MMD-SW step
    big = {
        "n": 125_000 if not args.quick else 12_500,
        "classes": 10,
        "dim": 784,
        "projections": 500,
        "bins": 256,
        "m": 10_000,
    }
    share = local_share(**big, repeats=2 if not args.quick else 1, threads=args.threads)
    sotdd_share = local_share(**big, repeats=2 if not args.quick else 1, threads=args.threads, objective="sotdd")

    # 4. projection to 10^6 particles on 8 ranks (float32 data, Sinkhorn sweeps as measured above)
    world, n, s = 8, 1_000_000, 4
    proj = {
        "n_max": n // world,
        "m": big["m"],
        "classes": 10,
        "target_classes": 10,
        "dim": 784,
        "world": world,
        "size": s,
        "projections": 500,
        "bins": 256,
        "sweeps": sweeps,
    }
    from datasetflow.distances.sliced import CHUNK_ELEMENTS

    chunk = max(1, min(500, CHUNK_ELEMENTS // (n // world + 4 * 256 * 10 + big["m"])))  # the default chunk
    proj.update(chunks=-(-500 // chunk), n_total=n, batches=n // 1000)
    big_bytes = {
        obj: model_bytes(obj, **proj)
        for obj in (
            "potential",
            "interaction",
            "mmd_sw exact",
            "mmd_sw sketch",
            "otdd",
            "sotdd exact",
            "sotdd sketch",
            "swb1dg sketch",
            "swbg sketch",
            "otdd minibatch",
            "otdd lowrank",
        )
    }
    alpha_r, beta_r = fits["all_reduce"]
    sketch_collectives = [("all_reduce", big_bytes["mmd_sw sketch"])]
    sotdd_collectives = [("all_reduce", big_bytes["sotdd sketch"])]
    exact_collectives = [("all_gather", big_bytes["mmd_sw exact"])]
    link = args.link_gbps * 1e9 / 8
    projected = {
        "sketch_loopback": share["seconds"] + ring_seconds(sketch_collectives, world, alpha_r, beta_r),
        "sketch_link": share["seconds"] + ring_seconds(sketch_collectives, world, alpha_r, link),
        "exact_link_comm": ring_seconds(exact_collectives, world, fits["all_gather"][0], link),
        "sotdd_loopback": sotdd_share["seconds"] + ring_seconds(sotdd_collectives, world, alpha_r, beta_r),
        "sotdd_link": sotdd_share["seconds"] + ring_seconds(sotdd_collectives, world, alpha_r, link),
    }
    exact_sort_floats = n * 500  # every rank sorts all gathered projections in the exact mode

    lines = [
        "## Distributed flows (`benchmarks/bench_distributed.py`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
        f"torch {torch.__version__}, gloo on 127.0.0.1. Model: `docs/distributed.md` (traffic model).",
        "",
        f"**Bytes per step per objective**, model against measured (2 gloo ranks, float64, n = {small['n']} "
        f"(largest shard {n_max}), m = {small['m']}, C = {small['classes']}, d = {small['dim']}, "
        f"L = {small['projections']}, Q = {small['bins']}; OTDD: {sweeps[0]} cross and {sweeps[1]} self "
        "Sinkhorn sweeps). Bytes this rank puts into all_reduce / all_gather for one evaluation and backward pass:",
        "",
        "| objective | model (bytes) | measured, rank 0 | measured, max over ranks |",
        "|---|---:|---:|---:|",
        *[f"| {o} | {mo:,} | {me:,} | {mx:,} |" for o, mo, me, mx in rows],
        "",
        "Sliced distances (`sotdd`, `busemann`) are one call with the default chunk of directions; their sketched "
        "rows (`quantiles=Q`) exchange float64 sketches and class sums only. `otdd minibatch` splits the "
        f"{traffic[0]['batches']} minibatch pairs over the ranks (its backward sums the gathered features' gradient, "
        "n d numbers); `otdd lowrank` is the replicated solve on the gathered source.",
        "",
        f"At n = 10^6 on W = {world} ranks (float32, d = 784, C = 10, m = {big['m']:,}, L = 500, Q = 256 "
        f"({proj['chunks']} direction chunks of {chunk}), minibatch pairs K = n / 1000, the same "
        "sweep counts), the model gives per rank and step:",
        "",
        "| objective | bytes per rank per step (model) |",
        "|---|---:|",
        *[f"| {o} | {b:,} |" for o, b in big_bytes.items()],
        "",
        "**Loopback collectives** (2 gloo ranks, float32, median of 5):",
        "",
        "| elements | all_reduce (ms) | all_gather (ms) |",
        "|---:|---:|---:|",
        *[f"| {c:,} | {1e3 * times[('all_reduce', c)]:.3f} | {1e3 * times[('all_gather', c)]:.3f} |" for c in sizes],
        "",
        f"Fit `t = alpha + bytes / beta`: all_reduce alpha = {1e6 * fits['all_reduce'][0]:.0f} us, beta = "
        f"{fits['all_reduce'][1] / 1e9:.2f} GB/s; all_gather alpha = {1e6 * fits['all_gather'][0]:.0f} us, beta = "
        f"{fits['all_gather'][1] / 1e9:.2f} GB/s.",
        "",
        f"**One rank's share of a 10^6-particle MMD-SW step** (measured): {big['n']:,} particles, d = 784, 10 classes, "
        f"target {big['m']:,} points, L = 500 directions, quantile sketches with Q = {big['bins']} "
        f"(K = {4 * big['bins']} atoms), value and "
        f"gradient, {args.threads} thread(s): **{share['seconds']:.2f} s** per step (first step "
        f"{share['first']:.2f} s), peak RSS {share['peak_rss_mb']:.0f} MB. The same share of an **s-OTDD** step "
        f"(`sotdd_to(quantiles={big['bins']})`, k = 5 moments, jointly standardised): "
        f"**{sotdd_share['seconds']:.2f} s** (first step {sotdd_share['first']:.2f} s), peak RSS "
        f"{sotdd_share['peak_rss_mb']:.0f} MB. Peak RSS of the 2-rank traffic run: "
        + ", ".join(f"rank {r}: {t['peak_rss_mb']:.0f} MB" for r, t in enumerate(traffic))
        + ".",
        "",
        f"**Projected (not measured) time per step at 10^6 particles on {world} ranks**, MMD-SW with sketches: "
        f"{projected['sketch_loopback']:.2f} s with the loopback all_reduce rate, {projected['sketch_link']:.2f} s "
        f"with an assumed {args.link_gbps:g} Gb/s link (local share plus ring all-reduce of "
        f"{big_bytes['mmd_sw sketch']:,} bytes). The exact mode would all-gather {big_bytes['mmd_sw exact']:,} bytes "
        f"per rank ({projected['exact_link_comm']:.2f} s on that link) and then sort {exact_sort_floats:,} projections "
        "on every rank (replicated work that does not shrink with W), which is why the sketch mode exists. "
        f"s-OTDD with sketches: {projected['sotdd_loopback']:.2f} s (loopback rate), {projected['sotdd_link']:.2f} s "
        f"(assumed link), ring all-reduce of {big_bytes['sotdd sketch']:,} bytes; its exact mode all-gathers the "
        f"source, {big_bytes['sotdd exact']:,} bytes per rank. "
        "GPU (NCCL) timings: not measured (no GPU was lent to this run).",
        "",
        f"Load average when the section was written: {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} / "
        f"{os.getloadavg()[2]:.2f} (1 / 5 / 15 min; `uptime`).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.quick:
        print("\n(--quick: the local share is reduced to 12,500 particles; docs/benchmarks.md not written)")
    else:
        write_section(args.output, "bench_distributed", text)


if __name__ == "__main__":
    main()
