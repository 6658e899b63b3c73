"""Flow functionals sotdd_to / busemann_to: decrease on a small flow, bit-identical resume, YAML terms."""

from __future__ import annotations

import pytest
import torch

import datasetflow as dfl
from datasetflow import LabeledDataset, from_config, run_flow
from datasetflow.errors import InvalidArgumentError

F64 = torch.float64


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    source = LabeledDataset(torch.randn(45, 2, generator=g, dtype=F64), torch.arange(45) % 3)
    target = LabeledDataset(torch.randn(36, 2, generator=g, dtype=F64) * 0.5 + 3.0, torch.arange(36) % 3)
    return source, target


FUNCTIONALS = [
    ("sotdd", lambda t: dfl.sotdd_to(t, n_projections=100), 0.5),
    ("swb1dg", lambda t: dfl.busemann_to(t, n_projections=100), 0.5),
    ("swbg", lambda t: dfl.busemann_to(t, variant="swbg", n_projections=100), 0.5),
]


@pytest.mark.parametrize("name, make, step", FUNCTIONALS)
def test_objective_decreases_on_a_small_flow(pair, name, make, step):
    source, target = pair
    functional = make(target)
    result = run_flow(functional, source, steps=40, step_size=step)
    assert result.objective[-1] < 0.05 * result.objective[0]
    # measured with fixed directions, independent of the flow's draws
    before = dfl.distances.sliced_distance(source, target, family=name, n_projections=2000, seed=99)
    after = dfl.distances.sliced_distance(result.final, target, family=name, n_projections=2000, seed=99)
    assert float(after.value_pow) < 0.05 * float(before.value_pow)


@pytest.mark.parametrize("name, make, step", FUNCTIONALS)
def test_resume_is_bit_identical(pair, tmp_path, name, make, step):
    source, target = pair
    options = {"step_size": step, "optimizer": "momentum"}
    full = run_flow(make(target), source, steps=10, **options)
    run_flow(make(target), source, steps=4, checkpoint_every=2, checkpoint_dir=tmp_path, **options)
    resumed = run_flow(make(target), source, steps=10, checkpoint_dir=tmp_path, resume=True, **options)
    assert torch.equal(resumed.final.x, full.final.x)
    assert resumed.objective == full.objective


def test_fresh_directions_each_step_unless_fixed(pair):
    source, target = pair
    fresh, fixed = dfl.busemann_to(target, n_projections=20), dfl.busemann_to(target, n_projections=20, resample=False)
    assert float(fresh(source)) != float(fresh(source))
    assert float(fixed(source)) == float(fixed(source))
    assert float(fixed(source)) == pytest.approx(float(dfl.busemann(source, target, n_projections=20).value_pow))


def test_gradient_is_that_of_the_distance(pair):
    source, target = pair
    x = source.x.clone().requires_grad_(True)
    fixed = dfl.busemann_to(target, n_projections=30, resample=False, seed=4)
    (ours,) = torch.autograd.grad(fixed(source.with_features(x)), x)
    (reference,) = torch.autograd.grad(
        dfl.busemann(source.with_features(x), target, n_projections=30, seed=4).value_pow, x
    )
    assert torch.equal(ours, reference)


def test_yaml_terms_and_composition(pair):
    source, target = pair
    functional = from_config(
        [{"type": "sotdd", "n_projections": 50}, {"type": "busemann", "variant": "swbg", "weight": 0.5}],
        source=source,
        target=target,
    )
    assert [name for name, _, _ in functional.terms()] == ["sotdd", "busemann"]
    assert float(functional(source)) > 0
    with pytest.raises(InvalidArgumentError, match="unknown key"):
        from_config([{"type": "sotdd", "moments": 3}], source=source, target=target)
    with pytest.raises(InvalidArgumentError, match="target"):
        from_config([{"type": "busemann"}], source=source)
    with pytest.raises(InvalidArgumentError, match="n_projections"):
        dfl.sotdd_to(target, n_projections=0)
    with pytest.raises(InvalidArgumentError, match="variant"):
        dfl.busemann_to(target, variant="bures")
