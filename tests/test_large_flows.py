"""Flows of 10^4 particles with the objectives that never form n x m: low-rank, minibatch and stochastic OTDD."""

from __future__ import annotations

import pytest
import torch

from datasetflow import LabeledDataset, run_flow
from datasetflow.errors import InvalidArgumentError
from datasetflow.functionals import otdd_to

N, DIM, CLASSES = 10_000, 16, 5


def _pair():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(CLASSES, DIM, generator=g) * 3
    y = torch.arange(N) % CLASSES
    source = LabeledDataset(centres[y] + torch.randn(N, DIM, generator=g), y)
    yt = torch.arange(N) % CLASSES
    target = LabeledDataset(centres[yt] * 0.5 + 2.0 + torch.randn(N, DIM, generator=g), yt)
    return source, target


OBJECTIVES = {
    "lowrank": {"outer": "lowrank", "rank": 20, "max_iter": 60, "tol": 1e-4},
    "minibatch": {"outer": "minibatch", "batch_size": 1000, "seed": 3},
    "stochastic-sinkhorn": {"target_batch": 500, "particle_batch": 1000, "reg": 5.0, "seed": 4},
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_ten_thousand_particles_decrease_and_resume_bit_identically(name, tmp_path):
    source, target = _pair()
    options = OBJECTIVES[name]
    functional = otdd_to(target, **options)
    flow = {"step_size": 0.5, "seed": 1}
    full = run_flow(functional, source, steps=6, **flow)
    run_flow(functional, source, steps=3, checkpoint_every=1, checkpoint_dir=tmp_path, **flow)
    resumed = run_flow(functional, source, steps=6, checkpoint_dir=tmp_path, resume=True, **flow)
    objective = full.objective
    assert objective[-1] < 0.75 * objective[0]  # (a tenth of the particles moves per step with particle_batch)
    assert torch.equal(resumed.final.x, full.final.x)
    assert resumed.objective == full.objective


def test_stochastic_options_validated():
    source, target = _pair()
    with pytest.raises(InvalidArgumentError, match="target_batch"):
        otdd_to(target, target_batch=0)
    with pytest.raises(InvalidArgumentError, match="rank"):
        otdd_to(target, rank=4)
    functional = otdd_to(target, target_batch=100, seed=2)
    assert functional.stochastic and "target_batch=100" in repr(functional)
