"""Pseudo-labels chosen without labels: the seed spread of HOG + UMAP + GMM and its consensus.

The unsupervised re-purposing flows (``repurpose.py``) cluster each source once (seed 0) into 10
pseudo-classes. One-to-one, those clusters are about as right as the flow ends up (Fashion-MNIST:
the flow carries each cluster, mistakes included, to one MNIST class), and a single UMAP + GMM run
varies with its seed. Picking the seed (or the embedding, UMAP neighbours, GMM vs k-means) by its
accuracy would use the labels. This script fixes a **label-free** rule instead, before scoring:

* ``R = RUNS`` runs of the adopted pseudo-labels (HOG descriptors, 10-d UMAP, 10-component GMM) with
  the seeds ``0..R-1`` on the same source images as ``repurpose.py`` (200 per class, seed 0);
* their consensus (evidence accumulation): the co-association ``C_ij`` = the fraction of runs that put
  ``i`` and ``j`` together, clustered into 10 groups by average linkage on ``1 - C``
  (``datasetflow.labels.consensus_labels``; ``pseudo_labels(..., consensus=R)`` is the same).

The labels only score the result afterwards (one-to-one, Hungarian): every single run, their
spread, and the consensus. A label-free diagnostic is reported too: the adjusted Rand index (ARI)
between runs, and between the consensus and the runs.

Writes ``results/pseudo_consensus.json`` and the ``pseudo_consensus`` section of docs/results.md
(it also reads ``results/repurpose.json`` to state which pseudo-labels the flows there used).

Usage::

    python experiments/pseudo_consensus.py --threads 1           # 10 runs per source
    python experiments/pseudo_consensus.py --quick --threads 1   # 30 images per class, 3 runs; fails unless the
                                                                 # consensus agrees with the runs at least as
                                                                 # well as they agree with each other
"""

from __future__ import annotations

import itertools
import json
import statistics
import time

import numpy as np
import torch
from _images import (
    RESULTS,
    balanced,
    check_direction,
    load_digits,
    parse_image_args,
    peak_rss_mb,
    update_results_md,
    write_json,
)

from datasetflow.labels import clustering_accuracy, consensus_labels, pseudo_labels

SOURCES = ("usps", "fashion-mnist")
EMBEDDING, METHOD, CLUSTERS = "hog+umap", "gmm", 10
RUNS, PER_CLASS, SOURCE_SEED = 10, 200, 0
QUICK = {"runs": 3, "per_class": 30}
GOALS = {"usps": 90.0, "fashion-mnist": 60.0}  # issue 13: unsupervised re-purposing, one-to-one


def _options(parser) -> None:
    parser.add_argument(
        "--page-only", action="store_true", help="rewrite the section from results/pseudo_consensus.json (no runs)"
    )


def ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def main(argv=None) -> None:
    """Cluster every source ``RUNS`` times, take the consensus, score all of it, write JSON and the section."""
    started = time.perf_counter()
    args = parse_image_args(__doc__.splitlines()[0], argv, add=_options)
    if args.page_only:
        payload = json.loads((args.results / "pseudo_consensus.json").read_text())
        update_results_md(args, "pseudo_consensus", markdown(payload))
        return
    runs_n = QUICK["runs"] if args.quick else RUNS
    per_class = QUICK["per_class"] if args.quick else PER_CLASS
    sources = {}
    for name in SOURCES:
        source = balanced(load_digits(name, args.data_dir), per_class, seed=SOURCE_SEED)
        runs, seconds = [], []
        for seed in range(runs_n):
            tic = time.perf_counter()
            clusters = pseudo_labels(source, CLUSTERS, embedding=EMBEDDING, method=METHOD, seed=seed)
            torch.set_num_threads(args.threads)  # UMAP's numba (OpenMP) run can change the torch thread count
            runs.append(clusters.y.numpy())
            seconds.append(time.perf_counter() - tic)
        stacked = np.stack(runs)
        consensus = consensus_labels(stacked, CLUSTERS)
        truth = source.y
        single = [100.0 * clustering_accuracy(truth, torch.as_tensor(r))[0] for r in runs]
        merged = 100.0 * clustering_accuracy(truth, torch.as_tensor(consensus))[0]
        pairwise = [ari(a, b) for a, b in itertools.combinations(runs, 2)]
        to_runs = [ari(consensus, r) for r in runs]
        sources[name] = {
            "n": len(source),
            "single_runs": single,
            "single_mean": statistics.fmean(single),
            "single_std": statistics.stdev(single) if len(single) > 1 else 0.0,
            "consensus": merged,
            "consensus_cluster_sizes": np.bincount(consensus, minlength=CLUSTERS).tolist(),
            "ari_between_runs_mean": statistics.fmean(pairwise),
            "ari_consensus_to_runs_mean": statistics.fmean(to_runs),
            "seconds_per_run": statistics.fmean(seconds),
        }
        print(
            f"{name}: single runs {sources[name]['single_mean']:.1f} ± {sources[name]['single_std']:.1f} % "
            f"(min {min(single):.1f}, max {max(single):.1f}), consensus of {runs_n}: {merged:.1f} %; ARI between "
            f"runs {sources[name]['ari_between_runs_mean']:.3f}, consensus to runs "
            f"{sources[name]['ari_consensus_to_runs_mean']:.3f}",
            flush=True,
        )
    repurpose_file = RESULTS / "repurpose.json"
    used = None
    if repurpose_file.is_file():
        repurpose = json.loads(repurpose_file.read_text())
        used = repurpose["settings"].get("pseudo_labels", {})
        used = {
            **used,
            "unsupervised_one_to_one": {
                n: 100 * r["unsupervised"]["accuracy_after"] for n, r in repurpose["runs"].items()
            },
        }
    payload = {
        "settings": {
            "embedding": EMBEDDING,
            "clustering": METHOD,
            "clusters": CLUSTERS,
            "runs": runs_n,
            "seeds": list(range(runs_n)),
            "per_class": per_class,
            "source_seed": SOURCE_SEED,
            "rule": "evidence-accumulation consensus: average linkage on 1 - co-association (no labels)",
            "threads": torch.get_num_threads(),
        },
        "sources": sources,
        "repurpose_pseudo_labels": used,
        "goals": GOALS,
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
    }
    write_json(args, "pseudo_consensus", payload)
    update_results_md(args, "pseudo_consensus", markdown(payload))
    if args.quick:
        check_direction(
            {
                f"{name}: the consensus agrees with the runs (ARI) at least as well as they agree with each other": s[
                    "ari_consensus_to_runs_mean"
                ]
                >= s["ari_between_runs_mean"]
                for name, s in sources.items()
            }
        )


def markdown(payload: dict) -> str:
    s, runs = payload["settings"], payload["settings"]["runs"]
    rows = [
        "| source | single run, mean ± std (%) | single runs, min – max (%) | consensus of the runs (%) | goal of the "
        "unsupervised flow (%) | ARI between runs | ARI consensus to runs | consensus cluster sizes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in payload["sources"].items():
        rows.append(
            f"| {name} | {r['single_mean']:.1f} ± {r['single_std']:.1f} | {min(r['single_runs']):.1f} – "
            f"{max(r['single_runs']):.1f} | **{r['consensus']:.1f}** | ≥ {payload['goals'][name]:g} | "
            f"{r['ari_between_runs_mean']:.3f} | {r['ari_consensus_to_runs_mean']:.3f} | "
            f"{', '.join(map(str, r['consensus_cluster_sizes']))} |"
        )
    used = payload["repurpose_pseudo_labels"]
    if used:
        flows = ", ".join(f"{n} {v:.1f} %" for n, v in used["unsupervised_one_to_one"].items())
        state = (
            f"The unsupervised flows of the re-purposing section (results/repurpose.json) used one run "
            f"({used.get('embedding')} + {used.get('clustering')}, consensus {used.get('consensus', 1)}); they "
            f"reached {flows} one-to-one."
        )
        if used.get("consensus", 1) == 1:
            state += (
                " They were **not re-run** with the consensus labels: the consensus row above is a pseudo-label "
                "accuracy, not a flow result (the flow keeps about the accuracy of its pseudo-labels; see the "
                "re-purposing section)."
            )
        for name, r in payload["sources"].items():
            goal, flow = payload["goals"][name], used["unsupervised_one_to_one"].get(name)
            if r["consensus"] >= goal:
                continue
            state += (
                f" **{name}: the goal (≥ {goal:g} %) is missed with this rule too.** Its consensus "
                f"({r['consensus']:.1f} %) is {'below' if r['consensus'] < r['single_mean'] else 'not above'} "
                "the single runs' mean "
                f"({r['single_mean']:.1f} %), so it was not adopted; across {runs} seeds the clusters are "
                f"{min(r['single_runs']):.1f}–{max(r['single_runs']):.1f} % right, and the flow "
                + (f"reached {flow:.1f} % from the seed-0 run. " if flow is not None else "was not run. ")
                + "The cause of the miss is the clustering, not the flow: HOG + UMAP + GMM clusters are "
                f"{r['single_mean']:.1f} ± {r['single_std']:.1f} % right one to one over the seeds; "
                + (
                    f"a run at or above {goal:g} % exists only at the top of the seed spread, and picking it would "
                    "need the labels."
                    if max(r["single_runs"]) >= goal
                    else f"no run reaches {goal:g} %."
                )
            )
    else:
        state = "results/repurpose.json was not found: the re-purposing flows are not compared here."
    return "\n".join(
        [
            "## Pseudo-labels chosen without labels (seed spread and consensus)",
            "",
            f"`python experiments/pseudo_consensus.py --threads 1` — the pseudo-labels of the unsupervised "
            f"re-purposing flows ({s['embedding']} + {s['clustering']}, {s['clusters']} clusters, on the same "
            f"{s['per_class']} images per class, source seed {s['source_seed']}) run with {runs} seeds "
            f"(0..{runs - 1}). The rule, fixed before any scoring and using no labels: the **consensus** of the "
            "runs (evidence accumulation: average linkage on one minus the fraction of runs that put two images "
            "together; `datasetflow.labels.consensus_labels`, also `pseudo_labels(..., consensus=R)`). Labels "
            "only score afterwards (one-to-one, Hungarian); no seed, embedding or clustering was picked by its "
            "score. ARI: adjusted Rand index, label-free agreement between partitions.",
            "",
            *rows,
            "",
            state,
            "",
            f"Wall time {payload['seconds'] / 60:.1f} min, peak memory {payload['peak_rss_mb']:.0f} MB, "
            f"{s['threads']} torch thread(s) (niced, on the shared CPU).",
        ]
    )


if __name__ == "__main__":
    main()
