"""run_flow: convergence to known answers, the three dynamics, resume, determinism and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import generators as G
from datasetflow import LabeledDataset, collapse, entropy, otdd, otdd_to, potential, run_flow
from datasetflow.errors import InvalidArgumentError, ShapeMismatchError
from datasetflow.flows import FlowDivergedError, load_checkpoint
from datasetflow.functionals import Functional
from generators import gaussian_classes


def _gaussian(gen, n, mean, scale, labels=None, dim=2):
    x = scale * torch.randn(n, dim, generator=gen, dtype=torch.float64) + torch.tensor(mean, dtype=torch.float64)
    return x, labels if labels is not None else [0] * (n // 2) + [1] * (n - n // 2)


@pytest.fixture
def pair(gen):
    xs, ys = _gaussian(gen, 60, [0.0, 0.0], 1.0)
    xt, yt = _gaussian(gen, 60, [4.0, 1.0], 0.5)
    return LabeledDataset(xs, ys), LabeledDataset(xt, yt)


@pytest.mark.fast
def test_gaussian_to_gaussian_fd_fl_exact(pair):
    source, target = pair
    start = otdd(source, target, outer="exact").distance_squared.item()
    result = run_flow(otdd_to(target, outer="exact"), source, steps=20, step_size=0.25, record_every=5)
    end = otdd(result.final, target, outer="exact").distance_squared.item()
    assert end < 0.01 * start
    assert len(result.objective) == 20 and result.stopped == "steps"
    assert result.trajectory.steps == (0, 5, 10, 15, 20)
    assert result.objective[-1] < result.objective[0]
    assert torch.equal(source.x, pair[0].x)  # the initial dataset is not modified


@pytest.mark.fast
@pytest.mark.parametrize("label_gradient", [True, False])
def test_translated_mixture_lands_on_the_target_in_one_step(gen, label_gradient):
    """From a copy translated by -v (generators.translated_copy) the exact-OTDD coupling is the identity
    and the Wasserstein gradient of OTDD^2 / 2 is -v per particle from the feature term, and -v more
    through the class means when the label term is differentiated: one Euler step of size tau moves
    every particle by tau * k * v (k = 2 or 1), so tau = 1 / k lands exactly on the target."""
    case = G.translated_copy(gaussian_classes(gen, spread=1.0), [0.5, -0.4, 0.2, 0.3])
    v = torch.tensor([0.5, -0.4, 0.2, 0.3], dtype=torch.float64)
    k = 2 if label_gradient else 1
    options = {"dynamics_options": {"label_gradient": label_gradient}, "steps": 1}
    functional = otdd_to(case.target, outer="exact")
    small = run_flow(functional, case.source, step_size=0.1, **options)
    torch.testing.assert_close(small.final.x - case.source.x, (0.1 * k * v).expand_as(case.source.x))
    assert small.objective[0] == pytest.approx(case.distance_squared / 2, rel=1e-9)
    landed = run_flow(otdd_to(case.target, outer="exact"), case.source, step_size=1 / k, **options)
    torch.testing.assert_close(landed.final.x, case.target.x)


@pytest.mark.fast
def test_permuted_copy_lands_on_the_target_in_one_step(gen):
    """Feature-only exact OT to a permuted, perturbed copy: the plan is the permutation, the velocity
    y_sigma(i) - x_i, and one step of size 1 reaches the target; the objective is W2^2 / 2."""
    case = G.permutation(gen, 20, 2, noise=0.8)
    source, target = LabeledDataset(case.x, [0] * 20), LabeledDataset(case.y, [0] * 20)
    result = run_flow(otdd_to(target, outer="exact", label_weight=0.0), source, steps=1, step_size=1.0)
    torch.testing.assert_close(result.final.x, case.y[torch.argsort(case.permutation)])
    assert result.objective[0] == pytest.approx(case.value / 2, rel=1e-9)


@pytest.mark.fast
@pytest.mark.parametrize("dynamics", ["jd-fl", "jd-vl"])
def test_joint_dynamics_decrease_the_objective(pair, dynamics):
    source, target = pair
    result = run_flow(otdd_to(target, outer="exact"), source, dynamics=dynamics, steps=15, step_size=0.25)
    assert result.objective[-1] < 0.05 * result.objective[0]
    assert result.final.num_classes == 2


@pytest.mark.fast
def test_collapse_potential_reaches_minimiser(gen):
    x, y = _gaussian(gen, 40, [1.0, 2.0, 3.0], 1.0, dim=3)
    result = run_flow(collapse([1]), LabeledDataset(x, y), steps=60, step_size=0.2)
    assert result.final.x[:, 1].abs().max().item() < 1e-4
    torch.testing.assert_close(result.final.x[:, [0, 2]], x[:, [0, 2]])


@pytest.mark.fast
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_optimizers_reach_quadratic_minimiser(gen, optimizer):
    x, y = _gaussian(gen, 30, [3.0, -2.0], 1.0)
    quadratic = potential(lambda x, y: 0.5 * ((x - 1.0) ** 2).sum(1), name="quadratic")
    result = run_flow(
        quadratic,
        LabeledDataset(x, y),
        optimizer=optimizer,
        steps=400,
        step_size=0.1,
        schedule="cosine" if optimizer == "adam" else "constant",
    )
    assert (result.final.x - 1.0).abs().max().item() < 0.05


def test_langevin_noise_reaches_stationary_variance(gen):
    """dX = -X dt + sqrt(2 sigma) dW has stationary law N(0, sigma I)."""
    x, y = _gaussian(gen, 2000, [0.0, 0.0], 0.1)
    sigma = 0.5
    result = run_flow(
        potential(lambda x, y: 0.5 * (x**2).sum(1)) + entropy(sigma),
        LabeledDataset(x, y),
        steps=800,
        step_size=0.01,
        seed=3,
    )
    variance = result.final.x.var(0)
    # Euler-Maruyama bias sigma*tau/2 is 0.25 %; Monte-Carlo std of the variance is sigma*sqrt(2/n) ~ 1.6 %
    assert torch.allclose(variance, torch.full((2,), sigma, dtype=torch.float64), rtol=0.08)


@pytest.mark.fast
def test_jd_vl_dbscan_merges_classes_that_flow_together(gen):
    """Two source classes flow onto a single-class target; DBSCAN sees one cluster."""
    xs, _ = _gaussian(gen, 40, [0.0, 0.0], 0.5)
    source = LabeledDataset(torch.cat([xs[:20] - 2.0, xs[20:] + 2.0]), [0] * 20 + [1] * 20)
    xt, _ = _gaussian(gen, 40, [0.0, 5.0], 0.3)
    target = LabeledDataset(xt, ["only"] * 40)
    result = run_flow(
        otdd_to(target, outer="exact"),
        source,
        dynamics="jd-vl",
        steps=30,
        step_size=0.25,
        dynamics_options={"clustering": "dbscan", "eps": 0.5, "min_samples": 4, "recluster_every": 10},
    )
    assert source.num_classes == 2
    assert result.final.num_classes == 1
    assert len(result.label_history) >= 2


@pytest.mark.fast
def test_jd_vl_kmeans_keeps_k(pair):
    source, target = pair
    result = run_flow(
        otdd_to(target, outer="exact"),
        source,
        dynamics="jd-vl",
        steps=10,
        step_size=0.25,
        dynamics_options={"clustering": "kmeans", "recluster_every": 5},
    )
    assert result.final.num_classes == 2


@pytest.mark.fast
@pytest.mark.parametrize("dynamics", ["fd-fl", "jd-vl"])
def test_resume_equals_uninterrupted_run(pair, tmp_path, dynamics):
    source, target = pair
    functional = otdd_to(target, reg=1.0) + entropy(0.01)
    options = {"dynamics": dynamics, "optimizer": "momentum", "step_size": 0.1, "seed": 7, "record_every": 3}
    full = run_flow(functional, source, steps=12, **options)
    run_flow(functional, source, steps=5, checkpoint_every=2, checkpoint_dir=tmp_path, **options)
    resumed = run_flow(
        functional, source, steps=12, checkpoint_dir=tmp_path, resume=True, checkpoint_every=2, **options
    )
    assert torch.equal(resumed.final.x, full.final.x)
    assert torch.equal(resumed.final.y, full.final.y)
    assert resumed.objective == full.objective
    # the 5-step run recorded its own final state (step 5) too; every other record is identical
    assert set(full.trajectory.steps) | {5} == set(resumed.trajectory.steps)
    for k, step in enumerate(resumed.trajectory.steps):
        if step in full.trajectory.steps:
            assert torch.equal(
                resumed.trajectory.record(k)[0], full.trajectory.record(full.trajectory.steps.index(step))[0]
            )
    assert resumed.steps == 12


@pytest.mark.fast
def test_resume_with_default_relative_reg_and_warm_starts(pair, tmp_path):
    """The functional's memory (fixed reg, target terms, warm-start potentials) is checkpointed."""
    source, target = pair
    functional = otdd_to(target)
    full = run_flow(functional, source, steps=8, step_size=0.2)
    run_flow(functional, source, steps=3, step_size=0.2, checkpoint_every=1, checkpoint_dir=tmp_path)
    resumed = run_flow(functional, source, steps=8, step_size=0.2, checkpoint_dir=tmp_path, resume=True)
    assert torch.equal(resumed.final.x, full.final.x)
    assert resumed.objective == full.objective


@pytest.mark.fast
def test_same_seed_same_result_and_trajectory_on_disk(pair, tmp_path):
    source, target = pair
    functional = otdd_to(target, reg=1.0) + entropy(0.05)
    first = run_flow(functional, source, steps=6, seed=1, record_every=2, trajectory_dir=tmp_path / "traj")
    second = run_flow(functional, source, steps=6, seed=1)
    assert torch.equal(first.final.x, second.final.x)
    positions, labels = first.trajectory.stacked()
    assert positions.shape == (4, 60, 2) and labels.shape == (4, 60)
    assert sorted(p.name for p in (tmp_path / "traj").iterdir())[0] == "step_00000000.npz"


@pytest.mark.fast
def test_tolerance_and_callbacks_stop_early(pair):
    source, target = pair
    result = run_flow(otdd_to(target, outer="exact"), source, steps=200, step_size=0.25, tol=1e-6)
    assert result.stopped == "tol" and result.steps < 200
    seen = []
    result = run_flow(
        collapse([0]), source, steps=50, callbacks=[lambda step, state, info: seen.append(step) or step == 3]
    )
    assert result.stopped == "callback" and seen == [1, 2, 3] and result.steps == 3


# ----------------------------------------------------------------------------- bad input
@pytest.mark.fast
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dynamics": "fast"}, r"fd-fl.*jd-fl.*jd-vl"),
        ({"optimizer": "lbfgs"}, r"sgd.*momentum.*adam"),
        ({"step_size": -0.1}, "step_size"),
        ({"steps": -1}, "steps"),
        ({"schedule": "linear"}, "constant"),
        ({"resume": True}, "checkpoint_dir"),
        ({"dynamics": "jd-vl", "dynamics_options": {"clustering": "spectral"}}, "kmeans"),
        ({"dynamics_options": {"clustering": "dbscan"}}, r"unknown dynamics_options \['clustering'\].*label_gradient"),
    ],
)
def test_bad_arguments(pair, kwargs, match):
    source, _ = pair
    with pytest.raises(InvalidArgumentError, match=match):
        run_flow(collapse([0]), source, **{"steps": 2, **kwargs})


@pytest.mark.fast
def test_resume_without_checkpoint(pair, tmp_path):
    with pytest.raises(InvalidArgumentError, match="no checkpoint"):
        run_flow(collapse([0]), pair[0], steps=2, resume=True, checkpoint_dir=tmp_path)


@pytest.mark.fast
def test_non_scalar_functional_rejected(pair):
    class Vector(Functional):
        name = "vector"

        def value(self, state):
            return state.x.sum(0)

    with pytest.raises(InvalidArgumentError, match=r"scalar.*\(2,\)"):
        run_flow(Vector(), pair[0], steps=1)
    with pytest.raises(ShapeMismatchError, match="one value per particle"):
        run_flow(potential(lambda x, y: x), pair[0], steps=1)


@pytest.mark.fast
def test_nan_mid_flow_stops_and_saves_last_good_state(pair, tmp_path):
    source, _ = pair

    def blows_up(x, y):  # NaN once a particle crosses x_0 = 5; the linear potential drives them there
        return torch.where(x[:, 0] > 5.0, torch.tensor(float("nan"), dtype=x.dtype), 0.0 * x[:, 0])

    functional = potential(lambda x, y: -x[:, 0]) + potential(blows_up)
    with pytest.raises(FlowDivergedError, match=r"diverged at step (\d+)") as info:
        run_flow(functional, source, steps=100, step_size=1.0, checkpoint_dir=tmp_path)
    step = info.value.step
    assert 0 < step < 100 and info.value.checkpoint is not None
    saved = load_checkpoint(info.value.checkpoint)
    assert saved["step"] == step and saved["diverged"] is True
    assert np.isfinite(saved["params"]["x"].numpy()).all()


@pytest.mark.fast
def test_reclustering_keeps_label_ids():
    from datasetflow.flows.dynamics import match_previous_labels

    previous = np.array([0, 0, 1, 1, 2, 2])
    swapped = np.array([2, 2, 0, 0, 1, 1])  # same partition, other ids
    assert match_previous_labels(swapped, previous).tolist() == previous.tolist()
    merged = np.array([0, 0, 0, 0, 1, 1])  # classes 0 and 1 merged
    assert match_previous_labels(merged, previous).tolist() == [0, 0, 0, 0, 1, 1]


@pytest.mark.fast
def test_subnormal_coordinates_are_flushed_to_zero(gen):
    """A coordinate that decays geometrically (here halved exactly at every step) would become subnormal after
    about 126 float32 steps, where CPU arithmetic is slow; the integrator sets it to 0 instead. Before that the
    flow is untouched."""
    x, y = _gaussian(gen, 30, [0.0, 0.0], 1.0)
    x = x.float()
    halving = potential(lambda x, y: 0.5 * (x**2).sum(1), name="halving")  # Euler step 0.5: x <- x / 2
    early = run_flow(halving, LabeledDataset(x, y), steps=100, step_size=0.5)
    torch.testing.assert_close(early.final.x, x * 2.0**-100, rtol=1e-5, atol=0)
    late = run_flow(halving, LabeledDataset(x, y), steps=135, step_size=0.5)
    tiny = torch.finfo(torch.float32).tiny
    assert bool(((x * 2.0**-135).abs() < tiny).all())  # without the flush every entry would be subnormal here
    assert bool((late.final.x == 0).all())
