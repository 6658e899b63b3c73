"""``datasetflow distance-matrix``: JSON keys, agreement with the library, the heat map, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("click.testing")

from conftest import invoke_cli  # noqa: E402
from datasetflow import distance_matrix, load_dataset  # noqa: E402
from datasetflow.cli.distance_matrix import METHODS  # noqa: E402
from datasetflow.data import DATA_DIR_ENV  # noqa: E402
from datasetflow.distances.sliced import MATRIX_METHODS  # noqa: E402


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def test_methods_agree_with_the_library():
    assert METHODS == MATRIX_METHODS


@pytest.mark.parametrize("method", ["sotdd", "busemann", "busemann-gaussian"])
def test_json_keys_and_values_match_the_library(method, tmp_path):
    args = ["mnist-mini", "fashion-mnist-mini", "mnist-mini", "--method", method, "--projections", 40]
    result = invoke_cli("distance-matrix", *args, "--seed", 3, "--max-samples", 120, "--json", "--out", tmp_path)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    for key in ("names", "matrix", "method", "settings", "seconds"):
        assert key in out
    assert out["names"] == ["mnist-mini", "fashion-mnist-mini", "mnist-mini"] and out["method"] == method
    matrix = np.asarray(out["matrix"])
    assert matrix.shape == (3, 3) and np.all(np.diag(matrix) == 0) and np.allclose(matrix, matrix.T)
    assert matrix[0, 1] > 0 and matrix[0, 2] == pytest.approx(0.0, abs=1e-6)  # the same subsample twice
    assert out["settings"]["n_projections"] == 40 and out["settings"]["seed"] == 3
    assert (tmp_path / f"distance_matrix_{method}.png").stat().st_size > 0
    assert json.loads((tmp_path / "matrix.json").read_text())["matrix"] == out["matrix"]
    # the same numbers from the library (same subsamples, drawn with --seed; PCA fitted on all three)
    from datasetflow.cli.common import subsample

    data = [subsample(load_dataset(name), 120, 3) for name in ("mnist-mini", "fashion-mnist-mini", "mnist-mini")]
    library = distance_matrix(data, method=method, n_projections=40, seed=3)
    assert matrix[0, 1] == pytest.approx(float(library.matrix_pow[0, 1]), rel=1e-5)


def test_otdd_method_and_table():
    result = invoke_cli(
        "distance-matrix", "usps-mini", "usps-mini", "--method", "otdd", "--outer", "exact", "--max-samples", 60
    )
    assert result.exit_code == 0, result.stderr
    assert "otdd squared distance" in result.stdout and "usps-mini" in result.stdout
    out = json.loads(
        invoke_cli(
            "distance-matrix",
            "usps-mini",
            "usps-mini",
            "--method",
            "otdd",
            "--outer",
            "exact",
            "--max-samples",
            60,
            "--json",
        ).stdout
    )
    assert out["matrix"][0][1] == pytest.approx(0.0, abs=1e-4) and out["settings"]["outer"] == "exact"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["mnist-mini"], "at least two"),
        (["mnist-mini", "usps-mini"], "d=256"),
        (["mnist-mini", "usps-mini", "--method", "otdd", "--projections", "10"], "sliced methods only"),
        (["mnist-mini", "usps-mini", "--outer", "exact"], "--method otdd only"),
        (["mnist-mini", "no-such-dataset"], "no-such-dataset"),
        (["mnist-mini", "usps-mini", "--method", "wow"], "wow"),
        (["mnist-mini", "usps-mini", "--projections", "0"], "0"),
    ],
)
def test_errors_are_one_line_with_exit_2(args, fragment):
    result = invoke_cli("distance-matrix", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0]


# ---------------------------------------------------------------------- datasetflow flow --objective sotdd|busemann
@pytest.mark.parametrize("objective", ["sotdd", "busemann"])
def test_flow_objective_sliced(tmp_path, objective):
    g = np.random.default_rng(0)
    source, target = tmp_path / "source.npz", tmp_path / "target.npz"
    np.savez(source, x=g.normal(size=(40, 2)), y=np.arange(40) % 2)
    np.savez(target, x=g.normal(size=(30, 2)) * 0.5 + 3.0, y=np.arange(30) % 2)
    out = tmp_path / objective
    args = ["--objective", objective, "--projections", "60", "--steps", "20", "--step-size", "0.5"]
    result = invoke_cli("flow", source, target, *args, "--out", out, "--no-figures", "--inner", "exact")
    assert result.exit_code == 0, result.stderr
    history = json.loads((out / "history.json").read_text())
    assert history["settings"]["functional"] == [{"type": objective, "weight": 1.0, "seed": 0, "n_projections": 60}]
    assert list(history["terms"]) == [objective]
    assert history["objective"][-1] < 0.2 * history["objective"][0]
    assert f"--inner ignored: --objective {objective}" in result.stderr
