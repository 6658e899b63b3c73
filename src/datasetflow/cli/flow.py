"""The ``datasetflow flow`` command's work: settings from the command line and a YAML config,
the functional, the flow itself, and its outputs (``final.npz``, ``history.json``, checkpoints,
figures).

Precedence of settings: options given on the command line > the config file > defaults. This
module does not import click (the command is declared in :mod:`datasetflow.cli.main`); torch,
yaml, tqdm and the plotting module are imported when needed.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .common import (
    describe,
    gather_result,
    join_world,
    jsonable,
    leave_world,
    load_datasets,
    on_main,
    progress_callback,
    shape_text,
    write_final_npz,
    write_json_atomic,
)

__all__ = [
    "DYNAMICS_NAMES",
    "OPTIMIZER_NAMES",
    "SCHEDULE_NAMES",
    "CONFIG_ONLY_KEYS",
    "CLI_ONLY_PARAMS",
    "read_config",
    "merge_settings",
    "resolve_terms",
    "run_flow_command",
    "register",
]

#: Names offered by ``--dynamics``, ``--optimizer`` and ``--schedule`` (the flow registries' keys;
#: a test checks that they agree).
DYNAMICS_NAMES = ("fd-fl", "jd-fl", "jd-vl")
OPTIMIZER_NAMES = ("sgd", "momentum", "adam")
SCHEDULE_NAMES = ("constant", "cosine", "exponential", "step")

#: Config keys that have no command-line option.
CONFIG_ONLY_KEYS = ("dynamics_options", "optimizer_options", "functional")
#: Command-line parameters that a config file cannot set.
CLI_ONLY_PARAMS = ("config", "resume", "quiet", "overwrite")
#: Top-level settings that configure the default functional (OTDD to the target + entropy).
_OTDD_SETTINGS = ("inner", "outer", "reg", "label_weight")
#: Of those, the ones the MMD-SW objective ignores (it takes ``inner`` too).
_OTDD_ONLY = ("outer", "reg", "label_weight")
#: Top-level settings of the MMD-SW objective (``--objective mmd-sw``) -> the term's key.
_MMD_SETTINGS = {
    "inner": "inner",
    "kernel": "kernel",
    "bandwidth": "bandwidth",
    "projections": "n_projections",
    "target_batch": "target_batch",
}
_JD_VL_SETTINGS = ("clustering", "recluster_every")
#: ``--objective`` values that are sliced dataset distances (the term types of :mod:`datasetflow.functionals.sliced`).
_SLICED_OBJECTIVES = ("sotdd", "busemann")
#: Settings that must not change when a run is resumed.
_RESUME_KEYS = (
    "source",
    "target",
    "resize",
    "max_samples",
    "dtype",
    "dynamics",
    "dynamics_options",
    "optimizer",
    "optimizer_options",
    "step_size",
    "schedule",
    "seed",
    "functional",
    "objective",
    "world_size",
)
TRAJECTORY_DIR = "trajectory"
#: Files a run writes in its directory; a new run refuses a directory holding any of them without --overwrite.
RUN_FILES = ("checkpoint.pt", "history.json", "final.npz", TRAJECTORY_DIR)


def _error(message: str) -> Exception:
    from ..errors import InvalidArgumentError

    return InvalidArgumentError(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------- the config file
def _looks_like_path(spec: str, base: Path) -> bool:
    return spec.lower().endswith(".npz") or "/" in spec or os.sep in spec or (base / spec).is_file()


def read_config(path: str, valid_keys: set[str]) -> dict[str, Any]:
    """Read a flow config (YAML, ``yaml.safe_load``) and check its top-level keys.

    Relative ``source`` / ``target`` file paths and ``data_dir`` are resolved against the
    config file's directory; built-in dataset names are kept.

    Raises:
        InvalidArgumentError: unreadable file, invalid YAML, not a mapping, unknown keys.
    """
    try:
        import yaml
    except ImportError:
        raise _error("--config needs the 'pyyaml' package: pip install 'datasetflow[cli]'") from None
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise _error(f"cannot read the config file {path!r}: {exc.strerror or exc}.") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _error(f"{path}: invalid YAML{where}: {problem}.") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise _error(f"{path}: a flow config must be a mapping of settings, got {type(config).__name__}.")
    unknown = [str(k) for k in config if k not in valid_keys]
    if unknown:
        raise _error(f"{path}: unknown key(s) {unknown}; valid keys are {sorted(valid_keys)}.")
    base = file.parent
    for key in ("source", "target"):
        spec = config.get(key)
        if isinstance(spec, str) and _looks_like_path(spec, base) and not Path(spec).is_absolute():
            config[key] = os.path.normpath(base / spec)
    if isinstance(config.get("data_dir"), str) and not Path(config["data_dir"]).is_absolute():
        config["data_dir"] = os.path.normpath(base / config["data_dir"])
    return config


def merge_settings(
    params: Mapping[str, Any],
    explicit: set[str],
    config: Mapping[str, Any],
    convert: Callable[[str, Any], Any],
    where: str,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Settings from defaults < config < explicit command-line options.

    Args:
        params: every command-line parameter with its value (defaults included).
        explicit: names of the parameters given on the command line.
        config: the config's mapping (keys as in :data:`CONFIG_ONLY_KEYS` or parameter names,
            with ``figures`` for ``--figures/--no-figures``).
        convert: ``convert(name, value)`` checks a config value with the option's type; raises
            ``ValueError`` with a message.
        where: the config file's name, for messages.

    Returns:
        ``(settings, origin)`` where ``origin[name]`` is ``"cli"``, ``"config"`` or ``"default"``.
    """
    settings: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in params.items():
        if name in explicit:
            settings[name], origin[name] = value, "cli"
        elif name in config and name not in CLI_ONLY_PARAMS:
            try:
                settings[name] = convert(name, config[name])
            except ValueError as exc:
                raise _error(f"{where}: {name}: {exc}") from None
            origin[name] = "config"
        else:
            settings[name], origin[name] = value, "default"
    for key in CONFIG_ONLY_KEYS:
        if key in config:
            settings[key], origin[key] = config[key], "config"
        else:
            settings[key], origin[key] = None, "default"
    for key in ("dynamics_options", "optimizer_options"):
        value = settings[key]
        if value is None:
            settings[key] = {}
        elif not isinstance(value, dict):
            raise _error(f"{where}: {key}: must be a mapping of options, got {value!r}.")
    return settings, origin


# ---------------------------------------------------------------------- the functional
def resolve_terms(settings: dict[str, Any], origin: dict[str, str], where: str) -> tuple[list[dict], list[str]]:
    """The functional as a list of term mappings, with the top-level settings applied.

    Without a ``functional`` list: OTDD to the target (``inner``, ``outer``, ``reg``,
    ``label_weight``) plus entropy of temperature ``noise`` when positive. With one, options
    given on the command line override its otdd terms (and ``--noise`` its entropy term); in the
    config they belong inside the terms.

    Returns:
        ``(terms, warnings)``.
    """
    notes: list[str] = []
    prefix = f"{where}: " if where else ""
    mmd_options = {key: settings[k] for k, key in _MMD_SETTINGS.items() if settings.get(k) is not None}
    objective = settings.get("objective") or "otdd"
    if settings["functional"] is None:
        if objective == "mmd-sw":
            given = [k for k in _OTDD_ONLY if origin.get(k) in ("cli", "config")]
            if given:
                notes.append(", ".join("--" + k.replace("_", "-") for k in given) + " ignored: --objective mmd-sw.")
            terms = [{"type": "mmd_sw", "weight": 1.0, "seed": int(settings["seed"]), **mmd_options}]
        elif objective in _SLICED_OBJECTIVES:
            given = [
                k
                for k in (*_OTDD_SETTINGS, *_MMD_SETTINGS)
                if k != "projections" and origin.get(k) in ("cli", "config")
            ]
            if given:
                names = ", ".join("--" + k.replace("_", "-") for k in dict.fromkeys(given))
                notes.append(f"{names} ignored: --objective {objective}.")
            terms = [{"type": objective, "weight": 1.0, "seed": int(settings["seed"])}]
            if settings.get("projections") is not None:
                terms[0]["n_projections"] = settings["projections"]
        else:
            given = [k for k in _MMD_SETTINGS if k != "inner" and origin.get(k) in ("cli", "config")]
            if given:
                notes.append(", ".join("--" + k.replace("_", "-") for k in given) + " ignored: --objective otdd.")
            otdd_options = {k: settings[k] for k in _OTDD_SETTINGS if settings[k] is not None}
            terms = [{"type": "otdd", "weight": 1.0, **otdd_options}]
        if settings["noise"]:
            terms.append({"type": "entropy", "weight": 1.0, "sigma": float(settings["noise"])})
        return terms, notes
    in_config = [k for k in (*_OTDD_SETTINGS, "noise") if origin.get(k) == "config"]
    if in_config:
        raise _error(
            f"{prefix}{in_config} given at the top level next to a 'functional' list; put them in its "
            "otdd term (inner, outer, reg, label_weight) or entropy term (sigma)."
        )
    from ..functionals import normalize_terms

    terms = normalize_terms(settings["functional"], where)
    otdd_terms = [t for t in terms if t["type"] == "otdd"]
    mmd_terms = [t for t in terms if t["type"] == "mmd_sw"]
    overrides = {k: settings[k] for k in _OTDD_SETTINGS if origin.get(k) == "cli"}
    mmd_overrides = {_MMD_SETTINGS[k]: settings[k] for k in _MMD_SETTINGS if origin.get(k) == "cli"}
    for term in otdd_terms:
        term.update(overrides)
    for term in mmd_terms:
        term.update(mmd_overrides)
    unused = [k for k in overrides if not otdd_terms and not (k == "inner" and mmd_terms)]
    unused += [k for k in _MMD_SETTINGS if k != "inner" and origin.get(k) == "cli" and not mmd_terms]
    if unused:
        options = ", ".join("--" + k.replace("_", "-") for k in unused)
        notes.append(
            f"{options} ignored: the functional has no term that takes {'it' if len(unused) == 1 else 'them'}."
        )
    if origin.get("noise") == "cli":
        terms = [t for t in terms if t["type"] != "entropy"]
        if settings["noise"]:
            terms.append({"type": "entropy", "weight": 1.0, "sigma": float(settings["noise"])})
    return terms, notes


def _dynamics_options(settings: dict[str, Any]) -> dict[str, Any]:
    """``dynamics_options`` with ``--clustering`` / ``--recluster-every`` (jd-vl) merged in (the library
    checks the option names)."""
    name = settings["dynamics"]
    options = dict(settings["dynamics_options"])
    given = {k: settings[k] for k in _JD_VL_SETTINGS if settings[k] is not None}
    if given and name != "jd-vl":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        verb = "applies" if len(given) == 1 else "apply"
        raise _error(f"{flags} {verb} to --dynamics jd-vl only (got --dynamics {name}).")
    options.update(given)
    return options


# ---------------------------------------------------------------------- outputs
def _figures(result: Any, out: Path, target: Any, warn: Callable[[str], None]) -> list[str]:
    """Objective curve, flow scatter + GIF (d <= 3) and image grid (images); failures only warn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        # imported lazily (through sys.modules, so tests can substitute it), so that the CLI works
        # without figures where plotting is unavailable
        viz = importlib.import_module("datasetflow.viz")
    except Exception as exc:  # noqa: BLE001 - figures are optional: any import failure only skips them
        hint = " (pip install 'datasetflow[viz]')" if isinstance(exc, ImportError) else ""
        warn(f"figures skipped: the plotting module is unavailable{hint}: {type(exc).__name__}: {exc}")
        return []
    final = result.final
    jobs: list[tuple[str, str, Callable[[Any, Path], Any]]] = [
        ("objective.png", "plot_objective", lambda f, p: f(result, path=p))
    ]
    if len(final.feature_shape) == 1 and final.dim <= 3:
        jobs.append(("flow.png", "plot_flow", lambda f, p: f(result, path=p, target=target)))
        jobs.append(("flow.gif", "animate_flow", lambda f, p: f(result, p, target=target)))
    if len(final.feature_shape) >= 2:
        jobs.append(("images.png", "image_grid", lambda f, p: f(result, path=p)))
    written = []
    for filename, function, call in jobs:
        path = out / filename
        plot = getattr(viz, function, None)
        if plot is None:
            warn(f"figure {filename} not written: datasetflow.viz has no {function}().")
            continue
        try:
            call(plot, path)
        except Exception as exc:  # noqa: BLE001 - a figure failure must not lose the flow's outputs
            warn(f"figure {filename} not written: {type(exc).__name__}: {exc}")
        finally:
            pyplot = sys.modules.get("matplotlib.pyplot")
            if pyplot is not None:
                pyplot.close("all")
        if path.exists():
            written.append(filename)
    return written


def _check_resume(out: Path, run_settings: dict[str, Any], steps: int) -> int:
    """The checkpoint's step, after checking that it exists, is readable, is not past ``steps`` and was
    made with the same settings (those stored in the checkpoint itself)."""
    from ..flows.checkpoint import CHECKPOINT_NAME, load_checkpoint

    checkpoint = out / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise _error(
            f"--resume: no checkpoint in {str(out)!r} (expected {CHECKPOINT_NAME}); start the flow without --resume "
            "(checkpoints are saved every --checkpoint-every steps)."
        )
    saved = load_checkpoint(checkpoint)
    stored = saved.get("settings", {})
    now = jsonable({k: run_settings[k] for k in _RESUME_KEYS})
    changed = [
        f"{k}={json.dumps(now[k])} (was {json.dumps(stored.get(k))})" for k in _RESUME_KEYS if stored.get(k) != now[k]
    ]
    if changed:
        raise _error(
            f"--resume: the settings differ from those of the run in {str(out)!r} (stored in its checkpoint): "
            f"{'; '.join(changed)}. Resume with the same settings, or start a new run without --resume."
        )
    step = int(saved.get("step", -1))
    if step > steps:
        raise _error(f"--resume: the checkpoint is at step {step}, past --steps {steps}; ask for at least {step}.")
    config = saved.get("config", {})
    if config.get("schedule") == "cosine" and config.get("steps") != steps:
        raise _error(
            f"--resume: the cosine schedule of this run spans {config.get('steps')} steps, so resuming to --steps "
            f"{steps} would change it; resume with --steps {config.get('steps')}, or start a new run with --steps "
            f"{steps} to get the straight-run result."
        )
    return step


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Create the output directory, refusing one that holds another run unless ``overwrite`` (or ``resume``)."""
    import shutil

    if out.exists() and not out.is_dir():
        raise _error(f"--out {str(out)!r} exists and is not a directory.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(f"--out {str(out)!r} cannot be created: {exc.strerror or exc}.") from None
    if not os.access(out, os.W_OK):
        raise _error(f"--out {str(out)!r} is not writable.")
    if resume:
        return
    existing = [name for name in RUN_FILES if (out / name).exists()]
    existing += sorted(p.name for p in out.glob("checkpoint.step*.rank*.pt"))  # shards of a sharded run
    if existing and not overwrite:
        raise _error(
            f"--out {str(out)!r} holds another run ({', '.join(existing)}); continue it with --resume, choose another "
            "--out, or pass --overwrite to replace it."
        )
    for name in existing:  # --overwrite: the user asked for the old run to go
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def _interrupted_message(out: Path) -> str:
    from ..errors import DatasetflowError
    from ..flows.checkpoint import CHECKPOINT_NAME, load_checkpoint

    checkpoint = out / CHECKPOINT_NAME
    if not checkpoint.is_file():
        return "interrupted before the first checkpoint; nothing to resume from."
    try:
        step = f" (step {int(load_checkpoint(checkpoint)['step'])})"
    except (DatasetflowError, KeyError, TypeError, ValueError):
        step = ""
    return f"interrupted; run the same command with --resume to continue from the last checkpoint{step}."


def _spec_text(spec: str | None) -> str | None:
    if spec is None:
        return None
    return os.path.normpath(spec) if ("/" in spec or os.sep in spec) else spec


# ---------------------------------------------------------------------- the command
def run_flow_command(
    settings: dict[str, Any],
    origin: dict[str, str],
    *,
    where: str,
    warn: Callable[[str], None],
) -> dict[str, Any]:
    """Run the flow described by ``settings`` and write its outputs.

    Args:
        settings: merged settings (see :func:`merge_settings`).
        origin: where each setting came from.
        where: the config file's name ("" without a config), for messages.
        warn: reports a non-fatal problem (figures) on stderr.

    Returns:
        A summary for the command's output: ``lines`` (text) and ``history`` (what was written).

    Raises:
        DatasetflowError: bad settings or data, missing or mismatched checkpoint, divergence (after
            writing the outputs of the last good state), ...
    """
    from ..data import shard
    from ..flows import Checkpointer, FlowDivergedError, run_flow
    from ..flows.checkpoint import CHECKPOINT_NAME
    from ..functionals import from_config, target_terms

    source_spec, target_spec = settings["source"], settings["target"]
    if source_spec is None:
        raise _error("no SOURCE dataset: give SOURCE TARGET, or 'source' (and 'target') in a --config file.")
    if settings["out"] is None:
        raise _error("no output directory: give --out DIR (or 'out' in the --config file).")
    if settings["steps"] is None:
        raise _error("no number of steps: give --steps N (or 'steps' in the --config file).")
    steps = int(settings["steps"])
    out = Path(settings["out"])
    if out.exists() and not out.is_dir():
        raise _error(f"--out {str(out)!r} exists and is not a directory.")

    terms, notes = resolve_terms(settings, origin, where)
    for note in notes:
        warn(note)
    needs_target = [t["type"] for t in terms if t["type"] in target_terms()]
    if needs_target and target_spec is None:
        raise _error(
            f"no TARGET dataset: the functional's {'/'.join(sorted(set(needs_target)))} term needs one (TARGET, or "
            "'target' in the config)."
        )
    dynamics_options = _dynamics_options(settings)
    checkpoint_every = settings["checkpoint_every"]
    if checkpoint_every is None:
        checkpoint_every = max(1, steps // 10)
    figures = bool(settings["figures"])
    record_every = settings["record_every"]
    if record_every is None and figures:
        record_every = max(1, steps // 50)
    run_settings = {
        **{k: v for k, v in settings.items() if k not in ("functional", "config", "quiet", "dynamics_options")},
        "source": _spec_text(source_spec),
        "target": _spec_text(target_spec),
        "resize": shape_text(settings["resize"]) if settings["resize"] else None,
        "functional": terms,
        "dynamics_options": dynamics_options,
        "checkpoint_every": checkpoint_every or None,
        "record_every": record_every,
        "config": where or None,
    }
    world = join_world(settings["device"])  # torchrun: one process per rank, each with a shard of SOURCE
    run_settings["world_size"] = world.size
    resume = bool(settings["resume"])
    resumed_from = _check_resume(out, run_settings, steps) if resume else None
    on_main(world, lambda: _prepare_out(out, resume, bool(settings.get("overwrite"))))

    source, target, load_seconds = load_datasets(source_spec, target_spec, settings, settings["seed"])
    if any(t["type"] == "mmd_sw" for t in terms):
        # the class-mixture (WoW) view: every class weighs the same, samples are uniform inside a class
        source = source.with_class_weights("uniform")
        target = target.with_class_weights("uniform")
    functional = from_config(terms, source=source, target=target, where=where)
    full_source, source = source, shard(source, world)

    trajectory_dir = out / TRAJECTORY_DIR if record_every is not None else None
    show_bar = not settings["quiet"] and sys.stderr.isatty() and world.is_main
    callback, close = progress_callback(steps, resumed_from or 0, show_bar)
    callbacks = [callback]
    if checkpoint_every or resume:
        stored = jsonable({k: run_settings[k] for k in _RESUME_KEYS})
        callbacks.append(Checkpointer(out, checkpoint_every or None, resume=resume, settings=stored))
    diverged = None
    try:
        result = run_flow(
            functional,
            source,
            dynamics=settings["dynamics"],
            optimizer=settings["optimizer"],
            step_size=settings["step_size"],
            steps=steps,
            schedule=settings["schedule"],
            tol=settings["tol"],
            seed=settings["seed"],
            record_every=record_every,
            trajectory_dir=trajectory_dir,
            callbacks=callbacks,
            dynamics_options=dynamics_options,
            optimizer_options=settings["optimizer_options"],
        )
    except FlowDivergedError as exc:  # keep what the flow produced, then report the divergence
        diverged, result = exc, exc.result
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_interrupted_message(out)) from None
    finally:
        close()

    result = gather_result(result, world)
    leave_world(world)  # no more collectives; no rank aborts the others at exit
    if not world.is_main:  # rank 0 writes the outputs
        if diverged is not None:
            raise _error(str(diverged))
        return {"lines": [], "history": None}
    source = full_source
    write_final_npz(out / "final.npz", result)
    written = ["final.npz", "history.json"]
    if (out / CHECKPOINT_NAME).is_file():
        written.append(CHECKPOINT_NAME)
    if trajectory_dir is not None:
        written.append(f"{TRAJECTORY_DIR}/")
    figure_files = _figures(result, out, target, warn) if figures else []
    history = {
        **result.history(),
        "load_seconds": load_seconds,
        "source": describe(source, source_spec),
        "target": describe(target, target_spec) if target is not None else None,
        "final_classes": [str(c) for c in result.final.classes],
        "settings": run_settings,
        "figures": figure_files,
        "diverged": None if diverged is None else str(diverged),
    }
    write_json_atomic(out / "history.json", history)
    written += figure_files
    if diverged is not None:
        raise _error(f"{diverged} The last good particles are in {out / 'final.npz'}.")

    objective = result.objective
    first = f"{objective[0]:.6g}" if objective else "n/a"
    last = f"{objective[-1]:.6g}" if objective else "n/a"
    tgt_text = (
        f" -> {target.name or target_spec} (n={len(target)}, classes={target.num_classes})"
        if target is not None
        else ""
    )
    resumed = f", resumed from step {resumed_from}" if resumed_from is not None else ""
    lines = [
        f"flow      {source.name or source_spec} (n={len(source)}, d={source.dim} "
        f"({shape_text(source.feature_shape)}), classes={source.num_classes}){tgt_text}",
        f"settings  dynamics={settings['dynamics']}  optimizer={settings['optimizer']}  "
        f"step_size={settings['step_size']:g}  schedule={settings['schedule']}  steps={steps}  seed={settings['seed']}",
        f"functional {functional!r}",
        f"objective {first} -> {last}  ({result.steps} steps, stopped: {result.stopped}{resumed})",
        f"time      {result.seconds:.3f} s (flow), {load_seconds:.3f} s (loading)",
        f"wrote     {out}{os.sep}  {', '.join(written)}",
    ]
    return {"lines": lines, "history": history}


# ---------------------------------------------------------------------- the click command
def register(cli: Any) -> None:
    """Add the ``flow`` command to the click group ``cli``."""
    import click

    from .options import (
        OneLineCommand,
        convert_config_value,
        data_options,
        explicit_params,
        label_cost_options,
        output_options,
        reports_errors,
    )

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
        type=click.Choice(DYNAMICS_NAMES),
        default="fd-fl",
        show_default=True,
        help="fd-fl: features move, class statistics follow; jd-fl: features and class Gaussians move; "
        "jd-vl: one Gaussian per particle, re-clustered into labels.",
    )
    @click.option(
        "--optimizer",
        type=click.Choice(OPTIMIZER_NAMES),
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
    @click.option("--schedule", type=click.Choice(SCHEDULE_NAMES), default="constant", show_default=True)
    @label_cost_options(outer_help="Outer OT solver of the OTDD to the target.  [library default: sinkhorn]")
    @click.option(
        "--label-weight", type=click.FloatRange(min=0), default=None, help="Weight of W2^2(y, y') in the OTDD cost."
    )
    @click.option(
        "--objective",
        type=click.Choice(["otdd", "mmd-sw", "sotdd", "busemann"]),
        default="otdd",
        show_default=True,
        help="otdd: OTDD^2/2 to TARGET (Wasserstein flow); mmd-sw: MMD^2/2 with a sliced-Wasserstein kernel "
        "between the classes (WoW flow; classes weigh the same); sotdd: s-OTDD^2 (moment transform, jointly "
        "standardised); busemann: SWB1DG^2 (Busemann-sliced); both with --projections fresh directions per step.",
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
        help="mmd-sw, sotdd, busemann: number of directions, drawn afresh every step.  [default: 500]",
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
    @click.option("--overwrite", is_flag=True, help="Replace the run already in DIR (without it, DIR must hold none).")
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
    @output_options("Write the objective curve, the flow (scatter + GIF, d <= 3) or an image grid (images).")
    @reports_errors("try --max-samples N, --outer sinkhorn or --dtype float32.")
    def flow(warnings: Any, **params: Any) -> str | None:
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

        Term types: otdd, mmd_sw, sotdd, busemann, ball, repulsion, quadratic_repulsion, collapse, hyperplane,
        norm, entropy.
        """
        ctx = click.get_current_context()
        where = params["config"] or ""
        config: dict[str, Any] = {}
        if params["config"]:
            valid = {p.name for p in ctx.command.params if p.name not in CLI_ONLY_PARAMS}
            config = read_config(params["config"], valid | set(CONFIG_ONLY_KEYS))
        settings, origin = merge_settings(
            params,
            explicit_params(ctx),
            config,
            lambda name, value: convert_config_value(ctx, name, value),
            where,
        )
        summary = run_flow_command(
            settings, origin, where=where, warn=lambda text: click.echo(f"Warning: {text}", err=True)
        )
        return None if params["quiet"] else "\n".join(summary["lines"])
