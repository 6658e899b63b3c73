"""Tests of datasetflow.viz: every function writes a real PNG / GIF, 2-D and 3-D, and fails clearly."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("matplotlib")
PIL_Image = pytest.importorskip("PIL.Image")

from datasetflow import LabeledDataset, ball_constraint, otdd_to, run_flow  # noqa: E402
from datasetflow.errors import DatasetflowWarning, InvalidArgumentError  # noqa: E402
from datasetflow.viz import (  # noqa: E402
    animate_flow,
    image_grid,
    label_color,
    plot_flow,
    plot_flows_grid,
    plot_objective,
    scatter_particles,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def blobs(means, per_class: int, seed: int, std: float = 0.5) -> LabeledDataset:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.as_tensor(means, dtype=torch.float64)
    x = centres.repeat_interleave(per_class, 0) + std * torch.randn(
        len(centres) * per_class, centres.shape[1], generator=gen, dtype=torch.float64
    )
    return LabeledDataset(x, torch.arange(len(centres)).repeat_interleave(per_class))


def assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


def assert_gif(path, frames: int) -> None:
    assert path.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    with PIL_Image.open(path) as image:
        assert image.n_frames == frames


@pytest.fixture(scope="module")
def pair_2d():
    return blobs([[-3, 1], [-3, -1], [-1, 0]], 10, seed=0), blobs([[3, 1], [3, -1]], 15, seed=1)


@pytest.fixture(scope="module")
def flow_2d(pair_2d):
    source, target = pair_2d
    functional = otdd_to(target, outer="exact") + 0.5 * ball_constraint(center=[0.0, 0.0], radius=3.0)
    return run_flow(functional, source, dynamics="fd-fl", step_size=0.2, steps=6, record_every=2)


@pytest.fixture(scope="module")
def flow_3d():
    source, target = blobs([[0, 0, 0], [2, 2, 2]], 10, seed=2), blobs([[4, 0, 0], [0, 4, 0]], 10, seed=3)
    return run_flow(otdd_to(target, outer="exact"), source, step_size=0.2, steps=4, record_every=2), target


@pytest.fixture(scope="module")
def flow_images():
    """A tiny 4x4 'image' dataset flowing to another one."""
    gen = torch.Generator().manual_seed(4)
    source = LabeledDataset(torch.rand(16, 4, 4, generator=gen, dtype=torch.float64), [0] * 8 + [1] * 8)
    target = LabeledDataset(0.5 + 0.5 * torch.rand(16, 4, 4, generator=gen, dtype=torch.float64), [0] * 8 + [1] * 8)
    return run_flow(otdd_to(target, outer="exact"), source, step_size=0.3, steps=4, record_every=1)


# ------------------------------------------------------------------------------ scatter
@pytest.mark.fast
def test_scatter_particles_2d_and_3d(tmp_path, pair_2d, flow_3d):
    source, _ = pair_2d
    fig = scatter_particles(source.x, source.y, title="source", path=tmp_path / "sub" / "scatter.png")
    assert_png(tmp_path / "sub" / "scatter.png")  # parent folder created
    assert fig.axes[0].get_title() == "source"
    fig3 = scatter_particles(flow_3d[1], path=tmp_path / "scatter3d.png")  # a LabeledDataset, 3 dims
    assert fig3.axes[0].name == "3d"
    assert_png(tmp_path / "scatter3d.png")


@pytest.mark.fast
def test_scatter_particles_into_given_axes_and_dims(pair_2d):
    from matplotlib.figure import Figure

    source, _ = pair_2d
    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert scatter_particles(source, ax=ax) is fig
    wide = torch.randn(20, 6, dtype=torch.float64)
    fig = scatter_particles(wide, torch.zeros(20, dtype=torch.long), dims=(4, 1))
    assert fig.axes[0].get_xlabel() == "x[4]" and fig.axes[0].get_ylabel() == "x[1]"
    with pytest.raises(InvalidArgumentError, match="3-D axes"):
        scatter_particles(wide, dims=(0, 1, 2), ax=Figure().add_subplot())
    with pytest.raises(InvalidArgumentError, match="dims"):
        scatter_particles(wide, dims=(0, 9))
    with pytest.raises(InvalidArgumentError, match=r"y must have shape \(20,\)"):
        scatter_particles(wide, torch.zeros(3))


@pytest.mark.fast
def test_label_colours_are_stable_per_index():
    assert label_color(0) == "#1f77b4" and label_color(3) == "#d62728"
    assert label_color(23) == label_color(3)
    assert len({label_color(k) for k in range(20)}) == 20
    with pytest.raises(InvalidArgumentError):
        label_color(-1)


# ------------------------------------------------------------------------------ flows
@pytest.mark.fast
def test_plot_flow_2d_with_target(tmp_path, flow_2d, pair_2d):
    fig = plot_flow(flow_2d, target=pair_2d[1], title="flow", path=tmp_path / "flow.png")
    assert_png(tmp_path / "flow.png")
    ax = fig.axes[0]
    assert ax.name != "3d" and len(ax.collections) >= 4  # start, paths, final, target
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["0", "1", "2", "start", "target"]


@pytest.mark.fast
def test_plot_flow_3d_and_high_dimension(tmp_path, flow_3d):
    result, target = flow_3d
    fig = plot_flow(result, target=target, view=(20, 30), path=tmp_path / "flow3d.png")
    assert fig.axes[0].name == "3d"
    assert_png(tmp_path / "flow3d.png")
    fig = plot_flow(result, dims=(2, 0), trajectories=False)
    assert fig.axes[0].name != "3d"
    with pytest.warns(DatasetflowWarning, match="3-D plots only"):
        plot_flow(result, dims=(0, 1), view=(10, 10))
    with pytest.raises(InvalidArgumentError, match="feature dimension"):
        plot_flow(result, target=blobs([[0, 0]], 3, seed=0))


@pytest.mark.fast
def test_plot_flows_grid(tmp_path, flow_2d, pair_2d):
    fig = plot_flows_grid(
        [flow_2d, flow_2d, flow_2d], ["a", "b", "c"], target=pair_2d[1], ncols=2, path=tmp_path / "grid.png"
    )
    assert_png(tmp_path / "grid.png")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["a", "b", "c"]
    assert panels[0].get_xlim() == panels[2].get_xlim()  # shared limits
    with pytest.raises(InvalidArgumentError, match="titles has 1 entries for 2 results"):
        plot_flows_grid([flow_2d, flow_2d], ["a"])
    with pytest.raises(InvalidArgumentError, match="at least one"):
        plot_flows_grid([])


@pytest.mark.fast
def test_animate_flow_writes_one_frame_per_record(tmp_path, flow_2d, pair_2d, flow_3d):
    path = tmp_path / "anim" / "flow.gif"
    animate_flow(flow_2d, path, fps=5, target=pair_2d[1], title="flow")
    assert_gif(path, len(flow_2d.trajectory))
    result, target = flow_3d
    animate_flow(result, tmp_path / "flow3d.gif", target=target)
    assert_gif(tmp_path / "flow3d.gif", len(result.trajectory))
    with pytest.raises(InvalidArgumentError, match=r"\.gif"):
        animate_flow(flow_2d, tmp_path / "flow.mp4")
    with pytest.raises(InvalidArgumentError, match="fps"):
        animate_flow(flow_2d, tmp_path / "flow.gif", fps=0)


@pytest.mark.fast
def test_animate_flow_follows_changing_labels(tmp_path, pair_2d):
    """Under jd-vl the labels are re-clustered; every record is a frame with its own labels."""
    pytest.importorskip("sklearn")
    source, target = pair_2d
    result = run_flow(
        otdd_to(target, outer="exact"),
        source,
        dynamics="jd-vl",
        step_size=0.3,
        steps=6,
        record_every=1,
        dynamics_options={"clustering": "kmeans", "n_clusters": 2, "recluster_every": 3},
    )
    _, labels = result.trajectory.stacked()
    assert len(torch.unique(labels[0])) == 3 and len(torch.unique(labels[-1])) == 2
    animate_flow(result, tmp_path / "jdvl.gif", target=target)
    assert_gif(tmp_path / "jdvl.gif", len(result.trajectory))


# ------------------------------------------------------------------------------ images
@pytest.mark.fast
def test_image_grid_on_tiny_images(tmp_path, flow_images):
    fig = image_grid(flow_images, per_class=3, path=tmp_path / "images.png")
    assert_png(tmp_path / "images.png")
    ax = fig.axes[0]
    image = ax.get_images()[0].get_array()
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert len(ax.get_xticks()) == len(flow_images.trajectory)  # 5 records <= 10 columns
    assert image.shape[0] == 6 * 4 + 5 * 1  # 2 classes x 3 rows of 4 pixels, 1-pixel gaps
    fig = image_grid(flow_images, per_class=2, records=[0, -1])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "4"]
    with pytest.raises(InvalidArgumentError, match="records"):
        image_grid(flow_images, records=[7])
    with pytest.raises(InvalidArgumentError, match="per_class"):
        image_grid(flow_images, per_class=0)


@pytest.mark.fast
@pytest.mark.parametrize("shape", [(3, 4, 5), (4, 5, 3), (4, 5)])
def test_image_grid_channel_layouts(shape):
    """Channels-first, channels-last and grey images; a red image shows red, clipped to [0, 1]."""
    from datasetflow.flows import FlowResult, Trajectory

    images = torch.zeros(2, *shape, dtype=torch.float64)
    if len(shape) == 2:
        images += 2.0  # out of range: clipped to white
    elif shape[0] == 3:
        images[:, 0] = 1.0
    else:
        images[..., 0] = 1.0
    x = images.reshape(2, -1)
    trajectory = Trajectory(steps=(0, 1), feature_shape=shape, positions=(x, x), labels=(torch.tensor([0, 1]),) * 2)
    final = LabeledDataset(images, [0, 1])
    result = FlowResult(final, [], {}, 1, "steps", trajectory, [], final.classes, 0.0)
    mosaic = image_grid(result, per_class=1).axes[0].get_images()[0].get_array()
    assert mosaic.shape == (2 * 4 + 1, 2 * 5 + 1, 3)
    tile = mosaic[:4, :5]
    expected = [1.0, 1.0, 1.0] if len(shape) == 2 else [1.0, 0.0, 0.0]
    assert (tile.reshape(-1, 3) == torch.tensor(expected).numpy()).all()


@pytest.mark.fast
def test_image_grid_rejects_non_images(flow_2d):
    with pytest.raises(InvalidArgumentError, match="feature_shape"):
        image_grid(flow_2d)


# ------------------------------------------------------------------------------ objective
@pytest.mark.fast
def test_plot_objective_single_and_several(tmp_path, flow_2d, flow_3d):
    fig = plot_objective(flow_2d, path=tmp_path / "objective.png")
    assert_png(tmp_path / "objective.png")
    assert len(fig.axes) == 2  # otdd + ball: a terms panel
    assert fig.axes[0].get_yscale() == "log"
    fig = plot_objective([flow_3d[0], flow_3d[0]], labels=["a", "b"], log=False)
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "linear"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b"]
    with pytest.raises(InvalidArgumentError, match="labels has 1 entries"):
        plot_objective([flow_2d, flow_2d], labels=["a"])


# ------------------------------------------------------------------------------ errors
@pytest.mark.fast
def test_missing_trajectory_is_a_clear_error(tmp_path, pair_2d):
    source, target = pair_2d
    result = run_flow(otdd_to(target, outer="exact"), source, steps=2)  # no record_every
    assert result.trajectory is None
    for call in (
        lambda: plot_flow(result),
        lambda: plot_flows_grid([result]),
        lambda: animate_flow(result, tmp_path / "x.gif"),
        lambda: image_grid(result),
    ):
        with pytest.raises(InvalidArgumentError, match="record_every"):
            call()
    plot_objective(result)  # the objective needs no trajectory
    with pytest.raises(InvalidArgumentError, match="FlowResult"):
        plot_flow(source)


@pytest.mark.fast
def test_missing_matplotlib_names_the_extra(monkeypatch, pair_2d):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(InvalidArgumentError, match=r"pip install 'datasetflow\[viz\]'"):
        scatter_particles(pair_2d[0])


@pytest.mark.fast
def test_viz_is_lazy_and_leaves_matplotlib_state_alone():
    """Importing datasetflow.viz loads no matplotlib; plotting uses no pyplot and changes no rcParams."""
    code = (
        "import sys, torch\n"
        "import datasetflow.viz as viz\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'\n"
        "import matplotlib\n"
        "def params():  # reading 'backend' would resolve it (and import pyplot)\n"
        "    return {k: matplotlib.rcParams[k] for k in matplotlib.rcParams if k != 'backend'}\n"
        "before = params()\n"
        "viz.scatter_particles(torch.randn(10, 3), torch.arange(10) % 2)\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert params() == before, 'rcParams changed'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""  # the library prints nothing


@pytest.mark.fast
def test_plots_emit_no_warnings(flow_2d, pair_2d):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_flow(flow_2d, target=pair_2d[1])
        plot_flows_grid([flow_2d, flow_2d], target=pair_2d[1])
