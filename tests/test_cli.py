"""Tests of the ``datasetflow`` command line (click's CliRunner, plus one real subprocess)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("click.testing")

import datasetflow.cli.main as cli_main  # noqa: E402
from conftest import invoke_cli  # noqa: E402
from datasetflow.data import DATA_DIR_ENV, list_builtin_datasets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


invoke = invoke_cli


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# ---------------------------------------------------------------------- the real OTDD
@pytest.mark.fast
def test_distance_json_has_keys_and_sensible_values():
    result = invoke("distance", "mnist-mini", "fashion-mnist-mini", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)  # exactly one JSON object
    for key in ("distance", "distance_squared", "label_distances", "source_classes", "target_classes", "seconds"):
        assert key in out
    assert out["distance"] > 0
    assert math.isclose(out["distance"] ** 2, out["distance_squared"], rel_tol=1e-5)
    assert out["source_classes"] == [str(k) for k in range(10)]
    assert out["target_classes"][0] == "T-shirt/top" and len(out["target_classes"]) == 10
    labels = np.asarray(out["label_distances"])
    assert labels.shape == (10, 10) and np.isfinite(labels).all() and (labels > 0).all()
    assert out["seconds"] > 0
    assert out["source"]["n"] == 500 and out["target"]["dim"] == 784
    assert out["settings"]["device"] == "cpu" and out["settings"]["dtype"] == "float32"
    assert out["solver"]["converged"] is True
    assert out["warnings"] == []


@pytest.mark.fast
def test_identical_datasets_are_at_distance_zero():
    result = invoke("distance", "usps-mini", "usps-mini", "--outer", "exact", "--dtype", "float64", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["settings"]["outer"] == "exact" and out["settings"]["dtype"] == "float64"
    assert abs(out["distance_squared"]) < 1e-6
    assert np.allclose(np.diag(out["label_distances"]), 0.0, atol=1e-6)


@pytest.mark.fast
def test_readable_summary():
    result = invoke("distance", "usps-mini", "mnist-mini", "--resize", "28x28", "--max-samples", "200")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    for expected in ("source  usps-mini", "n=200", "d=784 (28x28)", "OTDD distance", "OTDD squared distance"):
        assert expected in text
    assert "solver    method=sinkhorn" in text and "converged=yes" in text
    assert "label distances W2^2" in text
    table = text.split("label distances W2^2")[1].splitlines()[2:]
    assert [row.split()[0] for row in table] == [str(k) for k in range(10)]
    assert result.stderr == ""


@pytest.mark.fast
def test_npz_paths_and_max_samples(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "blobs.npz"
    x = np.concatenate([rng.normal(0, 1, (30, 2)), rng.normal(5, 1, (30, 2))])
    np.savez(path, x=x, y=np.repeat([0, 1], 30), classes=np.array(["left", "right"]))
    result = invoke("distance", str(path), str(path), "--max-samples", "40", "--seed", "3", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["source"]["n"] == out["target"]["n"] == 40
    assert out["source_classes"] == ["left", "right"]
    assert out["settings"]["max_samples"] == 40 and out["settings"]["seed"] == 3


# ---------------------------------------------------------------------- errors
@pytest.mark.fast
def test_dimension_mismatch_is_a_one_line_error_with_exit_2():
    result = invoke("distance", "usps-mini", "mnist-mini")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "d=256" in lines[0] and "--resize" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.fast
def test_unknown_builtin_name():
    result = invoke("distance", "svhn", "mnist-mini")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: unknown dataset 'svhn'")
    for name in list_builtin_datasets():
        assert name in result.stderr


@pytest.mark.fast
def test_library_errors_and_missing_files(tmp_path):
    result = invoke("distance", "mnist-mini", "mnist-mini", "--outer", "exact", "--reg", "1.0")
    assert result.exit_code == 2 and result.stderr.startswith("Error: ") and "reg" in result.stderr
    missing = tmp_path / "missing.npz"
    result = invoke("distance", str(missing), "mnist-mini")
    assert result.exit_code == 2 and "missing.npz" in result.stderr
    result = invoke("distance", "mnist", "mnist-mini", "--data-dir", str(tmp_path))
    assert result.exit_code == 2 and "mnist_test.npz" in result.stderr and DATA_DIR_ENV in result.stderr
    if not torch.cuda.is_available():
        result = invoke("distance", "mnist-mini", "mnist-mini", "--device", "cuda")
        assert result.exit_code == 2 and "CUDA is not available" in result.stderr


@pytest.mark.fast
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--resize", "28by28"], "--resize"),
        (["--inner", "gromov"], "--inner"),
        (["--reg", "-1"], "--reg"),
        (["--device", "gpu"], "--device"),
    ],
)
def test_bad_options_are_usage_errors(args, fragment):
    result = invoke("distance", "mnist-mini", "fashion-mnist-mini", *args)
    assert result.exit_code == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------- other commands
@pytest.mark.fast
def test_datasets_command(tmp_path):
    result = invoke("datasets", "--data-dir", str(tmp_path))
    assert result.exit_code == 0
    for name in list_builtin_datasets():
        assert name in result.stdout
    assert "usps:train" in result.stdout
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert rows["mnist-mini"] == "embedded" and rows["mnist"] == "missing"
    result = invoke("datasets", "--data-dir", str(tmp_path / "absent"))
    assert result.exit_code == 2 and result.stderr.startswith("Error: ")


@pytest.mark.fast
def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("datasetflow ")


@pytest.mark.fast
def test_missing_click_exits_2_with_install_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "click", None)  # makes `import click` fail
    with pytest.raises(SystemExit) as info:
        cli_main.main(["--version"])
    assert info.value.code == 2
    assert "pip install 'datasetflow[cli]'" in capsys.readouterr().err


# ---------------------------------------------------------------------- output formats
@pytest.mark.fast
def test_large_label_tables_show_the_closest_class_and_warnings_are_reported(tmp_path):
    # 20 classes of one point each: every covariance is undefined, so the library warns (and sets them to 0)
    path = tmp_path / "many.npz"
    x = np.arange(40.0).reshape(20, 2)
    np.savez(path, x=x, y=np.arange(20), classes=np.array([f"c{k}" for k in range(20)]))
    other = tmp_path / "other.npz"
    np.savez(other, x=x[::-1].copy(), y=np.arange(20), classes=np.array([f"d{k}" for k in range(20)]))
    result = invoke("distance", str(path), str(other), "--outer", "exact")
    assert result.exit_code == 0, result.stderr
    assert "closest target class for each source class (20 x 20" in result.stdout
    assert "c0" in result.stdout and "->  d19  (0)" in result.stdout
    assert "Warning: DegenerateClassWarning:" in result.stderr and "single sample" in result.stderr
    out = json.loads(invoke("distance", str(path), str(other), "--json", "--outer", "exact").stdout)
    assert out["distance_squared"] == pytest.approx(0.0, abs=1e-4) and out["solver"]["method"] == "exact"
    assert out["warnings"] and all(w.startswith("DegenerateClassWarning:") for w in out["warnings"])
    assert out["settings"]["outer"] == "exact" and out["settings"]["inner"] == "gaussian"


# ---------------------------------------------------------------------- the installed entry point
def test_module_entry_point_runs_for_real():
    proc = subprocess.run(
        [sys.executable, "-m", "datasetflow.cli", "distance", "mnist-mini", "fashion-mnist-mini", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["distance"] > 0 and len(out["label_distances"]) == 10


# ---------------------------------------------------------------------- --method wow
@pytest.mark.fast
def test_wow_distance_json_and_summary():
    result = invoke("distance", "usps-mini", "mnist-mini", "--resize", "28x28", "--method", "wow", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["method"] == "wow" and out["inner"] == "exact"
    assert math.isclose(out["distance"] ** 2, out["distance_squared"], rel_tol=1e-5)
    coupling = np.asarray(out["coupling"])
    assert coupling.shape == (10, 10) and np.allclose(coupling.sum(1), 0.1, atol=1e-6)
    assert out["matching"] == [str(k) for k in range(10)]  # USPS digits match MNIST digits
    text = invoke(
        "distance",
        "usps-mini",
        "mnist-mini",
        "--resize",
        "28x28",
        "--method",
        "wow",
        "--inner",
        "sliced",
        "--projections",
        "50",
    )
    assert text.exit_code == 0, text.stderr
    assert "WoW distance" in text.stdout and "class matching" in text.stdout and "inner=sliced" in text.stdout


@pytest.mark.fast
def test_wow_rejects_otdd_options_and_vice_versa():
    result = invoke("distance", "usps-mini", "usps-mini", "--method", "wow", "--outer", "exact")
    assert result.exit_code == 2 and "--outer apply to --method otdd only" in result.stderr
    result = invoke("distance", "usps-mini", "usps-mini", "--projections", "10")
    assert result.exit_code == 2 and "--inner sliced only" in result.stderr


@pytest.mark.parametrize("outer", ["lowrank", "minibatch"])
def test_large_n_outer_solvers_from_the_cli(outer, tmp_path):
    import numpy as np

    gen = np.random.default_rng(0)
    for name, shift in (("s", 0.0), ("t", 1.0)):
        np.savez(tmp_path / f"{name}.npz", x=gen.normal(size=(60, 3)) + shift, y=np.arange(60) % 3)
    result = invoke("distance", tmp_path / "s.npz", tmp_path / "t.npz", "--outer", outer, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    payload = json.loads(result.output)
    exact = json.loads(invoke("distance", tmp_path / "s.npz", tmp_path / "t.npz", "--outer", "exact", "--json").output)
    assert payload["settings"]["outer"] == outer
    # both estimators are upper bounds of exact OTDD^2 (minibatch in expectation; here B = n, so equal)
    assert payload["distance_squared"] >= exact["distance_squared"] * (1 - 1e-6)
