r"""Scatter plots, flow plots, panel grids, GIF animations, image grids and objective curves.

Colours are fixed per label *index* (``tab10``, then the light ``tab20`` shades, cycling
after 20), so class ``k`` has the same colour in every panel and frame. Target datasets are
drawn as crosses in the colour of the flow class of the same name (``x``), or, for target
classes named like no flow class, in colours of their own (``+``) with a legend entry each. Features with
``d > 3`` are shown in their first two coordinates unless ``dims`` picks others; exactly
three selected coordinates give a 3-D plot.

matplotlib is imported inside the functions (the ``viz`` extra); figures are plain
:class:`matplotlib.figure.Figure` objects, never pyplot ones, so nothing global changes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.dataset import LabeledDataset
from ..errors import DatasetflowWarning, InvalidArgumentError
from ..flows.result import FlowResult

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "scatter_particles",
    "plot_flow",
    "plot_flows_grid",
    "animate_flow",
    "image_grid",
    "plot_objective",
    "label_color",
]

#: ``tab10`` followed by the light shades of ``tab20``: the colour of label index ``k`` is
#: ``_PALETTE[k % 20]`` (hex strings, so that no matplotlib import is needed to pick them).
_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
)
#: Colours of target classes whose names match no flow class (``Dark2`` shades and black, in an order
#: that keeps the first ones away from the first ``tab10`` colours), drawn with a ``+`` marker.
_TARGET_PALETTE = (
    "#7570b3",
    "#e7298a",
    "#000000",
    "#1b9e77",
    "#e6ab02",
    "#a6761d",
    "#666666",
    "#d95f02",
    "#66a61e",
    "#1f2a6b",
)
_TARGET_EDGE = "#505050"
_DPI = 110


def label_color(index: int) -> str:
    """The colour (hex string) of label index ``index``: ``tab10`` then light ``tab20`` shades."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise InvalidArgumentError(f"index must be a non-negative int, got {index!r}.")
    return _PALETTE[int(index) % len(_PALETTE)]


# ----------------------------------------------------------------------------- helpers


def _matplotlib():
    """The :class:`~matplotlib.figure.Figure` class, or a clear error when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InvalidArgumentError(
            "datasetflow.viz needs matplotlib, which is not installed: pip install 'datasetflow[viz]'"
        ) from exc
    return Figure


def _as_points(x: Any, name: str = "x") -> np.ndarray:
    """Features as a float64 ``(n, d)`` array (images are flattened)."""
    if isinstance(x, LabeledDataset):
        x = x.x
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{name} must be an (n, d) array or tensor; {exc}") from None
    if arr.ndim == 0:
        raise InvalidArgumentError(f"{name} must be an (n, d) array or tensor, got a scalar.")
    if arr.ndim == 1:
        arr = arr[:, None]
    return arr.reshape(arr.shape[0], -1)


def _as_labels(y: Any, n: int) -> np.ndarray:
    """Label indices as an int64 ``(n,)`` array (zeros when ``y`` is None)."""
    if y is None:
        return np.zeros(n, dtype=np.int64)
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise InvalidArgumentError(f"y must have shape ({n},) to match x, got {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
        _, arr = np.unique(arr, return_inverse=True)  # arbitrary labels -> indices of the sorted names
    if arr.size and arr.min() < 0:
        raise InvalidArgumentError("y must hold non-negative label indices.")
    return arr.astype(np.int64)


def _resolve_dims(dim: int, dims: Sequence[int] | None) -> tuple[int, ...]:
    """The plotted coordinates: all of them for ``d`` in (2, 3), the first two for ``d > 3``."""
    if dims is None:
        if dim < 2:
            raise InvalidArgumentError(f"plots need features with at least 2 dimensions, got d={dim}.")
        return tuple(range(3)) if dim == 3 else (0, 1)
    try:
        chosen = tuple(int(k) for k in dims)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"dims must be a sequence of 2 or 3 ints, got {dims!r}.") from None
    if len(chosen) not in (2, 3) or len(set(chosen)) != len(chosen) or any(not 0 <= k < dim for k in chosen):
        raise InvalidArgumentError(f"dims must be 2 or 3 distinct feature indices in [0, {dim}), got {dims!r}.")
    return chosen


def _new_axes(fig: Figure, three_d: bool, *args) -> Axes:
    return fig.add_subplot(*(args or (111,)), projection="3d" if three_d else None)


def _check_axes(ax: Axes, three_d: bool) -> None:
    if (ax.name == "3d") != three_d:
        kind = "a 3-D axes (projection='3d')" if three_d else "a 2-D axes"
        raise InvalidArgumentError(f"ax must be {kind} for {'3' if three_d else '2'} plotted dimensions.")


def _limits(arrays: Sequence[np.ndarray], margin: float = 0.05) -> np.ndarray:
    """``(k, 2)`` lower/upper bounds over every array's last axis, with a relative margin."""
    flat = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays if a.size], 0)
    flat = flat[np.isfinite(flat).all(1)]
    if flat.size == 0:
        return np.tile([-1.0, 1.0], (arrays[0].shape[-1], 1))
    lo, hi = flat.min(0), flat.max(0)
    pad = np.maximum(margin * (hi - lo), 1e-3 * np.maximum(1.0, np.abs(hi)))
    return np.stack([lo - pad, hi + pad], 1)


def _check_view(view: Sequence[float] | None, three_d: bool) -> tuple[float, float] | None:
    """``(elev, azim)`` in degrees for 3-D plots; a warning (and None) for 2-D ones."""
    if view is None:
        return None
    try:
        elev, azim = (float(v) for v in view)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"view must be (elev, azim) in degrees, got {view!r}.") from None
    if not three_d:
        warnings.warn("view applies to 3-D plots only; it is ignored here.", DatasetflowWarning, stacklevel=3)
        return None
    return elev, azim


def _apply_limits(ax: Axes, limits: np.ndarray, dims: tuple[int, ...], view: tuple[float, float] | None = None) -> None:
    """Set the limits; 2-D axes get equal ranges on a square box (equal aspect, no warnings),
    3-D axes a box proportional to the data ranges and the camera ``view``."""
    if len(dims) == 2:
        centre, half = limits.mean(1), 0.5 * (limits[:, 1] - limits[:, 0]).max()
        limits = np.stack([centre - half, centre + half], 1)
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    ax.set_xlabel(f"x[{dims[0]}]")
    ax.set_ylabel(f"x[{dims[1]}]")
    if len(dims) == 3:
        ax.set_zlim(*limits[2])
        ax.set_zlabel(f"x[{dims[2]}]")
        extent = limits[:, 1] - limits[:, 0]
        ax.set_box_aspect(tuple(np.maximum(extent, 0.25 * extent.max())), zoom=0.88)  # room for the labels
        if view is not None:
            ax.view_init(elev=view[0], azim=view[1])
    else:
        ax.set_aspect("equal", adjustable="box")


def _colors(labels: np.ndarray) -> list[str]:
    return [_PALETTE[k % len(_PALETTE)] for k in labels.tolist()]


def _marker_size(n: int) -> float:
    return float(np.clip(3000.0 / max(n, 1), 3.0, 22.0))


def _scatter(ax: Axes, pts: np.ndarray, colors: Any, **kwargs) -> None:
    if pts.shape[1] == 3:
        ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=colors, depthshade=False, **kwargs)
    else:
        ax.scatter(pts[:, 0], pts[:, 1], c=colors, **kwargs)


def _name(classes: Sequence[Hashable] | None, k: int) -> str:
    return str(classes[k]) if classes is not None and k < len(classes) else str(k)


def _legend(ax: Axes, labels: np.ndarray, classes: Sequence[Hashable] | None, extra: Sequence[tuple] = ()) -> None:
    """One entry per label index present (at most 20 shown), plus ``(text, style)`` extras."""
    from matplotlib.lines import Line2D

    present = np.unique(labels).tolist()
    handles = [
        Line2D([], [], marker="o", linestyle="", color=label_color(k), markersize=5, label=_name(classes, k))
        for k in present[:20]
    ]
    handles += [Line2D([], [], linestyle="", label=text, **style) for text, style in extra]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.7, handletextpad=0.2, borderpad=0.3)


def _save(fig: Figure, path: str | Path | None, dpi: int = _DPI) -> None:
    if path is None:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")


def _check_result(result: Any, name: str = "result") -> FlowResult:
    if not isinstance(result, FlowResult):
        raise InvalidArgumentError(f"{name} must be a FlowResult (from run_flow), got {type(result).__name__}.")
    return result


def _trajectory(result: FlowResult, caller: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Recorded positions ``(T, n, d)``, labels ``(T, n)`` and steps, or a clear error."""
    _check_result(result)
    traj = result.trajectory
    if traj is None or len(traj) == 0:
        raise InvalidArgumentError(
            f"{caller} needs the flow's trajectory, but this FlowResult has none: "
            "run run_flow(..., record_every=k) to record positions every k steps."
        )
    positions, labels = traj.stacked()
    return positions.detach().cpu().double().numpy(), labels.cpu().numpy().astype(np.int64), tuple(traj.steps)


@dataclass(frozen=True)
class _TargetLayer:
    """Target points drawn with one marker: ``points (m, k)`` and one colour per point."""

    points: np.ndarray
    colors: list[str]
    marker: str


@dataclass(frozen=True)
class _TargetView:
    """How a target dataset is drawn: its layers, legend entries and all its plotted points."""

    layers: tuple[_TargetLayer, ...]
    legend: tuple[tuple[str, dict], ...]
    points: np.ndarray


#: Show at most this many unmatched target classes one by one in a legend.
_MAX_TARGET_ENTRIES = 10


def _target_view(
    target: LabeledDataset | None, dims: tuple[int, ...], dim: int, classes: Sequence[Hashable] | None
) -> _TargetView | None:
    """Target points coloured by class: a class whose name (as text) is one of the flow's ``classes``
    takes that class's colour and an ``x`` marker; the other classes take the colours of
    ``_TARGET_PALETTE`` and a ``+`` marker, each with a legend entry ``"target <name>"``."""
    if target is None:
        return None
    if not isinstance(target, LabeledDataset):
        raise InvalidArgumentError(f"target must be a LabeledDataset or None, got {type(target).__name__}.")
    if target.dim != dim:
        raise InvalidArgumentError(f"target has feature dimension {target.dim}, the flow has {dim}.")
    pts = _as_points(target)[:, list(dims)]
    labels = target.y.cpu().numpy()
    flow_index = {str(name): k for k, name in enumerate(classes or ())}
    class_colors, matched, unmatched = [], np.zeros(target.num_classes, dtype=bool), []
    for c, name in enumerate(target.classes):
        if str(name) in flow_index:
            class_colors.append(label_color(flow_index[str(name)]))
            matched[c] = True
        else:
            class_colors.append(_TARGET_PALETTE[len(unmatched) % len(_TARGET_PALETTE)])
            unmatched.append(c)
    colors = np.asarray(class_colors, dtype=object)
    layers, legend = [], []
    for marker, mask in (("x", matched[labels]), ("+", ~matched[labels])):
        if mask.any():
            layers.append(_TargetLayer(pts[mask], colors[labels[mask]].tolist(), marker))
    if matched.any():
        legend.append(("target", {"marker": "x", "color": _TARGET_EDGE, "markersize": 4}))
    if len(unmatched) > _MAX_TARGET_ENTRIES:
        legend.append(("target (other classes)", {"marker": "+", "color": _TARGET_EDGE, "markersize": 6}))
    else:
        for c in unmatched:
            style = {"marker": "+", "color": class_colors[c], "markersize": 6, "markeredgewidth": 1.2}
            legend.append((f"target {_name(target.classes, c)}", style))
    return _TargetView(tuple(layers), tuple(legend), pts)


def _draw_target(ax: Axes, view: _TargetView, size: float, alpha: float, zorder: int | None = None) -> None:
    """The target on top, thin, so that both where the flow ended and the target show (artists with
    ``gid="target"``)."""
    for layer in view.layers:
        width = 0.7 if layer.marker == "x" else 0.9
        options = {"gid": "target"} if zorder is None else {"gid": "target", "zorder": zorder}
        _scatter(
            ax, layer.points, layer.colors, s=0.8 * size, marker=layer.marker, linewidths=width, alpha=alpha, **options
        )


_START_STYLE = {"marker": "o", "color": "#555555", "alpha": 0.3, "markersize": 4}


def _draw_flow(
    ax: Axes,
    result: FlowResult,
    dims: tuple[int, ...],
    *,
    trajectories: bool,
    max_paths: int,
    target: _TargetView | None,
    limits: np.ndarray | None,
    legend: bool,
    title: str | None,
    view: tuple[float, float] | None = None,
) -> None:
    positions, labels, _ = _trajectory(result, "plot_flow")
    pos = positions[..., list(dims)]
    n = pos.shape[1]
    size = _marker_size(n)
    _scatter(ax, pos[0], _colors(labels[0]), s=size, alpha=0.22, linewidths=0, zorder=2)
    if trajectories and len(pos) > 1 and max_paths > 0:
        idx = np.unique(np.linspace(0, n - 1, min(n, max_paths)).round().astype(np.int64))
        segments = np.ascontiguousarray(pos[:, idx].transpose(1, 0, 2))  # (m, T, k)
        colors = _colors(labels[-1][idx])
        if len(dims) == 3:
            from mpl_toolkits.mplot3d.art3d import Line3DCollection

            ax.add_collection(Line3DCollection(segments, colors=colors, linewidths=0.6, alpha=0.35))
        else:
            from matplotlib.collections import LineCollection

            ax.add_collection(LineCollection(segments, colors=colors, linewidths=0.6, alpha=0.35, zorder=3))
    _scatter(ax, pos[-1], _colors(labels[-1]), s=size, alpha=0.95, edgecolors="white", linewidths=0.3, zorder=4)
    if target is not None:
        _draw_target(ax, target, size, alpha=0.7, zorder=5)
    if limits is None:
        limits = _limits([pos] + ([target.points] if target is not None else []))
    _apply_limits(ax, limits, dims, view)
    if title:
        ax.set_title(title, fontsize=9)
    if legend:
        extra = [("start", _START_STYLE)] + (list(target.legend) if target is not None else [])
        _legend(ax, labels[-1], result.classes, extra)


# ----------------------------------------------------------------------------- public API


def scatter_particles(
    x: Any,
    y: Any = None,
    *,
    ax: Axes | None = None,
    dims: Sequence[int] | None = None,
    title: str | None = None,
    path: str | Path | None = None,
    classes: Sequence[Hashable] | None = None,
    legend: bool = True,
    view: Sequence[float] | None = None,
) -> Figure:
    """Scatter plot of particles coloured by label, 2-D or 3-D.

    Args:
        x: features ``(n, d)`` (array, tensor or a :class:`LabeledDataset`, whose labels and
            class names are then used when ``y`` / ``classes`` are not given).
        y: label indices ``(n,)`` (or arbitrary labels, indexed in sorted order); None: one colour.
        ax: an existing axes to draw into (3-D axes for three ``dims``); default a new figure.
        dims: the 2 or 3 plotted coordinates; default all for ``d`` in (2, 3), else ``(0, 1)``.
        title: axes title.
        path: save the figure there (PNG, PDF, SVG, ... by suffix); parent folders are created.
        classes: legend names of the label indices (default the indices).
        legend: draw a legend of the labels present.
        view: ``(elev, azim)`` camera angles in degrees for 3-D plots (default matplotlib's).

    Returns:
        The :class:`matplotlib.figure.Figure`.

    Raises:
        InvalidArgumentError: matplotlib is missing, shapes disagree, ``dims`` is invalid or
            ``ax`` has the wrong projection.
    """
    Figure = _matplotlib()
    if isinstance(x, LabeledDataset):
        if y is None:
            y = x.y
            classes = x.classes if classes is None else classes
    pts = _as_points(x)
    labels = _as_labels(y, pts.shape[0])
    chosen = _resolve_dims(pts.shape[1], dims)
    three_d = len(chosen) == 3
    if ax is None:
        fig = Figure(figsize=(6.0, 5.0) if three_d else (5.2, 4.6))
        ax = _new_axes(fig, three_d)
    else:
        _check_axes(ax, three_d)
        fig = ax.figure
    pts = pts[:, list(chosen)]
    _scatter(ax, pts, _colors(labels), s=_marker_size(len(pts)), alpha=0.9, edgecolors="white", linewidths=0.3)
    _apply_limits(ax, _limits([pts]), chosen, _check_view(view, three_d))
    if title:
        ax.set_title(title, fontsize=9)
    if legend and y is not None:
        _legend(ax, labels, classes)
    _save(fig, path)
    return fig


def plot_flow(
    result: FlowResult,
    *,
    dims: Sequence[int] | None = None,
    trajectories: bool = True,
    max_paths: int = 300,
    path: str | Path | None = None,
    title: str | None = None,
    target: LabeledDataset | None = None,
    ax: Axes | None = None,
    legend: bool = True,
    view: Sequence[float] | None = None,
) -> Figure:
    """A flow at a glance: initial particles faint, paths as thin lines, final particles solid.

    Colours follow the labels (initial particles: their initial labels; paths and final
    particles: the final labels, which differ under jd-vl). 2-D or 3-D from the feature
    dimension (``d > 3``: the first two coordinates unless ``dims`` is given).

    Args:
        result: a :class:`FlowResult` with a trajectory (``run_flow(..., record_every=k)``).
        dims: the 2 or 3 plotted coordinates.
        trajectories: draw the particle paths.
        max_paths: at most this many paths (evenly spaced particle indices) are drawn.
        path: save the figure there; parent folders are created.
        title: axes title.
        target: a target :class:`LabeledDataset`, drawn as small crosses coloured by class: a target
            class named like a flow class has that class's colour (``x``); the others have their own
            colours (``+``) and legend entries.
        ax: an existing axes to draw into; default a new figure.
        legend: draw the legend (final classes, start, target).
        view: ``(elev, azim)`` camera angles in degrees for 3-D plots.

    Returns:
        The :class:`matplotlib.figure.Figure`.

    Raises:
        InvalidArgumentError: no trajectory was recorded, invalid ``dims``, a target of
            another dimension, or matplotlib is missing.
    """
    Figure = _matplotlib()
    positions, _, _ = _trajectory(result, "plot_flow")
    dim = positions.shape[-1]
    chosen = _resolve_dims(dim, dims)
    three_d = len(chosen) == 3
    if ax is None:
        fig = Figure(figsize=(6.0, 5.0) if three_d else (5.2, 4.6))
        ax = _new_axes(fig, three_d)
    else:
        _check_axes(ax, three_d)
        fig = ax.figure
    _draw_flow(
        ax,
        result,
        chosen,
        trajectories=trajectories,
        max_paths=int(max_paths),
        target=_target_view(target, chosen, dim, result.classes),
        limits=None,
        legend=legend,
        title=title,
        view=_check_view(view, three_d),
    )
    _save(fig, path)
    return fig


def plot_flows_grid(
    results: Sequence[FlowResult],
    titles: Sequence[str] | None = None,
    *,
    target: LabeledDataset | Sequence[LabeledDataset | None] | None = None,
    dims: Sequence[int] | None = None,
    ncols: int | None = None,
    trajectories: bool = True,
    max_paths: int = 200,
    share_limits: bool = True,
    suptitle: str | None = None,
    panel_size: float = 3.6,
    view: Sequence[float] | None = None,
    path: str | Path | None = None,
) -> Figure:
    """One :func:`plot_flow` panel per result, side by side (paper Figs. 7, 8, 12).

    Args:
        results: the flows to compare (each with a trajectory).
        titles: one title per result.
        target: one target drawn in every panel, or one target (or None) per result.
        dims: the 2 or 3 plotted coordinates (the same for every panel).
        ncols: panels per row (default all in one row up to 4).
        trajectories, max_paths: as in :func:`plot_flow`.
        share_limits: use the same axis limits in every panel.
        suptitle: a title over the whole figure.
        panel_size: size of one panel in inches.
        view: ``(elev, azim)`` camera angles in degrees for 3-D panels.
        path: save the figure there; parent folders are created.

    Returns:
        The :class:`matplotlib.figure.Figure`.

    Raises:
        InvalidArgumentError: no results, lengths that disagree, a result without a
            trajectory, results of different feature dimensions, or matplotlib is missing.
    """
    Figure = _matplotlib()
    results = list(results) if not isinstance(results, FlowResult) else [results]
    if not results:
        raise InvalidArgumentError("results must hold at least one FlowResult.")
    for k, res in enumerate(results):
        _check_result(res, f"results[{k}]")
    if titles is not None and len(titles) != len(results):
        raise InvalidArgumentError(f"titles has {len(titles)} entries for {len(results)} results.")
    if target is None or isinstance(target, LabeledDataset):
        targets = [target] * len(results)
    else:
        targets = list(target)
        if len(targets) != len(results):
            raise InvalidArgumentError(f"target has {len(targets)} entries for {len(results)} results.")
    if ncols is not None and (isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1):
        raise InvalidArgumentError(f"ncols must be a positive int or None, got {ncols!r}.")
    stacks = [_trajectory(res, "plot_flows_grid")[0] for res in results]
    dim = stacks[0].shape[-1]
    if any(s.shape[-1] != dim for s in stacks):
        raise InvalidArgumentError(
            f"results must share one feature dimension, got {sorted({s.shape[-1] for s in stacks})}."
        )
    chosen = _resolve_dims(dim, dims)
    three_d = len(chosen) == 3
    target_views = [_target_view(t, chosen, dim, res.classes) for t, res in zip(targets, results, strict=True)]
    camera = _check_view(view, three_d)
    limits = None
    if share_limits:
        limits = _limits([s[..., list(chosen)] for s in stacks] + [t.points for t in target_views if t is not None])
    cols = ncols or min(len(results), 4)
    rows = -(-len(results) // cols)
    fig = Figure(figsize=(panel_size * cols, panel_size * rows * (1.0 if three_d else 0.95)))
    for k, res in enumerate(results):
        ax = _new_axes(fig, three_d, rows, cols, k + 1)
        _draw_flow(
            ax,
            res,
            chosen,
            trajectories=trajectories,
            max_paths=int(max_paths),
            target=target_views[k],
            limits=limits,
            legend=True,
            title=None if titles is None else titles[k],
            view=camera,
        )
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return fig


def animate_flow(
    result: FlowResult,
    path: str | Path,
    *,
    fps: int = 10,
    dims: Sequence[int] | None = None,
    target: LabeledDataset | None = None,
    title: str | None = None,
    show_start: bool = True,
    view: Sequence[float] | None = None,
    dpi: int = 80,
) -> Figure:
    """A GIF of the flow, one frame per trajectory record, particles coloured by that record's labels.

    Uses :class:`matplotlib.animation.FuncAnimation` with :class:`~matplotlib.animation.PillowWriter`.
    Labels are taken per record, so re-clustered classes (jd-vl) change colour as they change.
    The axis limits are fixed over the whole flow; each frame's title shows its step.

    Args:
        result: a :class:`FlowResult` with a trajectory.
        path: the ``.gif`` file to write; parent folders are created.
        fps: frames per second.
        dims: the 2 or 3 plotted coordinates.
        target: a target :class:`LabeledDataset`, drawn as in :func:`plot_flow` (coloured by class).
        title: text before the step counter in each frame's title.
        show_start: draw the initial particles faintly in every frame.
        view: ``(elev, azim)`` camera angles in degrees for 3-D plots.
        dpi: resolution of the frames.

    Returns:
        The :class:`matplotlib.figure.Figure` (showing the last frame).

    Raises:
        InvalidArgumentError: no trajectory, ``path`` not ending in ``.gif``, invalid ``fps`` or
            ``dims``, or matplotlib is missing.
    """
    Figure = _matplotlib()
    from matplotlib.animation import FuncAnimation, PillowWriter

    out = Path(path)
    if out.suffix.lower() != ".gif":
        raise InvalidArgumentError(f"path must end in '.gif', got {str(path)!r}.")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise InvalidArgumentError(f"fps must be a positive number, got {fps!r}.")
    positions, labels, steps = _trajectory(result, "animate_flow")
    dim = positions.shape[-1]
    chosen = _resolve_dims(dim, dims)
    three_d = len(chosen) == 3
    pos = positions[..., list(chosen)]
    target_view = _target_view(target, chosen, dim, result.classes)
    camera = _check_view(view, three_d)
    limits = _limits([pos] + ([target_view.points] if target_view is not None else []))
    size = _marker_size(pos.shape[1])
    fig = Figure(figsize=(5.4, 4.8) if three_d else (4.6, 4.4))
    ax = _new_axes(fig, three_d)
    extra = ([("start", _START_STYLE)] if show_start else []) + (
        list(target_view.legend) if target_view is not None else []
    )

    def draw(k: int) -> list:
        ax.cla()
        if target_view is not None:
            _draw_target(ax, target_view, size, alpha=0.6)
        if show_start and k > 0:
            _scatter(ax, pos[0], _colors(labels[0]), s=size, alpha=0.15, linewidths=0)
        _scatter(ax, pos[k], _colors(labels[k]), s=size, alpha=0.9, edgecolors="white", linewidths=0.3)
        _apply_limits(ax, limits, chosen, camera)
        ax.set_title(f"{title + '   ' if title else ''}step {steps[k]}", fontsize=9)
        _legend(ax, labels[k], result.classes, extra)
        return []

    out.parent.mkdir(parents=True, exist_ok=True)
    anim = FuncAnimation(fig, draw, frames=len(steps), init_func=lambda: [], blit=False, repeat=False)
    anim.save(out, writer=PillowWriter(fps=fps), dpi=dpi)
    return fig


def _image_layout(shape: tuple[int, ...]) -> str:
    """``"hw"``, ``"hwc"`` or ``"chw"`` for one sample's shape, or a clear error."""
    if len(shape) == 2:
        return "hw"
    if len(shape) == 3:
        if shape[0] in (1, 3) and shape[-1] not in (1, 3):
            return "chw"
        if shape[-1] in (1, 3, 4):
            return "hwc"
        if shape[0] in (1, 3, 4):
            return "chw"
    raise InvalidArgumentError(
        f"image_grid needs image features: feature_shape (H, W), (H, W, C) or (C, H, W) with C in (1, 3, 4); "
        f"got {shape}."
    )


def _to_rgb(images: np.ndarray, layout: str) -> np.ndarray:
    """``(m, H, W, 3)`` images in [0, 1]."""
    if layout == "chw":
        images = images.transpose(0, 2, 3, 1)
    if layout == "hw":
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 4:
        images = images[..., :3]
    return np.clip(images, 0.0, 1.0)


def _record_indices(records: int | Sequence[int] | None, count: int, max_columns: int) -> list[int]:
    if records is None or isinstance(records, (int, np.integer)) and not isinstance(records, bool):
        k = min(count, max_columns) if records is None else int(records)
        if k < 1:
            raise InvalidArgumentError(f"records must be a positive int, a sequence of ints or None, got {records!r}.")
        k = min(k, count)
        return sorted(set(np.linspace(0, count - 1, k).round().astype(int).tolist()))
    try:
        chosen = [int(r) for r in records]
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"records must be an int, a sequence of ints or None, got {records!r}.") from None
    if not chosen or any(not -count <= r < count for r in chosen):
        raise InvalidArgumentError(f"records must index the {count} trajectory records, got {records!r}.")
    return [r % count for r in chosen]


#: Image grids: resolution, smallest tile (in output pixels) and the largest figure side (pixels).
_GRID_DPI = 100
_GRID_MIN_TILE_PX = 56
_GRID_MAX_SIDE_PX = 6000
_GRID_FONT = 8.0  # points


def _class_blocks(group_rows: list[int], tile_rows: int, tile_cols: int) -> list[list[int]]:
    """Split consecutive class groups (``group_rows[g]`` rows each) into side-by-side blocks so that
    the mosaic is about as high as it is wide: ``k ~ sqrt(height / width)`` blocks of about equal height."""
    total = sum(group_rows)
    k = int(np.clip(round(math.sqrt(total * tile_rows / max(tile_cols, 1))), 1, len(group_rows)))
    blocks: list[list[int]] = [[] for _ in range(k)]
    done = 0
    for g, rows in enumerate(group_rows):  # greedy: move on once a block holds its share of the rows
        b = min(k - 1, int(done * k // total))
        blocks[b].append(g)
        done += rows
    return [b for b in blocks if b]


def _step_labels(steps: list[str], spacing_px: float) -> list[str]:
    """Column labels, thinned (every ``k``-th shown, the last one kept) so that none overlaps the next."""
    width_px = 0.62 * _GRID_FONT * _GRID_DPI / 72 * max(len(t) for t in steps) + 6  # text width + a gap
    every = max(1, math.ceil(width_px / spacing_px))
    shown = list(range(0, len(steps), every))
    last = len(steps) - 1
    if last - shown[-1] >= every:
        shown.append(last)
    elif shown[-1] != last and len(shown) > 1:
        shown[-1] = last
    return [t if j in shown else "" for j, t in enumerate(steps)]


def image_grid(
    result: FlowResult,
    *,
    path: str | Path | None = None,
    per_class: int = 8,
    records: int | Sequence[int] | None = None,
    max_columns: int = 10,
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """Image particles over time: one row per sampled particle, one column per trajectory record.

    Rows are grouped by the particles' final labels (``per_class`` sampled per class with a
    seeded generator); pixel values are clipped to [0, 1] for display. Every image pixel is drawn
    as a square of ``z x z`` output pixels (at 100 dpi), with the integer zoom ``z`` chosen so that a
    tile is at least 56 pixels wide (smaller if the figure would exceed 6000 pixels), so the figure
    grows with the number of rows and columns instead of shrinking the images. Many rows are split
    into side-by-side blocks of whole classes (one axes each) to keep the figure roughly square; step
    labels are thinned when they would overlap.

    Args:
        result: a :class:`FlowResult` with a trajectory, whose ``feature_shape`` is ``(H, W)``,
            ``(H, W, C)`` or ``(C, H, W)`` with ``C`` in (1, 3, 4).
        path: save the figure there (at 100 dpi); parent folders are created.
        per_class: particles shown per class (fewer when a class is smaller).
        records: None (up to ``max_columns`` records evenly spaced, first and last included), a
            number of evenly spaced records, or a sequence of record indices.
        max_columns: the column cap when ``records`` is None.
        seed: seed of the particle sampling.
        title: figure title.

    Returns:
        The :class:`matplotlib.figure.Figure`.

    Raises:
        InvalidArgumentError: no trajectory, non-image features, invalid ``per_class`` or
            ``records``, or matplotlib is missing.
    """
    Figure = _matplotlib()
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise InvalidArgumentError(f"per_class must be a positive int, got {per_class!r}.")
    positions, labels, steps = _trajectory(result, "image_grid")
    shape = tuple(result.trajectory.feature_shape)
    layout = _image_layout(shape)
    cols = _record_indices(records, len(steps), max_columns)
    gen = torch.Generator().manual_seed(int(seed))
    final = labels[-1]
    groups: list[tuple[int, list[int]]] = []  # (class index, sampled particle indices) per class
    for c in np.unique(final).tolist():
        members = np.flatnonzero(final == c)
        pick = members[torch.randperm(len(members), generator=gen)[:per_class].numpy()]
        groups.append((c, sorted(pick.tolist())))
    height, width = (shape[0], shape[1]) if layout != "chw" else (shape[1], shape[2])
    pad = max(1, min(height, width) // 8)
    blocks = _class_blocks([len(rows) for _, rows in groups], height + pad, len(cols) * (width + pad))
    block_rows = [sum(len(groups[g][1]) for g in block) for block in blocks]
    mosaic_w = len(cols) * (width + pad) - pad
    mosaic_h = [r * (height + pad) - pad for r in block_rows]
    zoom = max(1, math.ceil(_GRID_MIN_TILE_PX / max(height, width)))
    longest = max(max(mosaic_h), len(blocks) * mosaic_w)
    zoom = max(1, min(zoom, _GRID_MAX_SIDE_PX // max(longest, 1)))
    # margins in inches: class names and the y label on the left of each block, steps below, title above
    left, gap, right, bottom = 0.85, 0.55, 0.15, 0.55
    top = 0.45 if title else 0.15
    block_w = mosaic_w * zoom / _GRID_DPI
    heights = [h * zoom / _GRID_DPI for h in mosaic_h]
    fig_w = left + len(blocks) * block_w + (len(blocks) - 1) * gap + right
    fig_h = top + max(heights) + bottom
    fig = Figure(figsize=(fig_w, fig_h), dpi=_GRID_DPI)
    step_text = _step_labels([str(steps[r]) for r in cols], (width + pad) * zoom)
    for b, block in enumerate(blocks):
        rows = [i for g in block for i in groups[g][1]]
        mosaic = np.ones((mosaic_h[b], mosaic_w, 3))
        for j, r in enumerate(cols):
            tiles = _to_rgb(positions[r, rows].reshape(len(rows), *shape), layout)
            for i, tile in enumerate(tiles):
                top_px, left_px = i * (height + pad), j * (width + pad)
                mosaic[top_px : top_px + height, left_px : left_px + width] = tile
        x0 = left + b * (block_w + gap)
        y0 = fig_h - top - heights[b]
        ax = fig.add_axes((x0 / fig_w, y0 / fig_h, block_w / fig_w, heights[b] / fig_h))
        ax.imshow(mosaic, interpolation="nearest", vmin=0.0, vmax=1.0, aspect="equal")
        ax.set_xticks([j * (width + pad) + width / 2 for j in range(len(cols))])
        ax.set_xticklabels(step_text, fontsize=_GRID_FONT)
        ax.set_xlabel("step", fontsize=_GRID_FONT + 1)
        firsts, row = [], 0
        for g in block:
            firsts.append((row, groups[g][0]))
            row += len(groups[g][1])
        ax.set_yticks([i * (height + pad) + height / 2 for i, _ in firsts])
        ax.set_yticklabels([_name(result.classes, c) for _, c in firsts], fontsize=_GRID_FONT)
        if b == 0:
            ax.set_ylabel("class (final label)", fontsize=_GRID_FONT + 1)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=_GRID_FONT + 2, y=1 - 0.12 / fig_h, va="top")
    _save(fig, path, dpi=_GRID_DPI)
    return fig


def _set_scale(ax: Axes, curves: Sequence[np.ndarray], log: bool) -> None:
    """Log scale when every value is positive; symlog when some are not (e.g. repulsion terms)."""
    if not log:
        return
    values = np.concatenate([c[np.isfinite(c)] for c in curves]) if curves else np.zeros(0)
    if values.size and (values > 0).all():
        ax.set_yscale("log")
    elif values.size:
        nonzero = np.abs(values[values != 0])
        ax.set_yscale("symlog", linthresh=float(nonzero.min()) if nonzero.size else 1.0)


def plot_objective(
    result_or_results: FlowResult | Sequence[FlowResult],
    *,
    path: str | Path | None = None,
    log: bool = True,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Objective value against step for one or several flows, plus per-term curves.

    A second panel shows every weighted term (``result.terms``) when some flow has more than
    one term; its colour is the flow's, its line style the term's.

    Args:
        result_or_results: one :class:`FlowResult` or a sequence of them.
        path: save the figure there; parent folders are created.
        log: logarithmic value axis (symmetric-log when some value is not positive).
        labels: one legend label per flow (default ``"objective"`` for one flow, else
            ``"flow k"``).
        title: title of the objective panel.

    Returns:
        The :class:`matplotlib.figure.Figure`.

    Raises:
        InvalidArgumentError: no results, a non-result, ``labels`` of the wrong length, or
            matplotlib is missing.
    """
    Figure = _matplotlib()
    results = [result_or_results] if isinstance(result_or_results, FlowResult) else list(result_or_results)
    if not results:
        raise InvalidArgumentError("result_or_results must hold at least one FlowResult.")
    for k, res in enumerate(results):
        _check_result(res, f"results[{k}]")
    if labels is None:
        labels = ["objective"] if len(results) == 1 else [f"flow {k}" for k in range(len(results))]
    elif len(labels) != len(results):
        raise InvalidArgumentError(f"labels has {len(labels)} entries for {len(results)} results.")
    with_terms = any(len(res.terms) > 1 for res in results)
    fig = Figure(figsize=(10.0 if with_terms else 5.5, 4.0))
    ax = fig.add_subplot(1, 2 if with_terms else 1, 1)
    curves = []
    for k, (res, label) in enumerate(zip(results, labels, strict=True)):
        values = np.asarray(res.objective, dtype=np.float64)
        curves.append(values)
        ax.plot(np.arange(len(values)), values, color=label_color(k), linewidth=1.4, label=str(label))
    _set_scale(ax, curves, log)
    ax.set_xlabel("step")
    ax.set_ylabel("objective")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    if with_terms:
        styles = ("-", "--", ":", "-.")
        term_ax = fig.add_subplot(1, 2, 2)
        term_curves = []
        for k, (res, label) in enumerate(zip(results, labels, strict=True)):
            for t, (name, values) in enumerate(res.terms.items()):
                arr = np.asarray(values, dtype=np.float64)
                term_curves.append(arr)
                text = name if len(results) == 1 else f"{label}: {name}"
                term_ax.plot(
                    np.arange(len(arr)), arr, color=label_color(k), linestyle=styles[t % 4], linewidth=1.2, label=text
                )
        _set_scale(term_ax, term_curves, log)
        term_ax.set_xlabel("step")
        term_ax.set_ylabel("weighted term")
        term_ax.grid(alpha=0.3)
        term_ax.legend(fontsize=7)
        term_ax.set_title("terms", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return fig
