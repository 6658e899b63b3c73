"""Tests of datasetflow.viz: every function writes a real PNG / GIF, 2-D and 3-D, and fails clearly."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
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


def render(fig):
    """Draw ``fig`` on an Agg canvas (as savefig does); returns the renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def image_flow(num_classes: int, per_class: int, shape=(28, 28), steps=tuple(range(0, 21, 2)), seed: int = 5):
    """A FlowResult of random images with a recorded trajectory (no flow needed to test layouts)."""
    from datasetflow.flows import FlowResult, Trajectory

    gen = torch.Generator().manual_seed(seed)
    n = num_classes * per_class
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    positions = tuple(torch.rand(n, int(np.prod(shape)), generator=gen, dtype=torch.float64) for _ in steps)
    trajectory = Trajectory(
        steps=tuple(steps), feature_shape=tuple(shape), positions=positions, labels=(labels,) * len(steps)
    )
    final = LabeledDataset(positions[-1].reshape(n, *shape), labels)
    return FlowResult(final, [], {}, steps[-1], "steps", trajectory, [], final.classes, 0.0)


def visible_label_boxes(labels, renderer):
    return [t.get_window_extent(renderer) for t in labels if t.get_text() and t.get_visible()]


def target_collections(ax):
    return [c for c in ax.collections if c.get_gid() == "target"]


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
def test_plot_flow_colours_target_classes_like_the_flow_classes_of_the_same_name(flow_2d, pair_2d):
    """Target classes 0 and 1 share the names of flow classes 0 and 1: their crosses take those colours."""
    target = pair_2d[1]
    ax = plot_flow(flow_2d, target=target).axes[0]
    (layer,) = target_collections(ax)
    from matplotlib.colors import to_rgba_array

    expected = to_rgba_array([label_color(flow_2d.classes.index(name)) for name in target.labels])[:, :3]
    np.testing.assert_allclose(layer.get_edgecolor()[:, :3], expected)
    np.testing.assert_allclose(layer.get_offsets(), target.x.numpy())


@pytest.mark.fast
def test_plot_flow_gives_unmatched_target_classes_their_own_colours_and_legend(flow_2d, pair_2d):
    """Target classes named like no flow class get distinct colours (not the flow's), a '+' marker and
    one legend entry each; a class named like a flow class keeps that class's colour."""
    from matplotlib.colors import to_rgba_array

    base = pair_2d[1]
    target = LabeledDataset(base.x, ["cat" if k == 0 else "2" for k in base.y.tolist()])  # "2" names flow class 2
    fig = plot_flow(flow_2d, target=target)
    ax = fig.axes[0]
    layers = target_collections(ax)
    assert len(layers) == 2
    colours = {tuple(np.round(c[:3], 6)) for layer in layers for c in layer.get_edgecolor()}
    assert len(colours) == 2  # one per target class
    flow_colours = {tuple(np.round(c, 6)) for c in to_rgba_array([label_color(k) for k in range(3)])[:, :3]}
    assert len(colours & flow_colours) == 1  # class 2 matches flow class 2; "cat" has a colour of its own
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["0", "1", "2", "start", "target", "target cat"]
    render(fig)  # draws without error


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
def test_image_grid_of_many_digits_is_readable(tmp_path):
    """10 classes x 8 rows of 28x28 images over 11 records (what `datasetflow flow` draws): every image
    pixel covers at least 2x2 output pixels, the classes are split into side-by-side blocks so that the
    figure stays roughly square, every sampled row is drawn once, and no two step labels overlap."""
    result = image_flow(10, 8)
    fig = image_grid(result, per_class=8, path=tmp_path / "images.png")
    renderer = render(fig)
    axes = fig.axes
    assert len(axes) > 1
    rows = 0
    for ax in axes:
        mosaic = ax.get_images()[0].get_array()
        rows += (mosaic.shape[0] + 3) // (28 + 3)  # 3-pixel gaps between rows
        box = ax.get_window_extent(renderer)
        assert box.width / mosaic.shape[1] >= 2 - 1e-6 and box.height / mosaic.shape[0] >= 2 - 1e-6
        labels = visible_label_boxes(ax.get_xticklabels(), renderer)
        assert len(labels) == 10  # 10 records shown, every one labelled
        assert all(a.x1 < b.x0 for a, b in zip(labels, labels[1:], strict=False))
        assert [t.get_text() for t in ax.get_xticklabels()][-1] == "20"
    assert rows == 80
    boxes = [ax.get_window_extent(renderer) for ax in axes]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:], strict=False))  # blocks side by side
    with PIL_Image.open(tmp_path / "images.png") as png:
        width, height = png.size
    assert width >= 10 * 28 * 2 * len(axes) and 0.5 < width / height < 2.0


@pytest.mark.fast
def test_image_grid_thins_step_labels_that_would_overlap():
    """Long step numbers on many narrow columns: labels are thinned, first and last kept, none overlap."""
    steps = tuple(range(0, 4_000_000_001, 100_000_000))  # 41 records of up to 10-digit steps
    result = image_flow(2, 1, shape=(8, 8), steps=steps)
    fig = image_grid(result, records=len(steps))
    renderer = render(fig)
    texts = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert texts[0] == "0" and texts[-1] == "4000000000" and 2 < sum(map(bool, texts)) < len(steps)
    labels = visible_label_boxes(fig.axes[0].get_xticklabels(), renderer)
    assert all(a.x1 < b.x0 for a, b in zip(labels, labels[1:], strict=False))


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
def test_plots_render_without_warnings(tmp_path, flow_2d, pair_2d, flow_images):
    """Every figure is drawn (layout warnings only appear then) and saved with warnings as errors; each
    PNG decodes to the figure's size and holds a drawing (not a blank canvas)."""
    figures = {
        "flow": lambda p: plot_flow(flow_2d, target=pair_2d[1], path=p),
        "grid": lambda p: plot_flows_grid([flow_2d, flow_2d], ["a", "b"], target=pair_2d[1], path=p),
        "images": lambda p: image_grid(flow_images, per_class=2, title="images", path=p),
        "objective": lambda p: plot_objective(flow_2d, path=p),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, draw in figures.items():
            path = tmp_path / f"{name}.png"
            fig = draw(path)
            assert_png(path)
            with PIL_Image.open(path) as png:
                pixels = np.asarray(png.convert("L"), dtype=np.float64)
                width, height = png.size
            full = fig.get_size_inches() * fig.dpi
            assert width <= full[0] * 1.5 + 2 and height <= full[1] * 1.5 + 2, name  # tight bbox, not blown up
            assert min(width, height) >= 200, name
            assert pixels.std() > 10 and (pixels < 128).mean() > 0.005, name  # ink on the page
