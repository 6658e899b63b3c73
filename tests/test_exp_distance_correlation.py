"""experiments/distance_correlation.py runs end to end (``--quick``): the sliced distances correlate positively
with exact OTDD, more so with more directions."""

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


@pytest.mark.skipif(not data_available(), reason="the MNIST .npz file is not available")
def test_distance_correlation_quick_run(tmp_path):
    payload, figures, stdout = run_quick_experiment("distance_correlation", tmp_path)
    assert {"settings", "datasets", "published_spearman", "seconds"} <= set(payload)
    mnist = payload["datasets"]["mnist"]
    assert len(mnist["reference"]) == payload["settings"]["pairs"] and min(mnist["reference"]) > 0
    spearman = {
        m: {L: entries[str(L)]["spearman"]["value"] for L in (10, 500)} for m, entries in mnist["methods"].items()
    }
    assert set(spearman) == {"sotdd", "swb1dg", "swbg"}
    for method, values in spearman.items():
        assert values[500] > 0.3, (method, values)
        entry = mnist["methods"][method]["500"]["spearman"]
        assert entry["low"] <= entry["value"] <= entry["high"]
    # more directions, a closer ranking: on average over the three methods
    assert np.mean([v[500] for v in spearman.values()]) > np.mean([v[10] for v in spearman.values()])
    for method in spearman:
        assert (figures / f"distance_correlation_{method}.png").stat().st_size > 0
    assert "Spearman" in stdout
