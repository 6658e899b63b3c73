"""The ``datasetflow`` command line.

Commands::

    datasetflow distance SOURCE TARGET [options]   # OTDD between two datasets
    datasetflow flow SOURCE TARGET --steps N --out DIR [options]   # gradient flow of a dataset
    datasetflow flow --config FILE.yaml [--out DIR] [options]      # the same, from a YAML file
    datasetflow repurpose [SOURCE TARGET] [options] # frozen classifier before/after a flow
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
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .common import captured_warnings, describe, jsonable, load_datasets, shape_text, to_float, torch_device_dtype

__all__ = ["main", "build_cli"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT
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
            f"({shape_text(ds['feature_shape'])})  classes={ds['num_classes']}"
        )
    auto_reg = settings.get("outer") == "sinkhorn" and settings.get("reg") is None
    shown = {k: "auto" if k == "reg" and auto_reg else v for k, v in settings.items()}
    shown = {k: v for k, v in shown.items() if v is not None}
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
    method: str = "otdd",
    wow_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load both datasets, compute OTDD (or the WoW distance) and return the JSON payload."""
    import inspect

    torch_device, torch_dtype = torch_device_dtype(device, dtype)
    src, tgt, load_seconds = load_datasets(
        source,
        target,
        data_dir=data_dir,
        resize=resize,
        device=torch_device,
        dtype=torch_dtype,
        max_samples=max_samples,
        seed=seed,
    )

    if method == "wow":
        payload, settings, seconds = _run_wow(src, tgt, options, wow_options or {}, seed, torch_device)
        result = _WoWView(payload)
    else:
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
            import torch

            torch.cuda.synchronize(torch_device)
        seconds = time.perf_counter() - start

        payload: dict[str, Any] = {}
        if hasattr(result, "to_dict"):
            payload.update(jsonable(result.to_dict()))
        config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
        for key in ("inner", "outer", "debiased", "feature_weight", "label_weight"):
            if key in config:  # what the library actually used (e.g. debiased=False for exact OT)
                settings[key] = config[key]
        if not isinstance(payload.get("solver"), dict):
            ot = getattr(result, "ot", None)
            if hasattr(ot, "diagnostics"):
                payload["solver"] = jsonable(ot.diagnostics())
            else:
                keys = ("method", "reg", "n_iter", "converged", "marginal_error")
                payload["solver"] = {k: jsonable(getattr(ot, k)) for k in keys if hasattr(ot, k)}
    payload.update(
        {
            "distance": to_float(result.distance),
            "distance_squared": to_float(result.distance_squared),
            "label_distances": jsonable(result.label_distances),
            "source_classes": jsonable(list(result.source_classes)),
            "target_classes": jsonable(list(result.target_classes)),
            "seconds": seconds,
            "load_seconds": load_seconds,
            "source": describe(src, source),
            "target": describe(tgt, target),
            "settings": jsonable(
                {
                    **settings,
                    "resize": shape_text(resize) if resize else None,
                    "max_samples": max_samples,
                    "seed": seed if max_samples is not None else None,
                    "device": str(torch_device),
                    "dtype": dtype,
                }
            ),
            "method": method,
            "version": _version(),
        }
    )
    return payload


class _WoWView:
    """The fields of a WoW payload under the names the OTDD payload uses."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.distance, self.distance_squared = payload["distance"], payload["distance_squared"]
        self.label_distances = payload["class_costs"]
        self.source_classes, self.target_classes = payload["source_classes"], payload["target_classes"]


def _run_wow(src: Any, tgt: Any, options: dict[str, Any], wow_options: dict[str, Any], seed: int, device: Any):
    """The WoW distance between two loaded datasets: ``(payload, settings, seconds)``."""
    from ..distances import wow
    from ..errors import InvalidArgumentError

    otdd_only = [k for k, v in options.items() if v is not None]
    if otdd_only:
        names = ", ".join("--" + k.replace("_", "-") for k in otdd_only)
        raise InvalidArgumentError(
            f"{names} apply to --method otdd only; --method wow takes --ground and --projections."
        )
    settings = {"ground": wow_options.get("ground") or "exact"}
    kwargs: dict[str, Any] = {"ground": settings["ground"], "seed": seed}
    if wow_options.get("n_projections") is not None:
        kwargs["n_projections"] = settings["n_projections"] = wow_options["n_projections"]
    start = time.perf_counter()
    result = wow(src, tgt, **kwargs)
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    payload = jsonable(result.to_dict())
    payload["label_distances"] = payload["class_costs"]
    return payload, settings, seconds


# ---------------------------------------------------------------------- the click app
@functools.lru_cache(maxsize=1)
def build_cli() -> Any:
    """The click command group (imports click; raises ImportError if it is missing)."""
    import click

    from ..errors import DatasetflowError
    from . import flow as flow_impl
    from .options import OneLineCommand, convert_config_value, data_options, explicit_params, label_cost_options

    def fail(ctx: Any, exc: BaseException | str) -> None:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(EXIT_ERROR)

    def out_of_memory(ctx: Any, exc: BaseException, hint: str) -> None:
        fail(ctx, f"out of memory ({exc or type(exc).__name__}); {hint}")

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(_version(), "--version", prog_name="datasetflow", message="%(prog)s %(version)s")
    def cli() -> None:
        """Optimal-transport dataset distances (OTDD) and gradient flows of labeled datasets."""

    # ------------------------------------------------------------------ distance
    @cli.command()
    @click.argument("source")
    @click.argument("target")
    @label_cost_options(outer_help="Outer OT solver over samples.  [library default]")
    @click.option(
        "--debiased/--no-debiased",
        default=None,
        help="Sinkhorn divergence (debiased) or plain entropic OT.  [library default]",
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
        "OT between the classes seen as distributions, with the class matching it implies.",
    )
    @click.option(
        "--ground",
        type=click.Choice(["exact", "bures", "sliced"]),
        default=None,
        help="--method wow: the class-to-class W2^2 (exact OT, Gaussian closed form or sliced).  [default: exact]",
    )
    @click.option(
        "--projections",
        type=click.IntRange(min=1),
        default=None,
        metavar="L",
        help="--ground sliced: number of directions.  [default: 500]",
    )
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of --max-samples (and of directions).")
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
        method: str,
        ground: str | None,
        projections: int | None,
        seed: int,
        as_json: bool,
    ) -> None:
        """OTDD (or --method wow) between SOURCE and TARGET (.npz files or built-in names, see
        `datasetflow datasets`).

        Prints the distance, its square (the optimal transport cost), the outer solver's
        diagnostics and the class-to-class label distances (with --method wow, the class matching).
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
        with captured_warnings() as messages:
            try:
                if method != "wow" and (ground is not None or projections is not None):
                    raise DatasetflowError("--ground and --projections apply to --method wow only.")
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
                    method=method,
                    wow_options={"ground": ground, "n_projections": projections},
                )
            except DatasetflowError as exc:
                fail(ctx, exc)
                return
            except (MemoryError, torch.OutOfMemoryError) as exc:
                out_of_memory(ctx, exc, "try --max-samples N or --outer sinkhorn.")
                return
        payload["warnings"] = messages
        for text in messages:
            click.echo(f"Warning: {text}", err=True)
        if as_json:
            click.echo(json.dumps(payload, allow_nan=False))
        else:
            click.echo(_summary(payload))

    # ------------------------------------------------------------------ flow
    @cli.command(cls=OneLineCommand)
    @click.argument("source", required=False)
    @click.argument("target", required=False)
    @click.option(
        "--config",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        metavar="FILE.yaml",
        help="Read the flow's settings (and a composed 'functional' list) from a YAML file; options given "
        "on the command line override it.",
    )
    @click.option("--out", type=click.Path(file_okay=False), default=None, metavar="DIR", help="Output directory.")
    @click.option("--steps", type=click.IntRange(min=1), default=None, metavar="N", help="Total number of steps.")
    @click.option(
        "--dynamics",
        type=click.Choice(flow_impl.DYNAMICS_NAMES),
        default="fd-fl",
        show_default=True,
        help="fd-fl: features move, class statistics follow; jd-fl: features and class Gaussians move; "
        "jd-vl: one Gaussian per particle, re-clustered into labels.",
    )
    @click.option(
        "--optimizer",
        type=click.Choice(flow_impl.OPTIMIZER_NAMES),
        default="sgd",
        show_default=True,
        help="Step scheme: sgd (forward Euler), momentum or adam.",
    )
    @click.option(
        "--step-size",
        type=click.FloatRange(min=0, min_open=True),
        default=0.1,
        show_default=True,
        help="Time step tau (the optimizer's learning rate).",
    )
    @click.option("--schedule", type=click.Choice(flow_impl.SCHEDULE_NAMES), default="constant", show_default=True)
    @label_cost_options(outer_help="Outer OT solver of the OTDD to the target.  [library default: sinkhorn]")
    @click.option(
        "--label-weight", type=click.FloatRange(min=0), default=None, help="Weight of W2^2(y, y') in the OTDD cost."
    )
    @click.option(
        "--objective",
        type=click.Choice(["otdd", "mmd-sw"]),
        default="otdd",
        show_default=True,
        help="otdd: OTDD^2/2 to TARGET (Wasserstein flow); mmd-sw: MMD^2/2 with a sliced-Wasserstein kernel "
        "between the classes (WoW flow; classes weigh the same).",
    )
    @click.option(
        "--kernel",
        type=click.Choice(["riesz", "gaussian", "riesz-r", "laplace", "imq"]),
        default=None,
        help="mmd-sw: kernel between classes: riesz -SW2, gaussian exp(-SW2^2/2h), riesz-r -SW2^r, laplace "
        "exp(-SW1/h), imq (h+SW2^2)^-1/2.  [default: riesz]",
    )
    @click.option(
        "--bandwidth",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="H",
        help="mmd-sw: kernel bandwidth h (gaussian, laplace, imq).  [default: median heuristic]",
    )
    @click.option(
        "--projections",
        type=click.IntRange(min=1),
        default=None,
        metavar="L",
        help="mmd-sw: number of directions, drawn afresh every step.  [default: 500]",
    )
    @click.option(
        "--target-batch",
        type=click.IntRange(min=1),
        default=None,
        metavar="M",
        help="mmd-sw: draw at most M target points per class at every step.  [default: all]",
    )
    @click.option(
        "--noise",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        metavar="SIGMA",
        help="Entropy temperature: adds Langevin noise sqrt(2 tau SIGMA) per step.",
    )
    @click.option(
        "--seed", type=int, default=0, show_default=True, help="Seed of the noise, of k-means and of --max-samples."
    )
    @click.option(
        "--tol", type=click.FloatRange(min=0), default=None, help="Stop when the relative objective change is <= tol."
    )
    @click.option(
        "--checkpoint-every",
        type=click.IntRange(min=0),
        default=None,
        metavar="K",
        help="Save DIR/checkpoint.pt every K steps (and at the end), so that --resume can continue a killed "
        "run; 0 saves none.  [default: every max(1, steps // 10) steps]",
    )
    @click.option(
        "--resume", is_flag=True, help="Continue from DIR's checkpoint up to --steps total steps (same settings)."
    )
    @click.option(
        "--record-every",
        type=click.IntRange(min=1),
        default=None,
        metavar="K",
        help="Record the particles every K steps to DIR/trajectory/.  [default with figures: max(1, steps // 50)]",
    )
    @click.option(
        "--clustering",
        type=click.Choice(["kmeans", "dbscan"]),
        default=None,
        help="jd-vl: how particles are re-clustered into labels.  [library default: kmeans]",
    )
    @click.option(
        "--recluster-every",
        type=click.IntRange(min=1),
        default=None,
        metavar="K",
        help="jd-vl: steps between re-clusterings.",
    )
    @data_options(
        max_samples_help="Use at most this many samples of each dataset, drawn uniformly at random with --seed."
    )
    @click.option(
        "--figures/--no-figures",
        default=True,
        show_default=True,
        help="Write the objective curve, the flow (scatter + GIF, d <= 3) or an image grid (images).",
    )
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
    @click.pass_context
    def flow(ctx: Any, **params: Any) -> None:
        """Flow the SOURCE dataset towards TARGET (Wasserstein gradient flow of OTDD^2 / 2, or with
        --objective mmd-sw the WoW gradient flow of MMD^2 / 2 with a sliced-Wasserstein kernel).

        SOURCE and TARGET are .npz files or built-in names. Writes DIR/final.npz (x in the source's
        feature shape, y class indices, classes names), DIR/history.json (objective per step, terms,
        settings), DIR/checkpoint.pt and figures. With --config, the YAML file gives the same
        settings (keys as the options, with underscores) and may compose the functional, e.g.

        \b
          functional:
            - {type: otdd, inner: gaussian, outer: sinkhorn}
            - {type: ball, weight: 0.5, center: [0, 0], radius: 1.0}
            - {type: entropy, sigma: 0.01}

        Term types: otdd, mmd_sw, ball, repulsion, quadratic_repulsion, collapse, hyperplane, norm, entropy.
        """
        import torch

        where = params["config"] or ""
        with captured_warnings() as messages:
            try:
                config: dict[str, Any] = {}
                if params["config"]:
                    valid = {p.name for p in ctx.command.params if p.name not in flow_impl.CLI_ONLY_PARAMS}
                    config = flow_impl.read_config(params["config"], valid | set(flow_impl.CONFIG_ONLY_KEYS))
                settings, origin = flow_impl.merge_settings(
                    params,
                    explicit_params(ctx),
                    config,
                    lambda name, value: convert_config_value(ctx, name, value),
                    where,
                )
                summary = flow_impl.run_flow_command(
                    settings, origin, where=where, warn=lambda text: click.echo(f"Warning: {text}", err=True)
                )
            except DatasetflowError as exc:
                fail(ctx, exc)
                return
            except (MemoryError, torch.OutOfMemoryError) as exc:
                out_of_memory(ctx, exc, "try --max-samples N, --outer sinkhorn or --dtype float32.")
                return
            except KeyboardInterrupt as exc:
                click.echo(f"Error: {exc or 'interrupted.'}", err=True)
                ctx.exit(EXIT_INTERRUPTED)
                return
        for text in messages:
            click.echo(f"Warning: {text}", err=True)
        if not params["quiet"]:
            click.echo("\n".join(summary["lines"]))

    # ------------------------------------------------------------------ repurpose
    @cli.command(cls=OneLineCommand)
    @click.argument("source", default="usps-mini")
    @click.argument("target", default="mnist-mini")
    @click.option(
        "--classifier",
        type=click.Path(dir_okay=False),
        default=None,
        metavar="FILE.pt",
        help="A LeNet5 state dict trained on TARGET's classes.  [default: the embedded MNIST LeNet-5]",
    )
    @click.option(
        "--objective",
        type=click.Choice(["otdd", "mmd-sw"]),
        default="otdd",
        show_default=True,
        help="otdd: OTDD^2/2 (fd-fl, SGD); mmd-sw: MMD^2/2 with the Riesz SW kernel (WoW flow, momentum 0.9).",
    )
    @click.option("--steps", type=click.IntRange(min=1), default=40, show_default=True, metavar="N")
    @click.option(
        "--step-size",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Time step.  [default: 0.5 for otdd, 1.0 for mmd-sw]",
    )
    @click.option(
        "--unsupervised",
        is_flag=True,
        help="Flow with k-means pseudo-labels (on the classifier's features) instead of SOURCE's labels; the "
        "labels then only score the result.",
    )
    @click.option("--out", type=click.Path(file_okay=False), default="runs/repurpose", show_default=True)
    @data_options(max_samples_help="Use at most this many samples of each dataset (random, with --seed).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--figures/--no-figures", default=True, show_default=True)
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
    @click.pass_context
    def repurpose(ctx: Any, **params: Any) -> None:
        """Flow SOURCE to TARGET and let a frozen classifier trained on TARGET classify SOURCE before and after.

        By default USPS (embedded subset, resized to 28x28) flows to MNIST (embedded subset) and the
        embedded MNIST LeNet-5 scores it. Writes DIR/result.json, DIR/final.npz and figures (samples
        over the flow, objective, accuracy).
        """
        import torch

        from .repurpose import run_repurpose_command

        if params["resize"] is None and params["source"] == "usps-mini" and params["target"] == "mnist-mini":
            params["resize"] = (28, 28)
        with captured_warnings() as messages:
            try:
                lines = run_repurpose_command(params, warn=lambda text: click.echo(f"Warning: {text}", err=True))
            except DatasetflowError as exc:
                fail(ctx, exc)
                return
            except (MemoryError, torch.OutOfMemoryError) as exc:
                out_of_memory(ctx, exc, "try --max-samples N.")
                return
        for text in messages:
            click.echo(f"Warning: {text}", err=True)
        if not params["quiet"]:
            click.echo("\n".join(lines))

    # ------------------------------------------------------------------ datasets
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
