"""Tests of ``datasetflow flow``: outputs, resume, YAML configs, errors and figures.

Tiny 2-D data (60 particles, exact outer OT, a few steps) keeps them fast.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("click.testing")
yaml = pytest.importorskip("yaml")

from conftest import invoke_cli, one_line_error  # noqa: E402
from datasetflow.cli import flow as cli_flow  # noqa: E402
from datasetflow.data import DATA_DIR_ENV, load_npz  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


invoke = invoke_cli


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.fixture
def blobs(tmp_path):
    """Source (classes a, b) and target (classes 0, 1) .npz files of 60 2-D points each."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    source = tmp_path / "source.npz"
    target = tmp_path / "target.npz"
    np.savez(source, x=np.concatenate([rng.normal(0, 1, (30, 2)), rng.normal(4, 1, (30, 2))]), y=y, classes=["a", "b"])
    np.savez(target, x=np.concatenate([rng.normal([-1, 5], 1, (30, 2)), rng.normal([5, 6], 1, (30, 2))]), y=y)
    return source, target


FAST = ("--outer", "exact", "--step-size", "0.5", "--no-figures")


# ---------------------------------------------------------------------- outputs
@pytest.mark.fast
def test_flow_writes_final_history_and_checkpoint(blobs, tmp_path):
    source, target = blobs
    out = tmp_path / "run"
    result = invoke("flow", source, target, "--steps", "6", "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert "objective" in result.stdout and "6 steps" in result.stdout

    with np.load(out / "final.npz", allow_pickle=False) as final:
        assert set(final.files) == {"x", "y", "classes"}
        assert final["x"].shape == (60, 2) and final["x"].dtype == np.float32
        assert final["y"].shape == (60,) and final["y"].dtype == np.int64
        assert final["classes"].dtype.kind == "U" and final["classes"].tolist() == ["a", "b"]
        assert np.array_equal(final["y"], np.repeat([0, 1], 30))
        assert not np.allclose(final["x"], np.load(source)["x"])  # the particles moved

    history = json.loads((out / "history.json").read_text())
    assert len(history["objective"]) == 6 and all(np.isfinite(history["objective"]))
    assert history["objective"][-1] < history["objective"][0]
    assert list(history["terms"]) == ["otdd"] and len(history["terms"]["otdd"]) == 6
    assert history["steps"] == 6 and history["stopped"] == "steps" and history["seconds"] > 0
    settings = history["settings"]
    assert settings["dynamics"] == "fd-fl" and settings["optimizer"] == "sgd" and settings["step_size"] == 0.5
    assert settings["checkpoint_every"] == 1  # max(1, steps // 10)
    assert settings["functional"] == [{"type": "otdd", "weight": 1.0, "outer": "exact"}]
    assert history["figures"] == [] and history["resumed_from"] is None
    assert (out / "checkpoint.pt").is_file()

    ds = load_npz(out / "final.npz")  # the output reads back as a labeled dataset
    assert len(ds) == 60 and ds.classes == ("a", "b")


@pytest.mark.fast
def test_resume_gives_the_same_result_as_an_uninterrupted_run(blobs, tmp_path):
    source, target = blobs
    common = (source, target, *FAST, "--optimizer", "momentum", "--noise", "0.01", "--seed", "7", "--quiet")
    assert invoke("flow", *common, "--steps", "10", "--out", tmp_path / "full").exit_code == 0
    first = invoke("flow", *common, "--steps", "5", "--out", tmp_path / "part", "--checkpoint-every", "2")
    assert first.exit_code == 0, first.stderr
    assert len(json.loads((tmp_path / "part" / "history.json").read_text())["objective"]) == 5
    resumed = invoke("flow", *common, "--steps", "10", "--out", tmp_path / "part", "--resume")
    assert resumed.exit_code == 0, resumed.stderr

    with np.load(tmp_path / "full" / "final.npz") as full, np.load(tmp_path / "part" / "final.npz") as part:
        for key in ("x", "y", "classes"):
            assert np.array_equal(full[key], part[key]), key
    history = json.loads((tmp_path / "part" / "history.json").read_text())
    reference = json.loads((tmp_path / "full" / "history.json").read_text())
    assert len(history["objective"]) == 10 and history["objective"] == reference["objective"]
    assert history["resumed_from"] == 5 and history["steps"] == 10


@pytest.mark.fast
def test_resume_refuses_changed_settings_and_a_checkpoint_past_steps(blobs, tmp_path):
    source, target = blobs
    out = tmp_path / "run"
    assert invoke("flow", source, target, "--steps", "4", "--out", out, *FAST, "-q").exit_code == 0
    line = one_line_error(
        invoke("flow", source, target, "--steps", "8", "--out", out, *FAST, "--seed", "1", "--resume")
    )
    assert "seed=1 (was 0)" in line
    line = one_line_error(invoke("flow", source, target, "--steps", "2", "--out", out, *FAST, "--resume"))
    assert "step 4" in line and "--steps 2" in line
    # a new run in the same directory is refused unless --overwrite, which replaces the old run
    line = one_line_error(invoke("flow", source, target, "--steps", "2", "--out", out, *FAST))
    assert "holds another run" in line and "--overwrite" in line and "--resume" in line
    assert (out / "checkpoint.pt").exists()
    replaced = invoke(
        "flow", source, target, "--steps", "2", "--out", out, *FAST, "--checkpoint-every", "0", "--overwrite"
    )
    assert replaced.exit_code == 0, replaced.stderr
    assert not (out / "checkpoint.pt").exists()
    assert "no checkpoint" in one_line_error(invoke("flow", source, target, "--steps", "4", "--out", out, "--resume"))


# ---------------------------------------------------------------------- configs
@pytest.mark.fast
def test_config_with_composed_functional_and_command_line_overrides(blobs, tmp_path):
    source, target = blobs
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    config = {
        "source": "../source.npz",  # relative to the config file
        "target": "../target.npz",
        "steps": 8,
        "step_size": 0.3,
        "optimizer": "adam",
        "dynamics": "fd-fl",
        "dynamics_options": {"label_gradient": False},
        "seed": 0,
        "figures": False,
        "functional": [
            {"type": "otdd", "weight": 1.0, "inner": "gaussian", "outer": "sinkhorn"},
            {"type": "ball", "weight": 0.5, "center": [0, 0], "radius": 1.0},
            {"type": "repulsion", "weight": 1.0, "scale": 1.0},
            {"type": "collapse", "dims": [1], "weight": 0.1},
            {"type": "entropy", "sigma": 0.01},
        ],
    }
    path = config_dir / "flow.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "from_config"
    result = invoke("flow", "--config", path, "--out", out, "--steps", "4", "--outer", "exact", "--seed", "3", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # --quiet
    history = json.loads((out / "history.json").read_text())
    assert len(history["objective"]) == 4  # --steps overrides the config's 8
    assert set(history["terms"]) == {"otdd", "ball", "repulsion", "collapse", "entropy"}
    settings = history["settings"]
    assert settings["step_size"] == 0.3 and settings["optimizer"] == "adam" and settings["seed"] == 3
    assert settings["dynamics_options"] == {"label_gradient": False}
    assert settings["functional"][0] == {"type": "otdd", "weight": 1.0, "inner": "gaussian", "outer": "exact"}
    assert settings["functional"][1] == {"type": "ball", "weight": 0.5, "center": [0, 0], "radius": 1.0}
    assert history["config"]["noise"] == pytest.approx(0.01)
    assert np.load(out / "final.npz")["x"].shape == (60, 2)


@pytest.mark.fast
def test_example_config_runs(tmp_path):
    shutil.copy(REPO / "examples" / "flow_2d.yaml", tmp_path / "flow_2d.yaml")
    subprocess.run([sys.executable, str(REPO / "examples" / "make_2d_example.py"), str(tmp_path / "data")], check=True)
    out = tmp_path / "out"
    result = invoke("flow", "--config", tmp_path / "flow_2d.yaml", "--steps", "3", "--out", out, "--no-figures", "-q")
    assert result.exit_code == 0, result.stderr
    history = json.loads((out / "history.json").read_text())
    assert len(history["objective"]) == 3 and set(history["terms"]) == {"otdd", "ball", "repulsion", "entropy"}


# ---------------------------------------------------------------------- errors
def _config(tmp_path, blobs, **extra) -> Path:
    source, target = blobs
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"source": str(source), "target": str(target), "steps": 2, **extra}))
    return path


@pytest.mark.fast
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--dynamics", "fd-vl"], ["--dynamics", "'fd-fl', 'jd-fl', 'jd-vl'"]),
        (["--optimizer", "lbfgs"], ["--optimizer", "'sgd', 'momentum', 'adam'"]),
        (["--step-size", "-0.1"], ["--step-size", "x>0"]),
        (["--schedule", "linear"], ["--schedule", "'cosine'"]),
        (["--clustering", "dbscan"], ["--clustering", "jd-vl"]),
        (["--steps", "0"], ["--steps"]),
    ],
)
def test_bad_options_are_one_line_errors(blobs, tmp_path, args, fragments):
    source, target = blobs
    line = one_line_error(invoke("flow", source, target, "--steps", "2", "--out", tmp_path / "o", *FAST, *args))
    for fragment in fragments:
        assert fragment in line
    assert not (tmp_path / "o").exists()


@pytest.mark.fast
@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (
            {"functional": [{"type": "otdd"}, {"type": "gravity"}]},
            ["functional[1].type", "gravity", "'ball'", "'norm'"],
        ),
        ({"functional": [{"type": "ball", "centre": [0, 0], "radius": 1}]}, ["functional[0]", "'centre'", "'center'"]),
        ({"functional": [{"type": "ball", "center": [0, 0, 0], "radius": 1}]}, ["functional[0].center", "d=2"]),
        ({"functional": [{"type": "entropy"}]}, ["functional[0]", "sigma"]),
        ({"stepz": 3}, ["'stepz'", "'steps'"]),
        ({"step_size": -1}, ["step_size", "x>0"]),
        ({"dynamics_options": {"clustering": "kmeans"}}, ["dynamics_options", "'clustering'", "label_gradient"]),
        ({"inner": "exact", "functional": [{"type": "otdd"}]}, ["'inner'", "otdd term"]),
    ],
)
def test_bad_configs_are_one_line_errors(blobs, tmp_path, extra, fragments):
    path = _config(tmp_path, blobs, **extra)
    line = one_line_error(invoke("flow", "--config", path, "--out", tmp_path / "o", "--no-figures"))
    assert line.startswith(f"Error: {path}") or "Invalid value" not in line
    for fragment in fragments:
        assert fragment in line, line


@pytest.mark.fast
def test_invalid_yaml_and_missing_settings(blobs, tmp_path):
    source, target = blobs
    path = tmp_path / "broken.yaml"
    path.write_text("source: a.npz\ntarget: [b.npz\nsteps: 2\n")
    assert "invalid YAML (line 3" in one_line_error(invoke("flow", "--config", path, "--out", tmp_path / "o"))
    assert "--steps" in one_line_error(invoke("flow", source, target, "--out", tmp_path / "o"))
    assert "--out" in one_line_error(invoke("flow", source, target, "--steps", "2"))
    assert "SOURCE" in one_line_error(invoke("flow", "--steps", "2", "--out", tmp_path / "o"))


@pytest.mark.fast
def test_resume_without_checkpoint(blobs, tmp_path):
    source, target = blobs
    line = one_line_error(invoke("flow", source, target, "--steps", "4", "--out", tmp_path / "empty", "--resume"))
    assert "--resume" in line and "no checkpoint" in line and "checkpoint.pt" in line


@pytest.mark.fast
def test_dimension_mismatch(blobs, tmp_path):
    source, _ = blobs
    line = one_line_error(invoke("flow", source, "mnist-mini", "--steps", "2", "--out", tmp_path / "o"))
    assert "d=2" in line and "d=784" in line
    line = one_line_error(invoke("flow", "usps-mini", "mnist-mini", "--steps", "2", "--out", tmp_path / "o"))
    assert "--resize" in line


# ---------------------------------------------------------------------- other dynamics, images, figures
@pytest.mark.fast
def test_jd_vl_with_reclustering(blobs, tmp_path):
    source, target = blobs
    out = tmp_path / "vl"
    args = ("--dynamics", "jd-vl", "--clustering", "kmeans", "--recluster-every", "2", "--outer", "exact")
    result = invoke("flow", source, target, "--steps", "4", "--out", out, *args, "--no-figures", "-q")
    assert result.exit_code == 0, result.stderr
    history = json.loads((out / "history.json").read_text())
    assert history["settings"]["dynamics_options"] == {"clustering": "kmeans", "recluster_every": 2}
    with np.load(out / "final.npz") as final:
        assert final["y"].max() < len(final["classes"]) and final["x"].shape == (60, 2)


@pytest.mark.fast
def test_image_flow_smoke(tmp_path):
    out = tmp_path / "images"
    args = ("--resize", "28x28", "--max-samples", "100", "--steps", "2", "--out", out, "--no-figures", "-q")
    result = invoke("flow", "usps-mini", "mnist-mini", *args)
    assert result.exit_code == 0, result.stderr
    with np.load(out / "final.npz") as final:
        assert final["x"].shape == (100, 28, 28)
        assert final["classes"].tolist() == [str(k) for k in range(10)]
    assert len(json.loads((out / "history.json").read_text())["objective"]) == 2


def test_figures_are_written(blobs, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("datasetflow.viz")
    source, target = blobs
    out = tmp_path / "figs"
    result = invoke("flow", source, target, "--steps", "4", "--out", out, "--outer", "exact", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    history = json.loads((out / "history.json").read_text())
    assert history["figures"] == ["objective.png", "flow.png", "flow.gif"]
    for name in history["figures"]:
        assert (out / name).stat().st_size > 0
    assert history["settings"]["record_every"] == 1 and len(list((out / "trajectory").glob("step_*.npz"))) == 5


@pytest.mark.fast
def test_figure_failures_only_warn(blobs, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")

    def broken(*args, **kwargs):
        raise RuntimeError("no canvas")

    fake = types.ModuleType("datasetflow.viz")
    fake.plot_objective = fake.plot_flow = broken  # no animate_flow at all
    monkeypatch.setitem(sys.modules, "datasetflow.viz", fake)
    source, target = blobs
    out = tmp_path / "run"
    result = invoke("flow", source, target, "--steps", "3", "--out", out, "--outer", "exact", "-q")
    assert result.exit_code == 0
    assert "Warning: figure objective.png not written: RuntimeError: no canvas" in result.stderr
    assert "Warning: figure flow.gif not written: datasetflow.viz has no animate_flow()" in result.stderr
    assert (out / "final.npz").is_file() and (out / "history.json").is_file()
    assert json.loads((out / "history.json").read_text())["figures"] == []


@pytest.mark.fast
def test_choices_match_the_flow_registries():
    from datasetflow.flows import DYNAMICS, OPTIMIZERS, SCHEDULES

    assert cli_flow.DYNAMICS_NAMES == tuple(DYNAMICS)
    assert cli_flow.OPTIMIZER_NAMES == tuple(OPTIMIZERS)
    assert cli_flow.SCHEDULE_NAMES == tuple(SCHEDULES)


@pytest.mark.fast
def test_help_states_the_checkpoint_default():
    result = invoke("flow", "--help")
    assert result.exit_code == 0
    assert "--checkpoint-every" in result.stdout and "max(1, steps // 10)" in result.stdout


# ---------------------------------------------------------------------- MMD-SW (WoW) objective
@pytest.mark.fast
@pytest.mark.parametrize("kernel", ["riesz", "gaussian"])
def test_mmd_sw_objective(blobs, tmp_path, kernel):
    source, target = blobs
    out = tmp_path / "wow"
    args = ["--objective", "mmd-sw", "--kernel", kernel, "--projections", "50", "--optimizer", "momentum"]
    if kernel == "gaussian":
        args += ["--bandwidth", "2.0"]
    result = invoke("flow", source, target, "--steps", "15", "--out", out, "--step-size", "0.05", "--no-figures", *args)
    assert result.exit_code == 0, result.stderr
    history = json.loads((out / "history.json").read_text())
    term = {"type": "mmd_sw", "weight": 1.0, "seed": 0, "kernel": kernel, "n_projections": 50}
    if kernel == "gaussian":
        term["bandwidth"] = 2.0
    assert history["settings"]["functional"] == [term]
    assert list(history["terms"]) == ["mmd_sw"]
    assert history["objective"][-1] < history["objective"][0]
    assert "mmd_sw_to(" in result.stdout


@pytest.mark.fast
def test_mmd_sw_term_in_a_config_and_otdd_options_are_flagged(blobs, tmp_path):
    path = _config(
        tmp_path,
        blobs,
        functional=[{"type": "mmd_sw", "kernel": "imq", "n_projections": 20}, {"type": "otdd", "outer": "exact"}],
    )
    out = tmp_path / "o"
    result = invoke("flow", "--config", path, "--out", out, "--no-figures", "--projections", "30")
    assert result.exit_code == 0, result.stderr
    history = json.loads((out / "history.json").read_text())
    assert history["settings"]["functional"][0]["n_projections"] == 30  # the command line wins
    assert set(history["terms"]) == {"mmd_sw", "otdd"}
    source, target = blobs
    ignored = invoke(
        "flow",
        source,
        target,
        "--steps",
        "2",
        "--out",
        out,
        "--objective",
        "mmd-sw",
        "--outer",
        "exact",
        "--no-figures",
        "--overwrite",
    )
    assert ignored.exit_code == 0 and "--outer ignored" in ignored.stderr


@pytest.mark.fast
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--kernel", "cosine"], ["--kernel", "'riesz'", "'gaussian'"]),
        (["--bandwidth", "0"], ["--bandwidth", "x>0"]),
        (["--projections", "0"], ["--projections"]),
        (["--kernel", "riesz", "--bandwidth", "1"], ["no bandwidth"]),
    ],
)
def test_mmd_sw_bad_options(blobs, tmp_path, args, fragments):
    source, target = blobs
    line = one_line_error(
        invoke(
            "flow",
            source,
            target,
            "--steps",
            "2",
            "--out",
            tmp_path / "o",
            "--objective",
            "mmd-sw",
            "--no-figures",
            *args,
        )
    )
    for fragment in fragments:
        assert fragment in line, line
