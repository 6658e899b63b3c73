"""experiments/kshot.py runs end to end (``--quick``) and writes its JSON (accuracies in percent) and figures."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

pytestmark = pytest.mark.slow

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
from _images import data_available  # noqa: E402

from conftest import run_quick_experiment  # noqa: E402

METHODS = {"target", "target_50ep", "mmdsw", "otdd", "trajectory", "hflow", "finetune", "mmdsw_ft"}


@pytest.mark.skipif(not data_available(), reason="the MNIST / USPS / Fashion-MNIST .npz files are not available")
def test_kshot_quick_run(tmp_path):
    payload, figures, stdout = run_quick_experiment("kshot", tmp_path)
    assert "MNIST→USPS" in stdout and "MNIST→FMNIST" in stdout
    assert {"settings", "tasks", "published", "seconds", "peak_rss_mb"} <= set(payload)
    assert payload["quick"] is True
    assert payload["settings"]["units"] == "accuracy in percent"
    assert set(payload["tasks"]) == {"usps", "fmnist"}
    for task, per_k in payload["tasks"].items():
        assert set(per_k) == {"1", "10"}
        for k, methods in per_k.items():
            assert set(methods) == METHODS, (task, k)
            for entry in methods.values():
                assert {"mean", "std", "runs"} <= set(entry)
                # one accuracy per recorded seed, summarised by their mean and sample std
                runs = entry["runs"]
                assert len(runs) == len(payload["settings"]["seeds"]) >= 1
                assert entry["mean"] == pytest.approx(statistics.fmean(runs), abs=1e-9)
                assert entry["std"] == pytest.approx(statistics.stdev(runs) if len(runs) > 1 else 0.0, abs=1e-9)
                assert all(0.0 <= v <= 100.0 for v in entry["runs"])
                assert 0.0 <= entry["mean"] <= 100.0 and entry["std"] >= 0.0
        assert payload["published"][task]["10"]["mmdsw"] > 0
        assert (figures / f"kshot_{task}.png").is_file()
        assert (figures / f"kshot_{task}_flow.png").is_file()
    assert payload["seconds"] > 0 and payload["peak_rss_mb"] > 0
