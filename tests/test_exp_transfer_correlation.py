"""experiments/transfer_correlation.py runs end to end (``--quick``): every ordered pair of different datasets has a
gain and four distances, and exact OTDD correlates negatively with the fine-tuning gain (the script's own
direction check, which fails the run otherwise)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

pytestmark = pytest.mark.slow

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
from _images import data_available  # noqa: E402

from conftest import run_quick_experiment  # noqa: E402

METHODS = {"otdd", "sotdd", "swb1dg", "swbg"}


@pytest.mark.skipif(not data_available(), reason="the MNIST / USPS / Fashion-MNIST .npz files are not available")
def test_transfer_correlation_quick_run(tmp_path):
    payload, figures, stdout = run_quick_experiment("transfer_correlation", tmp_path)
    names = payload["settings"]["datasets"]
    pairs = payload["pairs"]
    assert {(p["source"], p["target"]) for p in pairs} == {(s, t) for s in names for t in names if s != t}
    for p in pairs:
        assert set(p["distance"]) == METHODS and min(p["distance"].values()) > 0
        assert p["gain"] == pytest.approx(np.mean(p["gain_runs"]), abs=1e-9)
        assert p["accuracy"] - p["scratch"] == pytest.approx(p["gain"], abs=1e-6)
        assert 0.0 <= p["accuracy"] <= 100.0
    for method in METHODS:
        entry = payload["correlations"][method]["pooled"]["spearman"]
        assert -1.0 <= entry["low"] <= entry["value"] <= entry["high"] <= 1.0
    # the claim's direction: a closer source (by exact OTDD) transfers better
    assert payload["correlations"]["otdd"]["pooled"]["spearman"]["value"] < 0
    assert "direction check passed" in stdout
    assert (figures / "transfer_correlation.png").stat().st_size > 0
