"""Heat maps of pairwise dataset distances (``datasetflow distance-matrix --out``) and scatter plots of
one distance against another (the distance-correlation experiment).

matplotlib is imported inside the functions (the ``viz`` extra), through its object-oriented API only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, ShapeMismatchError
from .plots import _matplotlib, _save

__all__ = ["plot_distance_matrix", "plot_distance_scatter"]


#: Resolution of the matrix figures (the flow figures use their own, larger, pixel scale).
_MATRIX_DPI = 120


def plot_distance_matrix(
    matrix: Any, names: Sequence[str], *, title: str | None = None, path: str | Path | None = None
) -> Any:
    """A heat map of an ``(N, N)`` distance matrix with the dataset names on both axes and the values written
    in the cells (up to 12 datasets). Returns the figure; saves it when ``path`` is given."""
    values = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=float)
    if values.ndim != 2 or values.shape[0] != values.shape[1] or values.shape[0] != len(names):
        raise ShapeMismatchError(f"matrix must be (N, N) with N = len(names) = {len(names)}, got {values.shape}.")
    n = values.shape[0]
    fig = _matplotlib()(figsize=(1.2 + 0.7 * n, 0.9 + 0.6 * n))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, cmap="viridis")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), [str(s) for s in names], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), [str(s) for s in names], fontsize=8)
    if n <= 12:
        top = np.nanmax(values) if values.size else 0.0
        for i in range(n):
            for j in range(n):
                color = "black" if values[i, j] > 0.6 * top else "white"
                ax.text(j, i, f"{values[i, j]:.3g}", ha="center", va="center", fontsize=7, color=color)
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, path, dpi=_MATRIX_DPI)
    return fig


def plot_distance_scatter(
    panels: Sequence[dict[str, Any]], *, xlabel: str, path: str | Path | None = None, columns: int = 3
) -> Any:
    """One scatter panel per entry of ``panels`` (``x``, ``y``, ``title``, optional ``ylabel``): a distance
    against a reference distance. Returns the figure; saves it when ``path`` is given."""
    if not panels:
        raise InvalidArgumentError("plot_distance_scatter needs at least one panel.")
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    fig = _matplotlib()(figsize=(3.2 * columns, 2.8 * rows))
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.scatter(np.asarray(panel["x"]), np.asarray(panel["y"]), s=8, alpha=0.7)
        ax.set_title(panel["title"], fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(panel.get("ylabel", ""), fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    _save(fig, path, dpi=_MATRIX_DPI)
    return fig
