"""experiments/pseudo_consensus.py runs end to end (``--quick``) and checks its label-free claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_quick_experiment

pytest.importorskip("sklearn")
pytest.importorskip("umap")
pytest.importorskip("skimage")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(
    not (DATA / "usps_test.npz").is_file() or not (DATA / "fashion_mnist_test.npz").is_file(),
    reason="needs ../shared/data/usps_test.npz and fashion_mnist_test.npz",
)
def test_pseudo_consensus_quick_run(tmp_path):
    payload, _, stdout = run_quick_experiment("pseudo_consensus", tmp_path, timeout=400)
    # the quick run exits non-zero unless the consensus agrees with the runs at least as well as they agree
    assert "direction check passed" in stdout and "FAILED" not in stdout
    assert payload["quick"] is True and payload["settings"]["runs"] == 3
    assert set(payload["sources"]) == {"usps", "fashion-mnist"}
    for source in payload["sources"].values():
        assert len(source["single_runs"]) == 3
        assert all(0.0 <= a <= 100.0 for a in [*source["single_runs"], source["consensus"]])
        assert sum(source["consensus_cluster_sizes"]) == source["n"] == 300
        assert -1.0 <= source["ari_between_runs_mean"] <= source["ari_consensus_to_runs_mean"] <= 1.0
        # scored after the fact: on 30 images per class the consensus is far above chance (10 %)
        assert source["consensus"] > 40.0
