"""experiments/distillation.py runs end to end (``--quick``) and writes its result file and figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_quick_experiment

pytest.importorskip("matplotlib")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist_test.npz"


@pytest.mark.skipif(not MNIST.is_file(), reason="needs ../shared/data/mnist_test.npz")
def test_distillation_quick_run(tmp_path):
    payload, figures, stdout = run_quick_experiment("distillation", tmp_path, timeout=300)
    # the quick run exits non-zero unless the objective falls and distilled p = 10 reaches its floor
    assert "direction check passed" in stdout and "FAILED" not in stdout
    assert payload["quick"] is True
    for key in ("settings", "datasets", "published", "seconds", "peak_rss_mb"):
        assert key in payload
    assert set(payload["datasets"]) == {"mnist"}
    per_p = payload["datasets"]["mnist"]
    assert set(per_p) == {"1", "10"}
    for entry in per_p.values():
        for method in ("distilled", "random_real"):
            stats = entry[method]
            assert {"mean", "std", "runs"} <= set(stats)
            assert all(0.0 <= acc <= 100.0 for acc in stats["runs"])
            assert 0.0 <= stats["mean"] <= 100.0
        for key in ("flow_seconds", "objective_first", "objective_last"):
            assert isinstance(entry[key], float)
    # chance is 10%: a LeNet-5 trained on 10 images per class does far better
    assert per_p["10"]["random_real"]["mean"] > 30.0
    assert payload["published"]["mnist"] == {"1": 66.5, "10": 93.0}  # p = 1 is published (WoW paper)
    assert per_p["10"]["convnet"] is None  # the ConvNet-3 evaluator runs in full runs only
    assert (figures / "distill_mnist.png").is_file()
    assert (figures / "distill_objective.png").is_file()
