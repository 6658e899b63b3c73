"""Plots and animations of labeled datasets and their flows (needs the ``viz`` extra).

matplotlib is imported inside the functions, never at ``import datasetflow`` time, and only
through its object-oriented API (:class:`matplotlib.figure.Figure`): no pyplot state, no
rcParams changes. Every function returns the figure and saves it when given a ``path``.
"""

from .matrix import plot_distance_matrix, plot_distance_scatter
from .plots import (
    animate_flow,
    image_grid,
    label_color,
    plot_flow,
    plot_flows_grid,
    plot_objective,
    scatter_particles,
)

__all__ = [
    "scatter_particles",
    "plot_flow",
    "plot_flows_grid",
    "animate_flow",
    "image_grid",
    "plot_objective",
    "label_color",
    "plot_distance_matrix",
    "plot_distance_scatter",
]
