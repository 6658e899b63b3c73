"""The ``datasetflow`` command line.

Commands::

    datasetflow distance SOURCE TARGET [options]   # OTDD between two datasets
    datasetflow datasets [--data-dir DIR]          # built-in dataset names and availability
    datasetflow --version

``SOURCE`` and ``TARGET`` are ``.npz`` files or built-in names (see
:func:`datasetflow.data.load_dataset`). click is an optional dependency (the ``cli``
extra); it is imported only when the command line runs. Library errors are reported as
one line ``Error: ...`` on stderr with exit status 2.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "build_cli"]

EXIT_ERROR = 2
_MISSING_CLICK = (
    "datasetflow: the command line needs the 'click' package, which is not installed.\n"
    "Install the CLI extra:  pip install 'datasetflow[cli]'"
)
_FULL_TABLE_MAX = 12  # label-distance tables up to this many rows and columns are printed whole


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("datasetflow")
    except metadata.PackageNotFoundError:
        import datasetflow

        return str(getattr(datasetflow, "__version__", "unknown"))


def _load_otdd() -> Callable[..., Any]:
    """The OTDD function (a seam for tests)."""
    from ..distances import otdd

    return otdd


# ---------------------------------------------------------------------- helpers
def _to_float(value: Any) -> float | None:
    """A plain float from a 0-d tensor / number (None for None)."""
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    return float(value)


def _jsonable(value: Any) -> Any:
    """Recursively turn tensors, arrays, tuples and non-finite floats into strict JSON values."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _describe(ds: Any, spec: str) -> dict[str, Any]:
    return {
        "spec": spec,
        "name": ds.name,
        "n": len(ds),
        "dim": ds.dim,
        "feature_shape": list(ds.feature_shape),
        "num_classes": ds.num_classes,
    }


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _channels(shape: Sequence[int]) -> int | None:
    """Channels of an image shape, as read by the loaders (None if not an image)."""
    if len(shape) == 2:
        return 1
    if len(shape) == 3 and shape[-1] <= 4:
        return shape[-1]
    if len(shape) == 3 and shape[0] <= 4:
        return shape[0]
    return None


def _subsample(ds: Any, max_samples: int | None, seed: int) -> Any:
    """At most ``max_samples`` samples drawn uniformly without replacement (seeded)."""
    import torch

    if max_samples is None or len(ds) <= max_samples:
        return ds
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(ds), generator=generator)[:max_samples].sort().values
    return ds.subset(index.to(ds.x.device))


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


def _summary(payload: dict[str, Any]) -> str:
    src, tgt, settings, ot = payload["source"], payload["target"], payload["settings"], payload.get("solver") or {}
    width = max(len(src["name"] or src["spec"]), len(tgt["name"] or tgt["spec"]))
    lines = []
    for role, ds in (("source", src), ("target", tgt)):
        lines.append(
            f"{role}  {(ds['name'] or ds['spec']):<{width}}  n={ds['n']}  d={ds['dim']} "
            f"({_shape_text(ds['feature_shape'])})  classes={ds['num_classes']}"
        )
    auto_reg = settings.get("outer") == "sinkhorn" and settings.get("reg") is None
    shown = {k: "auto" if k == "reg" and auto_reg else v for k, v in settings.items()}
    shown = {k: v for k, v in shown.items() if v is not None}
    lines.append("settings  " + "  ".join(f"{k}={v}" for k, v in shown.items()))
    lines.append("")
    lines.append(f"OTDD distance          {payload['distance']:.6g}")
    lines.append(f"OTDD squared distance  {payload['distance_squared']:.6g}")
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
    return "\n".join(lines)


def _run_distance(
    source: str,
    target: str,
    *,
    options: dict[str, Any],
    data_dir: str | None,
    resize: tuple[int, int] | None,
    device: str,
    dtype: str,
    max_samples: int | None,
    seed: int,
) -> dict[str, Any]:
    """Load both datasets, compute OTDD and return the JSON payload."""
    import inspect

    import torch

    from ..data import load_dataset
    from ..errors import InvalidArgumentError, ShapeMismatchError

    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device={device!r} was asked for, but CUDA is not available; use --device cpu.")
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]

    start = time.perf_counter()
    datasets = []
    for spec in (source, target):
        ds = load_dataset(spec, data_dir=data_dir, resize=resize, dtype=torch_dtype, device=torch_device)
        datasets.append(_subsample(ds, max_samples, seed))
    src, tgt = datasets
    load_seconds = time.perf_counter() - start
    if src.dim != tgt.dim:
        channels = (_channels(src.feature_shape), _channels(tgt.feature_shape))
        hint = ""
        if None not in channels and channels[0] == channels[1]:
            hint = " Resize the images to a common size with --resize HxW (e.g. --resize 28x28)."
        elif None not in channels:
            hint = f" The images have {channels[0]} and {channels[1]} channels; resizing cannot match them."
        raise ShapeMismatchError(
            f"source {source!r} has d={src.dim} features (shape {src.feature_shape}) but target {target!r} "
            f"has d={tgt.dim} (shape {tgt.feature_shape}).{hint}"
        )

    otdd = _load_otdd()
    given = {k: v for k, v in options.items() if v is not None}
    settings: dict[str, Any] = {}
    try:
        parameters = inspect.signature(otdd).parameters
        settings = {
            k: parameters[k].default
            for k in options
            if k in parameters and parameters[k].default is not inspect.Parameter.empty
        }
    except (TypeError, ValueError):
        pass
    settings.update(given)

    start = time.perf_counter()
    result = otdd(src, tgt, **given)
    if torch_device.type == "cuda":
        torch.cuda.synchronize(torch_device)
    seconds = time.perf_counter() - start

    payload: dict[str, Any] = {}
    if hasattr(result, "to_dict"):
        payload.update(_jsonable(result.to_dict()))
    config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    for key in ("inner", "outer", "debiased", "feature_weight", "label_weight"):
        if key in config:  # what the library actually used (e.g. debiased=False for exact OT)
            settings[key] = config[key]
    if not isinstance(payload.get("solver"), dict):
        ot = getattr(result, "ot", None)
        if hasattr(ot, "diagnostics"):
            payload["solver"] = _jsonable(ot.diagnostics())
        else:
            keys = ("method", "reg", "n_iter", "converged", "marginal_error")
            payload["solver"] = {k: _jsonable(getattr(ot, k)) for k in keys if hasattr(ot, k)}
    payload.update(
        {
            "distance": _to_float(result.distance),
            "distance_squared": _to_float(result.distance_squared),
            "label_distances": _jsonable(result.label_distances),
            "source_classes": _jsonable(list(result.source_classes)),
            "target_classes": _jsonable(list(result.target_classes)),
            "seconds": seconds,
            "load_seconds": load_seconds,
            "source": _describe(src, source),
            "target": _describe(tgt, target),
            "settings": _jsonable(
                {
                    **settings,
                    "resize": _shape_text(resize) if resize else None,
                    "max_samples": max_samples,
                    "seed": seed if max_samples is not None else None,
                    "device": str(torch_device),
                    "dtype": dtype,
                }
            ),
            "version": _version(),
        }
    )
    return payload


# ---------------------------------------------------------------------- the click app
@functools.lru_cache(maxsize=1)
def build_cli() -> Any:
    """The click command group (imports click; raises ImportError if it is missing)."""
    import click

    from ..errors import DatasetflowError

    def parse_resize(ctx: Any, param: Any, value: str | None) -> tuple[int, int] | None:
        if value is None:
            return None
        from ..data import parse_size

        try:
            return parse_size(value, argument="--resize")
        except DatasetflowError as exc:
            raise click.BadParameter(str(exc)) from None

    def parse_device(ctx: Any, param: Any, value: str) -> str:
        import torch

        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            raise click.BadParameter(f"{value!r} is not a torch device (cpu, cuda, cuda:N).") from None
        return value

    def fail(ctx: Any, exc: BaseException | str) -> None:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(EXIT_ERROR)

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(_version(), "--version", prog_name="datasetflow", message="%(prog)s %(version)s")
    def cli() -> None:
        """Optimal-transport dataset distances (OTDD) between labeled datasets."""

    @cli.command()
    @click.argument("source")
    @click.argument("target")
    @click.option(
        "--inner",
        type=click.Choice(["gaussian", "exact", "sinkhorn"]),
        default=None,
        help="Label cost W2^2 between classes: Gaussian (Bures) closed form, exact OT or Sinkhorn "
        "between class point clouds.  [library default: gaussian]",
    )
    @click.option(
        "--outer",
        type=click.Choice(["exact", "sinkhorn"]),
        default=None,
        help="Outer OT solver over samples.  [library default]",
    )
    @click.option(
        "--reg",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Entropic regularisation (absolute) for Sinkhorn. Default: the library's default relative to "
        "the cost scale.",
    )
    @click.option(
        "--debiased/--no-debiased",
        default=None,
        help="Sinkhorn divergence (debiased) or plain entropic OT.  [library default]",
    )
    @click.option("--feature-weight", type=click.FloatRange(min=0), default=None, help="Weight of ||x-x'||^2.")
    @click.option("--label-weight", type=click.FloatRange(min=0), default=None, help="Weight of W2^2(y, y').")
    @click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Directory of the full datasets (default: $DATASETFLOW_DATA_DIR, else ../shared/data).",
    )
    @click.option(
        "--resize",
        callback=parse_resize,
        default=None,
        metavar="HxW",
        help="Resize both datasets' images, e.g. 28x28 (USPS 16x16 next to MNIST).",
    )
    @click.option(
        "--device", default="cpu", show_default=True, callback=parse_device, help="Torch device: cpu, cuda or cuda:N."
    )
    @click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
    @click.option(
        "--max-samples",
        type=click.IntRange(min=1),
        default=None,
        help="Use at most this many samples of each dataset, drawn uniformly at random with --seed.",
    )
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of --max-samples.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
    @click.pass_context
    def distance(
        ctx: Any,
        source: str,
        target: str,
        inner: str | None,
        outer: str | None,
        reg: float | None,
        debiased: bool | None,
        feature_weight: float | None,
        label_weight: float | None,
        data_dir: str | None,
        resize: tuple[int, int] | None,
        device: str,
        dtype: str,
        max_samples: int | None,
        seed: int,
        as_json: bool,
    ) -> None:
        """OTDD between SOURCE and TARGET (.npz files or built-in names, see `datasetflow datasets`).

        Prints the distance, its square (the optimal transport cost), the outer solver's
        diagnostics and the class-to-class label distances.
        """
        import torch

        options = {
            "inner": inner,
            "outer": outer,
            "reg": reg,
            "debiased": debiased,
            "feature_weight": feature_weight,
            "label_weight": label_weight,
        }
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                payload = _run_distance(
                    source,
                    target,
                    options=options,
                    data_dir=data_dir,
                    resize=resize,
                    device=device,
                    dtype=dtype,
                    max_samples=max_samples,
                    seed=seed,
                )
            except DatasetflowError as exc:
                fail(ctx, exc)
                return
            except (MemoryError, torch.OutOfMemoryError) as exc:
                fail(ctx, f"out of memory ({exc or type(exc).__name__}); try --max-samples N or --outer sinkhorn.")
                return
        messages = []
        for w in caught:
            text = f"{w.category.__name__}: {w.message}"
            if text not in messages:
                messages.append(text)
        payload["warnings"] = messages
        for text in messages:
            click.echo(f"Warning: {text}", err=True)
        if as_json:
            click.echo(json.dumps(payload, allow_nan=False))
        else:
            click.echo(_summary(payload))

    @cli.command()
    @click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Directory of the full datasets (default: $DATASETFLOW_DATA_DIR, else ../shared/data).",
    )
    @click.pass_context
    def datasets(ctx: Any, data_dir: str | None) -> None:
        """List the built-in dataset names and whether each is available."""
        from ..data import DATA_DIR_ENV, describe_builtin_datasets, resolve_data_dir

        try:
            root = resolve_data_dir(data_dir)
        except DatasetflowError as exc:
            fail(ctx, exc)
            return
        rows = describe_builtin_datasets(root)
        names = [r.name if r.split == "test" else f"{r.name}:{r.split}" for r in rows]
        width = max(len(n) for n in names)
        click.echo(f"data directory: {root if root is not None else f'none found (set {DATA_DIR_ENV} or --data-dir)'}")
        for name, row in zip(names, rows, strict=True):
            status = "embedded" if row.embedded else ("available" if row.available else "missing")
            click.echo(f"  {name:<{width}}  {status:<9}  {row.description}")

    return cli


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``datasetflow`` command (exits with the command's status)."""
    try:
        import click  # noqa: F401
    except ImportError:
        print(_MISSING_CLICK, file=sys.stderr)
        sys.exit(EXIT_ERROR)
    build_cli().main(args=list(argv) if argv is not None else None, prog_name="datasetflow")


if __name__ == "__main__":
    main()
