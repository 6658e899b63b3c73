"""experiments/repurpose.py and experiments/wow_da.py run end to end (``--quick``) and write their results."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_quick_experiment

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist_test.npz"


def _quick(name: str, tmp_path: Path) -> tuple[dict, Path]:
    payload, figures, stdout = run_quick_experiment(name, tmp_path, timeout=300)
    for key in ("settings", "runs", "published", "seconds", "peak_rss_mb", "environment", "collapse"):
        assert key in payload
    assert payload["settings"]["classifier"]["heldout_accuracy"] >= 0.99  # the packaged ensemble
    assert payload["settings"]["threads"] == payload["environment"]["threads"] == 1
    # the quick run exits non-zero unless its claimed direction holds; it says so on its output
    assert "direction check passed" in stdout and "FAILED" not in stdout
    return payload, figures


@pytest.mark.skipif(not MNIST.is_file(), reason="needs ../shared/data")
def test_repurpose_quick(tmp_path):
    payload, figures = _quick("repurpose", tmp_path)
    assert set(payload["runs"]) == {"usps", "fashion-mnist"}
    for runs in payload["runs"].values():
        for mode in ("supervised", "unsupervised"):
            run = runs[mode]
            assert 0.0 <= run["accuracy_before"] <= 1.0 and 0.0 <= run["accuracy_after"] <= 1.0
            assert run["curve"][0][0] == 0 and len(run["objective"]) == payload["settings"]["steps"]
        assert runs["unsupervised"]["pseudo_label_accuracy"] is not None
        # one-to-one scoring can never beat the labelled many-to-one upper bound
        assert runs["unsupervised"]["accuracy_after"] <= runs["unsupervised"]["many_to_one_after"] + 1e-12
    # even the 8-step smoke test repairs most of the USPS errors of the frozen MNIST classifier
    usps = payload["runs"]["usps"]["supervised"]
    assert usps["accuracy_after"] > usps["accuracy_before"]
    for file in ("repurpose_usps.png", "repurpose_fashion-mnist.png", "repurpose_curves.png"):
        assert (figures / file).is_file()


@pytest.mark.skipif(not MNIST.is_file(), reason="needs ../shared/data")
def test_wow_da_quick(tmp_path):
    payload, figures = _quick("wow_da", tmp_path)
    assert set(payload["runs"]) == {"usps", "fashion-mnist"}
    for run in payload["runs"].values():
        assert run["steps"][0] == 0 and run["steps"][-1] == payload["settings"]["steps"]
        assert len(run["flows"]) == payload["settings"]["flows"] and len(run["mean"]) == len(run["steps"])
        assert all(0.0 <= a <= 1.0 for a in run["mean"]) and run["seconds_per_step"] > 0
        assert run["mean"][-1] > run["mean"][0]  # the quick run's claim: the flow raises the accuracy
    assert (figures / "wow_da_curves.png").is_file()


@pytest.mark.skipif(not MNIST.is_file(), reason="needs ../shared/data")
def test_main_job_quick(tmp_path):
    payload, _, stdout = run_quick_experiment("main_job", tmp_path, timeout=300)
    assert payload["accuracy_after"] > payload["accuracy_before"]
    assert payload["printed_accuracy_line"] in stdout
    assert "direction check passed" in stdout
