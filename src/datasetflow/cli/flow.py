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
    jsonable,
    load_datasets,
    progress_callback,
    shape_text,
    torch_device_dtype,
    write_final_npz,
    write_json_atomic,
)

__all__ = [
    "DYNAMICS_NAMES",
    "OPTIMIZER_NAMES",
    "SCHEDULE_NAMES",
    "TERM_TYPES",
    "CONFIG_ONLY_KEYS",
    "CLI_ONLY_PARAMS",
    "read_config",
    "merge_settings",
    "run_flow_command",
]

#: Names offered by ``--dynamics``, ``--optimizer`` and ``--schedule`` (the flow registries' keys;
#: a test checks that they agree).
DYNAMICS_NAMES = ("fd-fl", "jd-fl", "jd-vl")
OPTIMIZER_NAMES = ("sgd", "momentum", "adam")
SCHEDULE_NAMES = ("constant", "cosine", "exponential", "step")

#: Term type -> (required keys, optional keys); every term also takes ``type`` and ``weight``.
#: ``None`` for otdd: the keyword options of :func:`datasetflow.distances.otdd`.
TERM_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "otdd": ((), None),
    "ball": (("center", "radius"), ()),
    "repulsion": ((), ("scale",)),
    "quadratic_repulsion": ((), ()),
    "collapse": (("dims",), ()),
    "hyperplane": (("normal",), ("bias",)),
    "norm": ((), ("matrix", "offset", "classes")),
    "entropy": (("sigma",), ()),
    "mmd_sw": ((), ("kernel", "bandwidth", "exponent", "n_projections", "resample", "target_batch", "seed")),
}

#: Config keys that have no command-line option.
CONFIG_ONLY_KEYS = ("dynamics_options", "optimizer_options", "functional")
#: Command-line parameters that a config file cannot set.
CLI_ONLY_PARAMS = ("config", "resume", "quiet")
#: Top-level settings that configure the default functional (OTDD to the target + entropy).
_OTDD_SETTINGS = ("inner", "outer", "reg", "label_weight")
#: Top-level settings of the MMD-SW objective (``--objective mmd-sw``) -> the term's key.
_MMD_SETTINGS = {
    "kernel": "kernel",
    "bandwidth": "bandwidth",
    "projections": "n_projections",
    "target_batch": "target_batch",
}
#: Term types that need a target dataset.
_TARGET_TERMS = ("otdd", "mmd_sw")
_JD_VL_SETTINGS = ("clustering", "recluster_every")
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
)
SETTINGS_FILE = "settings.json"
TRAJECTORY_DIR = "trajectory"


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
def _otdd_option_names() -> tuple[str, ...]:
    import inspect

    from ..distances import otdd

    skip = {"source", "target", "source_stats", "target_stats"}
    return tuple(name for name in inspect.signature(otdd).parameters if name not in skip)


def _term_keys(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    required, optional = TERM_TYPES[kind]
    return required, _otdd_option_names() if optional is None else optional


def _normalize_terms(terms: Any, where: str) -> list[dict[str, Any]]:
    """Check the structure of a ``functional:`` list: mappings with a known ``type``, known keys,
    the required keys present and numbers where numbers are needed."""
    if not isinstance(terms, list) or not terms:
        raise _error(f"{where}functional: must be a non-empty list of terms such as {{type: otdd}}, got {terms!r}.")
    out = []
    for i, term in enumerate(terms):
        at = f"{where}functional[{i}]"
        if not isinstance(term, dict):
            raise _error(f"{at}: a term must be a mapping with a 'type' key, got {term!r}.")
        kind = term.get("type")
        if kind not in TERM_TYPES:
            raise _error(f"{at}.type: unknown term type {kind!r}; valid types are {list(TERM_TYPES)}.")
        required, optional = _term_keys(kind)
        valid = ("type", "weight", *required, *optional)
        unknown = [str(k) for k in term if k not in valid]
        if unknown:
            raise _error(f"{at}: unknown key(s) {unknown} for type {kind!r}; valid keys are {list(valid)}.")
        missing = [k for k in required if k not in term]
        if missing:
            raise _error(f"{at}: type {kind!r} needs the key(s) {missing}.")
        weight = term.get("weight", 1.0)
        if not _is_number(weight) or not weight >= 0:
            raise _error(f"{at}.weight: must be a non-negative number, got {weight!r}.")
        for key in ("radius", "scale", "sigma", "bias"):
            if key in term and not _is_number(term[key]):
                raise _error(f"{at}.{key}: must be a number, got {term[key]!r}.")
        if kind == "repulsion" and "scale" in term and not term["scale"] > 0:
            raise _error(f"{at}.scale: must be positive, got {term['scale']!r}.")
        for key in ("radius", "sigma"):
            if key in term and not term[key] >= 0:
                raise _error(f"{at}.{key}: must be non-negative, got {term[key]!r}.")
        out.append({"type": kind, "weight": float(weight), **{k: v for k, v in term.items() if k not in valid[:2]}})
    return out


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
            given = [k for k in _OTDD_SETTINGS if origin.get(k) in ("cli", "config")]
            if given:
                notes.append(", ".join("--" + k.replace("_", "-") for k in given) + " ignored: --objective mmd-sw.")
            terms = [{"type": "mmd_sw", "weight": 1.0, "seed": int(settings["seed"]), **mmd_options}]
        else:
            given = [k for k in _MMD_SETTINGS if origin.get(k) in ("cli", "config")]
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
    terms = _normalize_terms(settings["functional"], prefix)
    overrides = {k: settings[k] for k in _OTDD_SETTINGS if origin.get(k) == "cli"}
    if overrides:
        otdd_terms = [t for t in terms if t["type"] == "otdd"]
        if not otdd_terms:
            options = ", ".join("--" + k.replace("_", "-") for k in overrides)
            notes.append(f"{options} ignored: the functional has no otdd term.")
        for term in otdd_terms:
            term.update(overrides)
    mmd_overrides = {_MMD_SETTINGS[k]: settings[k] for k in _MMD_SETTINGS if origin.get(k) == "cli"}
    if mmd_overrides:
        mmd_terms = [t for t in terms if t["type"] == "mmd_sw"]
        if not mmd_terms:
            notes.append(
                "--kernel/--bandwidth/--projections/--target-batch ignored: the functional has no mmd_sw term."
            )
        for term in mmd_terms:
            term.update(mmd_overrides)
    if origin.get("noise") == "cli":
        terms = [t for t in terms if t["type"] != "entropy"]
        if settings["noise"]:
            terms.append({"type": "entropy", "weight": 1.0, "sigma": float(settings["noise"])})
    return terms, notes


def _vector(value: Any, at: str, dim: int, what: str) -> list[float]:
    import numpy as np

    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise _error(f"{at}: {what} must be a list of {dim} numbers, got {value!r}.") from None
    if arr.shape != (dim,):
        raise _error(f"{at}: {what} must have {dim} entries (the feature dimension d={dim}), got shape {arr.shape}.")
    return arr.tolist()


def _array(value: Any, at: str, shapes: list[tuple[int, ...]]) -> list:
    import numpy as np

    valid = " or ".join(str(s) for s in shapes)
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise _error(f"{at}: must be a numeric array of shape {valid}, got {value!r}.") from None
    if arr.shape not in shapes:
        raise _error(f"{at}: must have shape {valid} (d={shapes[0][-1]}), got shape {arr.shape}.")
    return arr.tolist()


def build_functional(terms: list[dict[str, Any]], source: Any, target: Any, where: str) -> Any:
    """The :class:`~datasetflow.functionals.Functional` of a term list, with the term parameters
    checked against the source's dimension and classes."""
    from .. import functionals as fn

    prefix = f"{where}: " if where else ""
    d, classes = source.dim, source.classes
    parts = []
    for i, term in enumerate(terms):
        at = f"{prefix}functional[{i}]"
        kind = term["type"]
        options = {k: v for k, v in term.items() if k not in ("type", "weight")}
        if kind == "otdd":
            if target is None:
                raise _error(f"{at}: an otdd term needs a target dataset (TARGET, or 'target' in the config).")
            part = fn.otdd_to(target, **options)
        elif kind == "ball":
            part = fn.ball_constraint(_vector(options["center"], f"{at}.center", d, "center"), options["radius"])
        elif kind == "repulsion":
            part = fn.class_repulsion(**options)
        elif kind == "quadratic_repulsion":
            part = fn.quadratic_repulsion()
        elif kind == "collapse":
            dims = options["dims"]
            dims = [dims] if isinstance(dims, int) and not isinstance(dims, bool) else dims
            if not isinstance(dims, list) or not dims or not all(isinstance(k, int) and -d <= k < d for k in dims):
                raise _error(f"{at}.dims: must be a list of coordinate indices in 0..{d - 1}, got {options['dims']!r}.")
            part = fn.collapse(dims)
        elif kind == "hyperplane":
            if len(classes) != 2:
                raise _error(f"{at}: a hyperplane term needs a source with 2 classes, got {len(classes)}.")
            part = fn.hyperplane_margin(_vector(options["normal"], f"{at}.normal", d, "normal"), options.get("bias", 0))
        elif kind == "norm":
            c = len(classes)
            matrix = options.get("matrix")
            offset = options.get("offset")
            if matrix is not None:
                matrix = _array(matrix, f"{at}.matrix", [(d, d), (c, d, d)])
            if offset is not None:
                offset = _array(offset, f"{at}.offset", [(d,), (c, d)])
            picked = options.get("classes")
            if picked is not None:
                picked = [
                    _class_index(k, classes, f"{at}.classes")
                    for k in (picked if isinstance(picked, list) else [picked])
                ]
            part = fn.norm_potential(matrix, offset, classes=picked)
        elif kind == "mmd_sw":
            if target is None:
                raise _error(f"{at}: an mmd_sw term needs a target dataset (TARGET, or 'target' in the config).")
            part = fn.mmd_sw_to(target, **options)
        else:  # entropy
            part = fn.entropy(options["sigma"])
        parts.append(part if term["weight"] == 1.0 else term["weight"] * part)
    return sum(parts[1:], start=parts[0])


def _class_index(value: Any, classes: tuple, at: str) -> int:
    names = [str(c) for c in classes]
    if value in classes:
        return classes.index(value)
    if str(value) in names:
        return names.index(str(value))
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return value
    raise _error(f"{at}: {value!r} is neither a source class {names} nor a class index in 0..{len(classes) - 1}.")


def _dynamics_options(settings: dict[str, Any], origin: dict[str, str], where: str) -> dict[str, Any]:
    """``dynamics_options`` with ``--clustering`` / ``--recluster-every`` (jd-vl) merged in and the
    option names checked against the dynamics class."""
    import inspect

    from ..flows import DYNAMICS

    name = settings["dynamics"]
    options = dict(settings["dynamics_options"])
    given = {k: settings[k] for k in _JD_VL_SETTINGS if settings[k] is not None}
    if given and name != "jd-vl":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        verb = "applies" if len(given) == 1 else "apply"
        raise _error(f"{flags} {verb} to --dynamics jd-vl only (got --dynamics {name}).")
    options.update(given)
    valid = [
        p.name
        for p in inspect.signature(DYNAMICS[name].__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = [str(k) for k in options if k not in valid]
    if unknown:
        at = f"{where}: dynamics_options" if origin.get("dynamics_options") == "config" else "dynamics options"
        raise _error(f"{at}: unknown option(s) {unknown} for dynamics {name!r}; valid options are {valid}.")
    if name == "jd-vl":
        options.setdefault("seed", settings["seed"])  # k-means seed follows --seed
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


def _read_checkpoint_step(path: Path) -> int:
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return int(saved["step"])
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise _error(f"--resume: cannot read the checkpoint {path}: {type(exc).__name__}: {exc}") from None


def _check_resume(out: Path, run_settings: dict[str, Any], steps: int) -> int:
    """The checkpoint's step, after checking that it exists, is not past ``steps`` and was made
    with the same settings (``settings.json`` of the first run)."""
    from ..flows.loop import CHECKPOINT_NAME

    checkpoint = out / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise _error(
            f"--resume: no checkpoint in {str(out)!r} (expected {CHECKPOINT_NAME}); start the flow without --resume "
            "(checkpoints are saved every --checkpoint-every steps)."
        )
    stored_file = out / SETTINGS_FILE
    if stored_file.is_file():
        try:
            stored = json.loads(stored_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict):
            now = jsonable({k: run_settings[k] for k in _RESUME_KEYS})
            changed = [
                f"{k}={json.dumps(now[k])} (was {json.dumps(stored.get(k))})"
                for k in _RESUME_KEYS
                if k in stored and stored[k] != now[k]
            ]
            if changed:
                raise _error(
                    f"--resume: the settings differ from those of the run in {str(out)!r} ({SETTINGS_FILE}): "
                    f"{'; '.join(changed)}. Resume with the same settings, or start a new run without --resume."
                )
    step = _read_checkpoint_step(checkpoint)
    if step > steps:
        raise _error(f"--resume: the checkpoint is at step {step}, past --steps {steps}; ask for at least {step}.")
    return step


def _interrupted_message(out: Path) -> str:
    from ..flows.loop import CHECKPOINT_NAME

    checkpoint = out / CHECKPOINT_NAME
    if not checkpoint.is_file():
        return "interrupted before the first checkpoint; nothing to resume from."
    try:
        step = f" (step {_read_checkpoint_step(checkpoint)})"
    except Exception:  # noqa: BLE001 - the message is only a hint
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
        DatasetflowError: bad settings or data, missing checkpoint, divergence, ...
    """
    from ..flows import run_flow
    from ..flows.loop import CHECKPOINT_NAME

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
    needs_target = any(t["type"] in _TARGET_TERMS for t in terms)
    if needs_target and target_spec is None:
        kinds = sorted({t["type"] for t in terms if t["type"] in _TARGET_TERMS})
        raise _error(
            f"no TARGET dataset: the functional's {'/'.join(kinds)} term needs one (TARGET, or 'target' in the config)."
        )
    dynamics_options = _dynamics_options(settings, origin, where)
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
    resumed_from = None
    if settings["resume"]:
        resumed_from = _check_resume(out, run_settings, steps)

    device, dtype = torch_device_dtype(settings["device"], settings["dtype"])
    source, target, load_seconds = load_datasets(
        source_spec,
        target_spec,
        data_dir=settings["data_dir"],
        resize=settings["resize"],
        device=device,
        dtype=dtype,
        max_samples=settings["max_samples"],
        seed=settings["seed"],
    )
    if any(t["type"] == "mmd_sw" for t in terms):
        # the class-mixture (WoW) view: every class weighs the same, samples are uniform inside a class
        source = source.with_class_weights("uniform")
        target = target.with_class_weights("uniform")
    functional = build_functional(terms, source, target, where)

    out.mkdir(parents=True, exist_ok=True)
    trajectory_dir = out / TRAJECTORY_DIR if record_every is not None else None
    if not settings["resume"]:  # a fresh run replaces whatever an earlier run left in DIR
        (out / CHECKPOINT_NAME).unlink(missing_ok=True)
        write_json_atomic(out / SETTINGS_FILE, {k: run_settings[k] for k in _RESUME_KEYS})
        if trajectory_dir is not None and trajectory_dir.is_dir():
            for stale in trajectory_dir.glob("step_*.npz"):
                stale.unlink()

    show_bar = not settings["quiet"] and sys.stderr.isatty()
    callback, close = progress_callback(steps, resumed_from or 0, show_bar)
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
            checkpoint_every=checkpoint_every or None,
            checkpoint_dir=out,
            resume=bool(settings["resume"]),
            callbacks=[callback],
            dynamics_options=dynamics_options,
            optimizer_options=settings["optimizer_options"],
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_interrupted_message(out)) from None
    finally:
        close()

    write_final_npz(out / "final.npz", result)
    written = ["final.npz", "history.json"]
    if (out / CHECKPOINT_NAME).is_file():
        written.append(CHECKPOINT_NAME)
    if trajectory_dir is not None:
        written.append(f"{TRAJECTORY_DIR}/")
    figure_files = _figures(result, out, target, warn) if figures else []
    history = {
        **result.history(),
        "resumed_from": resumed_from,
        "load_seconds": load_seconds,
        "source": describe(source, source_spec),
        "target": describe(target, target_spec) if target is not None else None,
        "final_classes": [str(c) for c in result.final.classes],
        "settings": run_settings,
        "figures": figure_files,
    }
    write_json_atomic(out / "history.json", history)
    written += figure_files

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
