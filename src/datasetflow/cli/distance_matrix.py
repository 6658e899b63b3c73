"""``datasetflow distance-matrix``: pairwise distances between N datasets (sliced sketches, or exact OTDD)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .common import describe, join_world, jsonable, leave_world, load_datasets

__all__ = ["register", "run_distance_matrix", "matrix_text", "METHODS"]

#: ``--method`` values (the library's :data:`~datasetflow.distances.sliced.MATRIX_METHODS`; a test checks it).
METHODS = ("sotdd", "busemann", "busemann-gaussian", "otdd")
_SLICED_ONLY = ("n_projections", "n_moments", "standardize")


def _error(message: str) -> Exception:
    from ..errors import InvalidArgumentError

    return InvalidArgumentError(message)


def matrix_text(payload: dict[str, Any]) -> str:
    """The readable table of a ``distance-matrix`` payload."""
    names = [str(n) for n in payload["names"]]
    short = [n if len(n) <= 14 else n[:13] + "~" for n in names]
    width = max(10, *(len(n) for n in short))
    unit = "squared distance" if payload["settings"].get("p", 2) == 2 else "value_pow"
    lines = [f"{payload['method']} {unit} (value_pow), {len(names)} datasets, {payload['seconds']:.3f} s"]
    lines.append(" " * width + "".join(f" {n:>{width}}" for n in short))
    for name, row in zip(short, payload["matrix"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f" {v:>{width}.5g}" for v in row))
    if payload.get("figure"):
        lines.append(f"heat map: {payload['figure']}")
    return "\n".join(lines)


def run_distance_matrix(
    specs: Sequence[str], *, method: str, options: dict[str, Any], data: dict[str, Any], seed: int
) -> dict[str, Any]:
    """Load the datasets, compute the matrix and return the JSON payload (keys ``names``, ``matrix``,
    ``method``, ``settings``, ``seconds``, ...).

    Args:
        specs: dataset names or paths (at least two).
        method: ``sotdd``, ``busemann`` (SWB1DG), ``busemann-gaussian`` (SWBG) or ``otdd``.
        options: ``n_projections``, ``n_moments``, ``standardize`` (sliced) and ``outer`` (otdd); None: default.
        data: ``data_dir``, ``resize``, ``device``, ``dtype`` and ``max_samples``.
        seed: seed of the directions and of ``--max-samples``.
    """
    from ..distances import distance_matrix

    if len(specs) < 2:
        raise _error(f"distance-matrix needs at least two datasets, got {len(specs)}.")
    given = {k: v for k, v in options.items() if v is not None}
    if method == "otdd":
        sliced = [k for k in _SLICED_ONLY if k in given]
        if sliced:
            flags = ", ".join("--" + k.replace("n_", "").replace("_", "-") for k in sliced)
            raise _error(f"{flags} apply to the sliced methods only, not --method otdd.")
    elif "outer" in given:
        raise _error("--outer applies to --method otdd only.")
    world = join_world(data["device"])  # torchrun: the pairs (otdd) or direction chunks (sliced) split over ranks
    datasets, load_seconds = [], 0.0
    for spec in specs:
        ds, _, seconds = load_datasets(spec, None, data, seed)
        if datasets and ds.dim != datasets[0].dim:
            raise _error(
                f"{spec!r} has d={ds.dim} features (shape {ds.feature_shape}) but {specs[0]!r} has "
                f"d={datasets[0].dim}; resize images to a common size with --resize HxW."
            )
        datasets.append(ds)
        load_seconds += seconds
    start = time.perf_counter()
    if method == "otdd":
        outer = given.get("outer")
        result = distance_matrix(
            datasets, method="otdd", names=specs, otdd_options={"outer": outer} if outer else {}, world=world
        )
        settings: dict[str, Any] = {"outer": outer or "sinkhorn (library default)", "inner": "gaussian", "p": 2}
    else:
        extra = {"n_moments": given["n_moments"]} if "n_moments" in given else {}
        standardize = given.get("standardize", "none")
        result = distance_matrix(
            datasets,
            method=method,
            names=specs,
            n_projections=given.get("n_projections", 1000),
            seed=seed,
            standardize=None if standardize == "none" else standardize,
            world=world,
            **extra,
        )
        settings = dict(result.config)
    seconds = time.perf_counter() - start
    if world.distributed:
        settings["world_size"] = world.size
    leave_world(world)
    if not world.is_main:
        return {}
    settings.update(
        {
            "resize": "x".join(str(s) for s in data["resize"]) if data["resize"] else None,
            "max_samples": data["max_samples"],
            "seed": seed,
            "device": data["device"],
            "dtype": data["dtype"],
        }
    )
    return {
        "names": list(specs),
        "matrix": jsonable(result.matrix_pow),
        "distance": jsonable(result.matrix),
        "stderr": jsonable(result.stderr_pow),
        "method": method,
        "settings": jsonable(settings),
        "seconds": seconds,
        "load_seconds": load_seconds,
        "datasets": [describe(ds, spec) for ds, spec in zip(datasets, specs, strict=True)],
    }


def register(cli: Any) -> None:
    """Add the ``distance-matrix`` command to the click group ``cli``."""
    import json
    from pathlib import Path

    import click

    from .common import write_json_atomic
    from .options import data_options, reports_errors

    @cli.command("distance-matrix")
    @click.argument("datasets", nargs=-1, required=True)
    @click.option(
        "--method",
        type=click.Choice(list(METHODS)),
        default="sotdd",
        show_default=True,
        help="sotdd: s-OTDD (moment transform); busemann: SWB1DG (1-D Gaussian Busemann rays); busemann-gaussian: "
        "SWBG (Bures rays of class Gaussians); otdd: OTDD per pair, for comparison.",
    )
    @click.option(
        "--projections", type=click.IntRange(min=1), default=None, metavar="L", help="Sliced: directions. [1000]"
    )
    @click.option("--moments", type=click.IntRange(min=0), default=None, metavar="K", help="sotdd: moments. [5]")
    @click.option(
        "--standardize",
        type=click.Choice(["none", "joint"]),
        default=None,
        help="Sliced: features as given, or one affine map fitted on all the datasets.  [none]",
    )
    @click.option("--outer", type=click.Choice(["exact", "sinkhorn"]), default=None, help="otdd: outer solver.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the directions and --max-samples.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
    @click.option(
        "--out", type=click.Path(file_okay=False), default=None, metavar="DIR", help="Write matrix.json and a heat map."
    )
    @data_options(max_samples_help="Use at most this many samples of each dataset, drawn at random with --seed.")
    @reports_errors("try --max-samples N or fewer --projections.")
    def distance_matrix_command(
        warnings: Any, datasets: tuple[str, ...], method: str, seed: int, as_json: bool, out: str | None, **params
    ) -> str:
        """Pairwise distances between DATASETS (.npz files or built-in names): sliced sketches share seeded
        directions, so N datasets cost N projection passes. Prints the matrix of value_pow entries (squared
        distances for p = 2) with a zero diagonal."""
        data = {k: params.pop(k) for k in ("data_dir", "resize", "device", "dtype", "max_samples")}
        options = {
            "n_projections": params["projections"],
            "n_moments": params["moments"],
            "standardize": params["standardize"],
            "outer": params["outer"],
        }
        payload = run_distance_matrix(list(datasets), method=method, options=options, data=data, seed=seed)
        if not payload:  # a rank other than 0 under torchrun: rank 0 prints and writes
            return None
        if out is not None:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            try:
                import matplotlib

                matplotlib.use("Agg")
                from ..viz import plot_distance_matrix

                figure = folder / f"distance_matrix_{method}.png"
                plot_distance_matrix(payload["matrix"], payload["names"], title=f"{method} (value_pow)", path=figure)
                payload["figure"] = str(figure)
            except Exception as exc:  # noqa: BLE001 - the figure is optional
                import warnings as python_warnings

                from ..errors import DatasetflowWarning

                python_warnings.warn(f"figure skipped: {type(exc).__name__}: {exc}", DatasetflowWarning, stacklevel=1)
            write_json_atomic(folder / "matrix.json", payload)
        payload["warnings"] = warnings.messages
        return json.dumps(payload, allow_nan=False) if as_json else matrix_text(payload)
