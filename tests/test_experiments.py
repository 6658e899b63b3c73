"""The experiment scripts run end to end (``--quick``) and write their figures where told."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
PIL_Image = pytest.importorskip("PIL.Image")

pytestmark = pytest.mark.slow

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

EXPECTED = {
    "rings": ["rings_grid.png", "rings_objective.png", "rings_riesz.gif", "rings_gaussian.gif"],
    "synthetic_dynamics": [
        "dynamics_grid.png",
        "dynamics_objective.png",
        "dynamics_fd-fl.gif",
        "dynamics_jd-fl.gif",
        "dynamics_jd-vl-kmeans.gif",
        "dynamics_jd-vl-dbscan.gif",
    ],
    "functionals_2d": [
        "functionals_grid.png",
        "functionals_objective.png",
        *(
            f"functionals_{stem}.gif"
            for stem in ("otdd", "ball", "repulsion", "otdd-ball", "otdd-repulsion", "otdd-ball-repulsion")
        ),
    ],
    "swiss_roll": [
        "swiss_roll_reference.png",
        "swiss_roll_grid.png",
        "swiss_roll_hyperplane.png",
        "swiss_roll_objective.png",
        *(
            f"swiss_roll_{stem}.gif"
            for stem in ("otdd", "otdd-collapse", "ot-features", "otdd-2class", "otdd-hyperplane")
        ),
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_experiment_quick_run_writes_its_figures(name, tmp_path):
    out_dir = tmp_path / "figures"
    run = subprocess.run(
        [sys.executable, str(EXPERIMENTS / f"{name}.py"), "--quick", "--out", str(out_dir)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == sorted(EXPECTED[name])
    lines = run.stdout.strip().splitlines()
    assert len(lines) == len(EXPECTED[name])  # one summary line per output file
    assert all(line.startswith("figures/") for line in lines)  # shown relative to the working directory
    for file in EXPECTED[name]:
        path = out_dir / file
        with PIL_Image.open(path) as image:
            assert image.format == ("GIF" if file.endswith(".gif") else "PNG")
            if file.endswith(".gif"):
                assert image.n_frames >= 3
