"""``datasetflow distance``: OTDD (or the WoW distance) between two datasets, as a summary or one JSON object."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .common import describe, join_world, jsonable, leave_world, load_datasets, shape_text, to_float

__all__ = ["register", "run_distance", "summary_text"]

_FULL_TABLE_MAX = 12  # label-distance tables up to this many rows and columns are printed whole
#: Options of ``--method otdd`` only (``--inner`` and ``--projections`` apply to both methods).
_OTDD_ONLY = ("outer", "reg", "debiased", "feature_weight", "label_weight")


def _error(message: str) -> Exception:
    from ..errors import InvalidArgumentError

    return InvalidArgumentError(message)


def _label_table(matrix: list[list[float]], rows: Sequence[Any], cols: Sequence[Any]) -> list[str]:
    """A compact table of label distances; for large tables, the closest target per source class."""
    names_r = [str(r) for r in rows]
    names_c = [str(c) for c in cols]
    lines = []
    if len(rows) <= _FULL_TABLE_MAX and len(cols) <= _FULL_TABLE_MAX:
        lines.append("label distances W2^2 (rows: source classes, columns: target classes)")
        first = min(max(len(n) for n in names_r), 14)
        width = max(9, min(max(len(n) for n in names_c), 11))
        lines.append(" " * first + "".join(f" {n[:width]:>{width}}" for n in names_c))
        for name, values in zip(names_r, matrix, strict=True):
            lines.append(f"{name[:first]:<{first}}" + "".join(f" {v:>{width}.4g}" for v in values))
        return lines
    lines.append(f"closest target class for each source class ({len(rows)} x {len(cols)} label distances W2^2)")
    first = min(max(len(n) for n in names_r), 20)
    for name, values in zip(names_r, matrix, strict=True):
        best = min(range(len(values)), key=values.__getitem__)
        lines.append(f"  {name[:first]:<{first}}  ->  {names_c[best]}  ({values[best]:.4g})")
    return lines


def summary_text(payload: dict[str, Any]) -> str:
    """The readable summary of a ``distance`` payload."""
    src, tgt, settings, ot = payload["source"], payload["target"], payload["settings"], payload.get("solver") or {}
    width = max(len(src["name"] or src["spec"]), len(tgt["name"] or tgt["spec"]))
    lines = []
    for role, ds in (("source", src), ("target", tgt)):
        lines.append(
            f"{role}  {(ds['name'] or ds['spec']):<{width}}  n={ds['n']}  d={ds['dim']} "
            f"({shape_text(ds['feature_shape'])})  classes={ds['num_classes']}"
        )
    shown = {k: v for k, v in settings.items() if v is not None}
    lines.append("settings  " + "  ".join(f"{k}={v}" for k, v in shown.items()))
    lines.append("")
    label = "WoW" if payload.get("method") == "wow" else "OTDD"
    lines.append(f"{label} distance{' ' * (10 - len(label))}{payload['distance']:.6g}")
    lines.append(f"{label} squared distance{' ' * (2 - len(label) + 4)}{payload['distance_squared']:.6g}")
    if ot:
        parts = [f"method={ot.get('method')}"]
        if ot.get("reg") is not None:
            parts.append(f"reg={ot['reg']:.4g}")
        if ot.get("n_iter") is not None and ot.get("method") != "exact":
            parts.append(f"iterations={ot['n_iter']}")
        if ot.get("converged") is not None:
            parts.append(f"converged={'yes' if ot['converged'] else 'NO'}")
        if ot.get("marginal_error") is not None:
            parts.append(f"marginal error={ot['marginal_error']:.2e}")
        lines.append("solver    " + "  ".join(parts))
    lines.append(f"time      {payload['seconds']:.3f} s (distance), {payload['load_seconds']:.3f} s (loading)")
    lines.append("")
    lines += _label_table(payload["label_distances"], payload["source_classes"], payload["target_classes"])
    if payload.get("matching") is not None:
        lines.append("")
        lines.append(
            "class matching (WoW coupling): "
            + ", ".join(f"{s} -> {t}" for s, t in zip(payload["source_classes"], payload["matching"], strict=True))
        )
    return "\n".join(lines)


def run_distance(
    source: str,
    target: str,
    *,
    method: str,
    options: dict[str, Any],
    data: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Load both datasets, compute OTDD (or the WoW distance) and return the JSON payload.

    Args:
        source, target: dataset names or paths.
        method: ``"otdd"`` or ``"wow"``.
        options: the solver options given on the command line (None for the library default).
        data: ``data_dir``, ``resize``, ``device``, ``dtype`` and ``max_samples``.
        seed: seed of ``--max-samples`` and of random directions.
    """
    import torch

    from ..distances import otdd, wow

    given = {k: v for k, v in options.items() if v is not None}
    if method == "wow":
        otdd_only = [k for k in _OTDD_ONLY if k in given]
        if otdd_only:
            names = ", ".join("--" + k.replace("_", "-") for k in otdd_only)
            raise _error(f"{names} apply to --method otdd only; --method wow takes --inner and --projections.")
    projections = given.pop("n_projections", None)
    sliced = given.get("inner") in ("sliced", "sw")
    if projections is not None and not sliced:
        raise _error("--projections applies to --inner sliced only.")
    import os
    import warnings

    from ..distributed import World, launched_world_size

    reason = _unsharded_reason(method, given) if launched_world_size() > 1 else None
    if reason is not None:  # torchrun, but settings that do not shard: rank 0 computes alone, no process group
        if os.environ.get("RANK", "0") != "0":
            return {}
        warnings.warn(f"{reason}: rank 0 computes the distance alone, the other ranks exit.", stacklevel=2)
        world = World()
    else:
        world = join_world(data["device"])  # torchrun: one process per rank, each with a shard of SOURCE
    src, tgt, load_seconds = load_datasets(source, target, data, seed)
    torch_device = src.x.device
    if sliced:
        from ..labels import SlicedLabelCost

        given["inner"] = SlicedLabelCost(n_projections=projections, seed=seed)
    start = time.perf_counter()
    if world.distributed:
        from ..data import shard

        # every rank holds a shard of SOURCE and the whole TARGET: row-sharded Sinkhorn (docs/distributed.md)
        result = otdd(shard(src, world), tgt, world=world, **given)
        payload = jsonable(result.to_dict())
        config = result.config
        settings = {k: config[k] for k in ("inner", "outer", "debiased", "feature_weight", "label_weight")}
        settings["reg"] = "auto" if config["reg_is_default"] else config["reg"]
        settings["world_size"] = world.size
        leave_world(world)
        if not world.is_main:
            return {}
    elif method == "wow":
        result = wow(src, tgt, **given)
        payload = jsonable(result.to_dict())
        payload["label_distances"] = payload["class_costs"]
        settings = {"inner": result.inner}
    else:
        result = otdd(src, tgt, **given)
        payload = jsonable(result.to_dict())
        config = result.config
        settings = {k: config[k] for k in ("inner", "outer", "debiased", "feature_weight", "label_weight")}
        settings["reg"] = "auto" if config["reg_is_default"] else config["reg"]
    if torch_device.type == "cuda":
        torch.cuda.synchronize(torch_device)
    seconds = time.perf_counter() - start
    if sliced:
        settings["n_projections"] = given["inner"].n_projections
    payload.update(
        {
            "distance": to_float(result.distance),
            "distance_squared": to_float(result.distance_squared),
            "source_classes": jsonable(list(result.source_classes)),
            "target_classes": jsonable(list(result.target_classes)),
            "seconds": seconds,
            "load_seconds": load_seconds,
            "source": describe(src, source),
            "target": describe(tgt, target),
            "settings": jsonable(
                {
                    **settings,
                    "resize": shape_text(data["resize"]) if data["resize"] else None,
                    "max_samples": data["max_samples"],
                    "seed": seed if data["max_samples"] is not None or sliced else None,
                    "device": str(torch_device),
                    "dtype": data["dtype"],
                }
            ),
            "method": method,
        }
    )
    return payload


def _unsharded_reason(method: str, given: dict[str, Any]) -> str | None:
    """Why ``distance`` under torchrun cannot shard these settings (None: it shards the OTDD's rows)."""
    from ..labels import get_label_cost

    if method == "wow":
        return "--method wow solves one small exact OT between classes, which does not split over ranks"
    if given.get("outer", "sinkhorn") != "sinkhorn":
        return f"--outer {given['outer']} does not split over ranks; --outer sinkhorn does"
    if given.get("label_weight", 1.0) > 0 and not get_label_cost(given.get("inner", "gaussian")).uses_stats:
        return (
            f"--inner {get_label_cost(given['inner']).name} compares class samples, which are spread over the ranks; "
            "--inner gaussian (all-reduced class statistics) shards"
        )
    return None


def register(cli: Any) -> None:
    """Add the ``distance`` command to the click group ``cli``."""
    import json

    import click

    from .options import data_options, label_cost_options, reports_errors

    @cli.command()
    @click.argument("source")
    @click.argument("target")
    @label_cost_options(outer_help="Outer OT solver over samples.  [library default: sinkhorn]")
    @click.option(
        "--debiased/--no-debiased",
        default=None,
        help="Sinkhorn divergence (debiased) or plain entropic OT.  [library default: debiased]",
    )
    @click.option("--feature-weight", type=click.FloatRange(min=0), default=None, help="Weight of ||x-x'||^2.")
    @click.option("--label-weight", type=click.FloatRange(min=0), default=None, help="Weight of W2^2(y, y').")
    @data_options(
        max_samples_help="Use at most this many samples of each dataset, drawn uniformly at random with --seed."
    )
    @click.option(
        "--method",
        type=click.Choice(["otdd", "wow"]),
        default="otdd",
        show_default=True,
        help="otdd: OT over samples with the label-augmented cost; wow: Wasserstein over Wasserstein, an exact "
        "OT between the classes seen as distributions (with --inner as its ground cost, default exact), with the "
        "class matching it implies.",
    )
    @click.option(
        "--projections",
        type=click.IntRange(min=1),
        default=None,
        metavar="L",
        help="--inner sliced: number of directions.  [default: 500]",
    )
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of --max-samples (and of directions).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
    @reports_errors("try --max-samples N or --outer sinkhorn.")
    def distance(warnings: Any, source: str, target: str, method: str, seed: int, as_json: bool, **params: Any) -> str:
        """OTDD (or --method wow) between SOURCE and TARGET (.npz files or built-in names, see
        `datasetflow datasets`).

        Prints the distance, its square (the optimal transport cost), the outer solver's
        diagnostics and the class-to-class label distances (with --method wow, the class matching).
        """
        data = {k: params.pop(k) for k in ("data_dir", "resize", "device", "dtype", "max_samples")}
        params["n_projections"] = params.pop("projections")
        payload = run_distance(source, target, method=method, options=params, data=data, seed=seed)
        if not payload:  # another rank than 0 under torchrun: rank 0 prints
            warnings._records.clear()  # noqa: SLF001 - the same package
            return None
        payload["warnings"] = warnings.messages
        return json.dumps(payload, allow_nan=False) if as_json else summary_text(payload)
