"""Functionals from plain data: the one builder behind YAML configs, the CLI and the experiments.

A functional is described by a list of terms, each a mapping with a ``type``, an optional
``weight`` (default 1) and the term's options::

    [{"type": "otdd", "inner": "gaussian"},
     {"type": "ball", "weight": 0.5, "center": [0, 1], "radius": 3.5},
     {"type": "entropy", "sigma": 0.001}]

:func:`from_config` checks every term (known type, known keys, required keys, numbers where numbers
belong, vectors of the data's dimension, class names of the source) and returns the weighted sum.
Errors name the term (``functional[i].key``) and list the valid choices. :data:`TERM_TYPES` is the
registry; :func:`register_term` adds a type.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.dataset import LabeledDataset
from ..errors import InvalidArgumentError
from .base import Functional
from .energies import (
    ball_constraint,
    class_repulsion,
    collapse,
    entropy,
    hyperplane_margin,
    norm_potential,
    quadratic_repulsion,
)
from .mmd_sw import MMDSWToTarget
from .otdd_target import OTDDToTarget

__all__ = ["TermType", "TERM_TYPES", "register_term", "normalize_terms", "from_config", "target_terms"]


@dataclass(frozen=True)
class TermType:
    """How to build one term type.

    Attributes:
        build: ``build(options, source, target, at) -> Functional`` (``at`` names the term in messages).
        required, optional: the option keys (besides ``type`` and ``weight``).
        needs_target: whether the term compares with a target dataset.
        numbers: keys whose values must be numbers; ``positive`` / ``non_negative``: their signs.
    """

    build: Callable[[dict[str, Any], LabeledDataset | None, LabeledDataset | None, str], Functional]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    needs_target: bool = False
    numbers: tuple[str, ...] = ()
    positive: tuple[str, ...] = ()
    non_negative: tuple[str, ...] = ()


def _keyword_options(cls: type) -> tuple[str, ...]:
    """The keyword-only parameters of a functional class (its explicit options)."""
    return tuple(
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    )


def _error(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message)


def _vector(value: Any, at: str, dim: int) -> list[float]:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise _error(f"{at}: must be a list of {dim} numbers, got {value!r}.") from None
    if arr.shape != (dim,):
        raise _error(f"{at}: must have {dim} entries (the feature dimension d={dim}), got shape {arr.shape}.")
    return arr.tolist()


def _array(value: Any, at: str, shapes: list[tuple[int, ...]]) -> list:
    valid = " or ".join(str(s) for s in shapes)
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise _error(f"{at}: must be a numeric array of shape {valid}, got {value!r}.") from None
    if arr.shape not in shapes:
        raise _error(f"{at}: must have shape {valid} (d={shapes[0][-1]}), got shape {arr.shape}.")
    return arr.tolist()


def _class_index(value: Any, classes: tuple, at: str) -> int:
    names = [str(c) for c in classes]
    if value in classes:
        return classes.index(value)
    if str(value) in names:
        return names.index(str(value))
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return value
    raise _error(f"{at}: {value!r} is neither a source class {names} nor a class index in 0..{len(classes) - 1}.")


def _need_source(source: LabeledDataset | None, at: str) -> LabeledDataset:
    if source is None:
        raise _error(f"{at}: this term needs the source dataset to check its options against.")
    return source


# ---------------------------------------------------------------------- builders
def _build_ball(options, source, target, at):
    d = _need_source(source, at).dim
    return ball_constraint(_vector(options["center"], f"{at}.center", d), options["radius"])


def _build_collapse(options, source, target, at):
    d = _need_source(source, at).dim
    dims = options["dims"]
    dims = [dims] if isinstance(dims, int) and not isinstance(dims, bool) else dims
    if (
        not isinstance(dims, list)
        or not dims
        or not all(isinstance(k, int) and not isinstance(k, bool) and -d <= k < d for k in dims)
    ):
        raise _error(f"{at}.dims: must be a list of coordinate indices in 0..{d - 1}, got {options['dims']!r}.")
    return collapse(dims)


def _build_hyperplane(options, source, target, at):
    source = _need_source(source, at)
    if source.num_classes != 2:
        raise _error(f"{at}: a hyperplane term needs a source with 2 classes, got {source.num_classes}.")
    return hyperplane_margin(_vector(options["normal"], f"{at}.normal", source.dim), options.get("bias", 0.0))


def _build_norm(options, source, target, at):
    source = _need_source(source, at)
    d, c = source.dim, source.num_classes
    matrix, offset = options.get("matrix"), options.get("offset")
    if matrix is not None:
        matrix = _array(matrix, f"{at}.matrix", [(d, d), (c, d, d)])
    if offset is not None:
        offset = _array(offset, f"{at}.offset", [(d,), (c, d)])
    picked = options.get("classes")
    if picked is not None:
        picked = [
            _class_index(k, source.classes, f"{at}.classes") for k in (picked if isinstance(picked, list) else [picked])
        ]
    return norm_potential(matrix, offset, classes=picked)


def _target_builder(cls: type) -> Callable:
    def build(options, source, target, at):
        if target is None:
            raise _error(f"{at}: this term needs a target dataset (TARGET, or 'target' in the config).")
        return cls(target, **options)

    return build


#: term type name -> how to build it
TERM_TYPES: dict[str, TermType] = {
    "otdd": TermType(_target_builder(OTDDToTarget), optional=_keyword_options(OTDDToTarget), needs_target=True),
    "mmd_sw": TermType(_target_builder(MMDSWToTarget), optional=_keyword_options(MMDSWToTarget), needs_target=True),
    "ball": TermType(_build_ball, required=("center", "radius"), numbers=("radius",), non_negative=("radius",)),
    "repulsion": TermType(
        lambda o, s, t, at: class_repulsion(**o), optional=("scale",), numbers=("scale",), positive=("scale",)
    ),
    "quadratic_repulsion": TermType(lambda o, s, t, at: quadratic_repulsion()),
    "collapse": TermType(_build_collapse, required=("dims",)),
    "hyperplane": TermType(_build_hyperplane, required=("normal",), optional=("bias",), numbers=("bias",)),
    "norm": TermType(_build_norm, optional=("matrix", "offset", "classes")),
    "entropy": TermType(
        lambda o, s, t, at: entropy(o["sigma"]), required=("sigma",), numbers=("sigma",), non_negative=("sigma",)
    ),
}


def register_term(name: str, term: TermType) -> None:
    """Add a term type to :data:`TERM_TYPES` (e.g. a functional defined outside the library)."""
    if not isinstance(term, TermType):
        raise InvalidArgumentError(f"register_term needs a TermType, got {type(term).__name__}.")
    TERM_TYPES[name] = term


def target_terms() -> tuple[str, ...]:
    """The term types that need a target dataset."""
    return tuple(name for name, term in TERM_TYPES.items() if term.needs_target)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def normalize_terms(terms: Any, where: str = "") -> list[dict[str, Any]]:
    """Check the structure of a term list (mappings with a known ``type``, known and required keys,
    numbers where numbers are needed) and return copies with ``weight`` filled in.

    Args:
        terms: a non-empty list of mappings.
        where: a prefix for messages (e.g. the config file's name).
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(terms, list) or not terms:
        raise _error(f"{prefix}functional: must be a non-empty list of terms such as {{type: otdd}}, got {terms!r}.")
    out = []
    for i, term in enumerate(terms):
        at = f"{prefix}functional[{i}]"
        if not isinstance(term, Mapping):
            raise _error(f"{at}: a term must be a mapping with a 'type' key, got {term!r}.")
        kind = term.get("type")
        if kind not in TERM_TYPES:
            raise _error(f"{at}.type: unknown term type {kind!r}; valid types are {list(TERM_TYPES)}.")
        spec = TERM_TYPES[kind]
        valid = ("type", "weight", *spec.required, *spec.optional)
        unknown = [str(k) for k in term if k not in valid]
        if unknown:
            raise _error(f"{at}: unknown key(s) {unknown} for type {kind!r}; valid keys are {list(valid)}.")
        missing = [k for k in spec.required if k not in term]
        if missing:
            raise _error(f"{at}: type {kind!r} needs the key(s) {missing}.")
        weight = term.get("weight", 1.0)
        if not _is_number(weight) or not weight >= 0:
            raise _error(f"{at}.weight: must be a non-negative number, got {weight!r}.")
        for key in spec.numbers:
            if key in term and not _is_number(term[key]):
                raise _error(f"{at}.{key}: must be a number, got {term[key]!r}.")
        for key in spec.positive:
            if key in term and not term[key] > 0:
                raise _error(f"{at}.{key}: must be positive, got {term[key]!r}.")
        for key in spec.non_negative:
            if key in term and not term[key] >= 0:
                raise _error(f"{at}.{key}: must be non-negative, got {term[key]!r}.")
        out.append({"type": kind, "weight": float(weight), **{k: v for k, v in term.items() if k not in valid[:2]}})
    return out


def from_config(
    terms: Sequence[Mapping[str, Any]],
    *,
    source: LabeledDataset | None = None,
    target: LabeledDataset | None = None,
    where: str = "",
) -> Functional:
    """The :class:`~datasetflow.functionals.base.Functional` described by a list of terms.

    Args:
        terms: mappings ``{"type": ..., "weight": ..., **options}`` (see :data:`TERM_TYPES`).
        source: the dataset the flow starts from; terms whose options depend on its dimension or its
            classes (``ball``, ``collapse``, ``hyperplane``, ``norm``) are checked against it.
        target: the target dataset of ``otdd`` and ``mmd_sw`` terms.
        where: a prefix for messages (e.g. the config file's name).

    Returns:
        The weighted sum of the terms.

    Raises:
        InvalidArgumentError: a malformed term, with its index and the valid choices.
    """
    prefix = f"{where}: " if where else ""
    parts = []
    for i, term in enumerate(normalize_terms(list(terms), where)):
        at = f"{prefix}functional[{i}]"
        options = {k: v for k, v in term.items() if k not in ("type", "weight")}
        part = TERM_TYPES[term["type"]].build(options, source, target, at)
        parts.append(part if term["weight"] == 1.0 else term["weight"] * part)
    return sum(parts[1:], start=parts[0])
