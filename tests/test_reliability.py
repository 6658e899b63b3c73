"""What a new user meets on day one (issue 9): divergence, unusable paths and files, memory, resume checks,
reproducibility under the default threads, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("click.testing")

from conftest import invoke_cli as invoke  # noqa: E402
from conftest import one_line_error  # noqa: E402
from datasetflow import LabeledDataset, load_dataset, otdd_to, run_flow  # noqa: E402
from datasetflow.errors import InvalidArgumentError  # noqa: E402
from datasetflow.flows import FlowDivergedError, load_checkpoint, save_checkpoint  # noqa: E402
from datasetflow.functionals import Functional  # noqa: E402

FAST = ("--outer", "exact", "--step-size", "0.5", "--no-figures", "-q")


@pytest.fixture
def blobs(tmp_path):
    """Source (classes a, b) and target (classes 0, 1) .npz files of 60 2-D points each."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    source, target = tmp_path / "source.npz", tmp_path / "target.npz"
    np.savez(source, x=np.concatenate([rng.normal(0, 1, (30, 2)), rng.normal(4, 1, (30, 2))]), y=y, classes=["a", "b"])
    np.savez(target, x=np.concatenate([rng.normal([-1, 5], 1, (30, 2)), rng.normal([5, 6], 1, (30, 2))]), y=y)
    return source, target


# ---------------------------------------------------------------------- divergence
@pytest.mark.fast
def test_a_diverging_flow_stops_names_the_step_and_keeps_the_last_good_state(tmp_path):
    out = tmp_path / "run"
    args = ("usps-mini", "mnist-mini", "--resize", "28x28", "--steps", "30", "--step-size", "10", "--no-figures")
    line = one_line_error(invoke("flow", *args, "--out", out))
    assert "diverged at step" in line and "smaller step size" in line
    assert "underflow" not in line and "reg=" not in line  # the real cause, not a symptom the user did not set
    history = json.loads((out / "history.json").read_text())
    assert history["stopped"] == "diverged" and "diverged at step" in history["diverged"]
    with np.load(out / "final.npz") as final:
        assert np.isfinite(final["x"]).all()
        assert np.abs(final["x"]).max() < 10  # the last good particles, not the exploded ones


@pytest.mark.fast
def test_a_float64_exact_flow_with_a_huge_step_is_one_line(tmp_path):
    args = ("usps-mini", "mnist-mini", "--resize", "28x28", "--steps", "5", "--step-size", "1e6", "--outer", "exact")
    line = one_line_error(invoke("flow", *args, "--dtype", "float64", "--out", tmp_path / "r", "--no-figures"))
    assert "diverged" in line


class _Ascent(Functional):
    """Value |x|^2 but a gradient of -|x|^2: every Euler step raises the value a little (a sign bug)."""

    name = "ascent"

    def value(self, state):
        x = state.x
        return (x.detach() ** 2).sum() - ((x**2).sum() - (x.detach() ** 2).sum())


@pytest.mark.fast
def test_a_slowly_rising_objective_is_caught_by_the_patience_rule():
    data = LabeledDataset(torch.randn(20, 2, generator=torch.Generator().manual_seed(0)), [0] * 10 + [1] * 10)
    with pytest.raises(FlowDivergedError, match="rose at 25 consecutive steps") as info:
        run_flow(_Ascent(), data, steps=200, step_size=1e-3)
    result = info.value.result
    assert result.stopped == "diverged" and info.value.step == 26
    assert torch.allclose(result.final.x, data.x)  # the lowest objective was the start
    run_flow(_Ascent(), data, steps=30, step_size=1e-3, divergence=False)  # the guard can be turned off


# ---------------------------------------------------------------------- paths, files and memory
@pytest.mark.fast
@pytest.mark.parametrize("command", ["flow", "repurpose"])
def test_an_out_that_cannot_be_created_is_one_line(blobs, tmp_path, command):
    source, target = blobs
    plain = tmp_path / "file.npz"
    plain.write_bytes(b"not a directory")
    for out in (plain / "sub", Path("/proc/datasetflow-test")):
        if command == "flow":
            result = invoke("flow", source, target, "--steps", "2", "--out", out, *FAST)
        else:
            result = invoke("repurpose", "--steps", "1", "--out", out, "--no-figures", "-q")
        line = one_line_error(result)
        assert "--out" in line and str(out) in line


@pytest.mark.fast
def test_a_resize_that_cannot_fit_in_memory_is_refused_with_the_estimate():
    line = one_line_error(invoke("distance", "usps-mini", "mnist-mini", "--resize", "3000x3000"))
    assert "3000x3000" in line and "GiB" in line and "available" in line


def test_complex_features_are_refused():
    with pytest.raises(InvalidArgumentError, match="complex"):
        LabeledDataset(np.ones((4, 2)) * (1 + 1j), [0, 0, 1, 1])


# ---------------------------------------------------------------------- checkpoints and resume
@pytest.mark.fast
def test_broken_checkpoints_are_one_line_errors(blobs, tmp_path):
    source, target = blobs
    out = tmp_path / "run"
    assert invoke("flow", source, target, "--steps", "4", "--out", out, *FAST).exit_code == 0
    checkpoint = out / "checkpoint.pt"
    good = load_checkpoint(checkpoint)
    resume = ("flow", source, target, "--steps", "8", "--out", out, *FAST, "--resume")

    wrong_shape = {**good, "params": {"x": torch.zeros(7, 2)}}
    save_checkpoint(checkpoint, wrong_shape)
    assert "shape" in one_line_error(invoke(*resume))

    missing = {k: v for k, v in good.items() if k != "optimizer"}
    save_checkpoint(checkpoint, missing)
    assert "optimizer" in one_line_error(invoke(*resume))

    data = bytearray(checkpoint.read_bytes())
    checkpoint.write_bytes(bytes(data[: len(data) // 2]))  # killed half-way through a write
    assert "truncated or corrupted" in one_line_error(invoke(*resume))

    checkpoint.write_bytes(b"\x80\x04 not a checkpoint")
    line = one_line_error(invoke(*resume))
    assert "not a datasetflow checkpoint" in line and "weights_only" not in line


@pytest.mark.fast
def test_the_resume_check_reads_the_checkpoint_itself(blobs, tmp_path):
    source, target = blobs
    out = tmp_path / "run"
    assert invoke("flow", source, target, "--steps", "4", "--out", out, *FAST).exit_code == 0
    assert not (out / "settings.json").exists()  # nothing beside the checkpoint to delete or corrupt
    line = one_line_error(
        invoke("flow", source, target, "--steps", "8", "--out", out, *FAST[:2], "--step-size", "0.3", "--resume")
    )
    assert "step_size=0.3 (was 0.5)" in line


@pytest.mark.fast
def test_resuming_a_cosine_schedule_past_its_total_is_refused_with_the_straight_run_hint(blobs, tmp_path):
    source, target = blobs
    out = tmp_path / "run"
    cosine = ("--schedule", "cosine", "--checkpoint-every", "2")
    assert invoke("flow", source, target, "--steps", "4", "--out", out, *FAST, *cosine).exit_code == 0
    line = one_line_error(invoke("flow", source, target, "--steps", "8", "--out", out, *FAST, *cosine, "--resume"))
    assert "cosine schedule" in line and "--steps 4" in line and "new run with --steps 8" in line


@pytest.mark.fast
def test_history_seconds_after_a_resume_count_the_whole_flow(blobs, tmp_path):
    source, target = blobs
    out = tmp_path / "run"
    assert invoke("flow", source, target, "--steps", "3", "--out", out, *FAST).exit_code == 0
    first = json.loads((out / "history.json").read_text())["seconds"]
    assert invoke("flow", source, target, "--steps", "6", "--out", out, *FAST, "--resume").exit_code == 0
    history = json.loads((out / "history.json").read_text())
    assert history["resumed_from"] == 3 and history["seconds"] > first


# ---------------------------------------------------------------------- reproducibility
@pytest.mark.fast
def test_flows_are_bit_identical_under_two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        source = load_dataset("usps-mini", resize=(28, 28)).subset(slice(0, 200))
        target = load_dataset("mnist-mini")
        runs = [run_flow(otdd_to(target), source, steps=6, step_size=0.5).final.x for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(runs[0], other) for other in runs[1:])


# ---------------------------------------------------------------------- one-line usage errors
@pytest.mark.fast
@pytest.mark.parametrize(
    "args",
    [
        ("distance",),
        ("distance", "mnist-mini"),
        ("datasets", "--bogus"),
        ("no-such-command",),
        ("flow", "--steps", "zero"),
    ],
)
def test_usage_errors_are_one_line(args):
    one_line_error(invoke(*args))


@pytest.mark.fast
def test_an_unreadable_classifier_is_one_line(tmp_path):
    pickled = tmp_path / "object.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a module object, refused by weights_only loading
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    for path in (pickled, garbage):
        line = one_line_error(
            invoke("repurpose", "--classifier", path, "--steps", "1", "--out", tmp_path / "o", "--no-figures")
        )
        assert str(path) in line and "weights_only=False" not in line
