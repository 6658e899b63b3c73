"""Shared fixtures: seeded generators and small synthetic labeled datasets.

The problems themselves (with their known answers) live in ``tests/generators.py``;
``gaussian_classes`` is re-exported here so that ``from conftest import gaussian_classes`` keeps working.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from generators import gaussian_classes

__all__ = ["SHARED_DATA", "gaussian_classes", "invoke_cli", "run_quick_experiment", "one_line_error"]

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh seeded CPU generator."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def small_pair(gen):
    """Two small float64 labeled datasets with different class counts."""
    return gaussian_classes(gen, num_classes=3, per_class=10), gaussian_classes(gen, num_classes=2, per_class=14)


def invoke_cli(*args):
    """Run the ``datasetflow`` click CLI in-process on ``args`` (stringified), stderr kept apart."""
    from click.testing import CliRunner

    from datasetflow.cli.main import build_cli

    try:  # click < 8.2 mixes stderr into stdout unless told not to
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def run_quick_experiment(name: str, tmp_path: Path, timeout: int = 600) -> tuple[dict, Path, str]:
    """Run ``experiments/<name>.py --quick`` (one thread) into ``tmp_path``; returns its JSON payload, the
    figure folder and its standard output."""
    import json
    import subprocess
    import sys

    figures, results = tmp_path / "figures", tmp_path / "results"
    script = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            "--quick",
            "--threads",
            "1",
            "--figures",
            str(figures),
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    payload = json.loads((results / f"{name}.json").read_text())
    assert payload["quick"] is True
    return payload, figures, run.stdout


def one_line_error(result) -> str:
    """The single ``Error: ...`` line of a CLI result that failed with exit status 2 (asserts that shape)."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]
