"""Sinkhorn at the edges of the working precision: huge reg (large-reg expansion, float64 sweeps) and
small reg (the float32 precision floor, stall detection)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from conftest import gaussian_classes, invoke_cli
from datasetflow import LabeledDataset, OTDDCost, otdd, solve
from datasetflow.errors import ConvergenceWarning, InvalidArgumentError
from datasetflow.solvers import sinkhorn as sinkhorn_module

pytestmark = pytest.mark.fast


def _closed_form_limit(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, reg: float) -> float:
    """<ab^T, C> - <ab^T, C~^2> / (2 reg), C~ the doubly centred cost (float64)."""
    c, a, b = cost.double(), a.double(), b.double()
    rows, cols = c @ b, a @ c
    mean = float(a @ rows)
    centred = c - rows[:, None] - cols[None, :] + mean
    return mean - float(a @ (centred**2) @ b) / (2 * reg)


@pytest.fixture
def problem(gen):
    x = 3 * torch.randn(30, 5, generator=gen, dtype=torch.float64)
    y = 3 * torch.randn(24, 5, generator=gen, dtype=torch.float64) + 1.0
    a = torch.rand(30, generator=gen, dtype=torch.float64) + 0.5
    b = torch.rand(24, generator=gen, dtype=torch.float64) + 0.5
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("reg", [1e8, 1e12])
def test_huge_reg_float32_matches_float64_and_the_closed_form(problem, reg):
    x, y, a, b = problem
    cost64 = torch.cdist(x, y) ** 2
    ref = _closed_form_limit(cost64, a, b, reg)
    values = {}
    for dtype in (torch.float32, torch.float64):
        result = solve(cost64.to(dtype), a.to(dtype), b.to(dtype), reg=reg)
        assert result.converged and result.config["large_reg_expansion"]
        values[dtype] = float(result.value)
    assert values[torch.float64] == pytest.approx(ref, rel=1e-12)
    assert values[torch.float32] == pytest.approx(ref, rel=1e-6)  # the old path returned ~0 here


def test_large_reg_expansion_agrees_with_float64_sweeps(problem, monkeypatch):
    """Just below the switch both the expansion and converged float64 Sinkhorn apply: they agree."""
    x, y, a, b = problem
    cost = torch.cdist(x, y) ** 2
    spread = float(cost.max() - cost.min())
    reg = spread / 2e-3  # above LARGE_REG_RATIO: float64 sweeps (the value precision rule)
    swept = solve(cost.float(), a.float(), b.float(), reg=reg, tol=1e-7)
    assert "large_reg_expansion" not in swept.config and swept.config["compute_dtype"] == "float64"
    monkeypatch.setattr(sinkhorn_module, "LARGE_REG_RATIO", 1e-2)
    expanded = solve(cost.float(), a.float(), b.float(), reg=reg)
    assert expanded.config["large_reg_expansion"]
    # the next term of the expansion is O((spread / reg)^2) of the spread
    assert float(expanded.value) == pytest.approx(float(swept.value), abs=10 * (spread / reg) ** 2 * spread)


def test_large_reg_envelope_gradient_is_the_plan(problem):
    x, y, a, b = problem
    xs = x.clone().requires_grad_()
    reg = 1e10
    value = solve(torch.cdist(xs, y) ** 2, a, b, reg=reg).value
    (grad,) = torch.autograd.grad(value, xs)
    expected = 2 * (a[:, None] * xs.detach() - a[:, None] * (b @ y)[None, :])  # independent coupling a b^T
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-8)
    chunked = solve(OTDDCost(xs, y), a, b, reg=reg, backend="chunked").value
    (grad_chunked,) = torch.autograd.grad(chunked, xs)
    torch.testing.assert_close(grad_chunked, grad, rtol=1e-8, atol=1e-10)


def test_otdd_huge_reg_debiased_limit(gen):
    """As reg -> inf the debiased OTDD tends to |m_a - m_b|^2 + p^T L q - p^T L_aa p / 2 - q^T L_bb q / 2."""
    source = gaussian_classes(gen, num_classes=3, per_class=10, dim=4)
    target = gaussian_classes(gen, num_classes=2, per_class=12, dim=4)
    res64 = otdd(source, target, reg=1e12)
    res32 = otdd(source.to(dtype=torch.float32), target.to(dtype=torch.float32), reg=1e12)
    p, q = source.class_weights(), target.class_weights()
    labels, (l_aa, l_bb) = res64.label_distances, res64.self_label_distances
    mean_gap = float(((source.weights @ source.x - target.weights @ target.x) ** 2).sum())
    limit = mean_gap + float(p @ labels @ q - 0.5 * p @ l_aa @ p - 0.5 * q @ l_bb @ q)
    assert float(res64.distance_squared) == pytest.approx(limit, rel=1e-9)
    assert float(res32.distance_squared) == pytest.approx(limit, rel=1e-5)


def test_cli_huge_reg_float32_equals_float64():
    out = {}
    for dtype in ("float32", "float64"):
        run = invoke_cli(
            "distance", "usps-mini", "mnist-mini", "--resize", "28x28", "--reg", "1e12", "--json", "--dtype", dtype
        )
        assert run.exit_code == 0, run.output
        out[dtype] = json.loads(run.stdout)
    assert out["float32"]["solver"]["converged"]
    assert out["float32"]["distance_squared"] > 1.0
    assert out["float32"]["distance_squared"] == pytest.approx(out["float64"]["distance_squared"], rel=1e-5)


def _small_reg_problem(gen, dtype):
    """Costs of order 10^3 (a constant offset, as the label term makes) with reg = 0.2: C / reg ~ 5000,
    beyond float32's resolution of the potentials, while the cost varies by only ~30 reg."""
    x = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(50, 2, generator=gen, dtype=torch.float64) + 0.5
    cost = torch.cdist(x, y) ** 2 + 1000.0
    return cost.to(dtype)


def test_small_reg_float32_stalls_at_the_precision_floor_with_a_warning(gen, monkeypatch):
    """Log-domain sweeps (the kernel form is off here; at small reg it is off by default) on float32 potentials."""
    monkeypatch.setattr(sinkhorn_module, "KERNEL_MAX_SPREAD", 0.0)
    cost = _small_reg_problem(gen, torch.float32)
    with pytest.warns(ConvergenceWarning, match=r"precision floor.*float64"):
        result = solve(cost, reg=0.2, max_iter=5000, value_tol=None)
    assert not result.converged and result.config["status"] == "stalled"
    assert result.n_iter < 5000  # stopped by the stall detector, not by max_iter
    assert result.marginal_error < 10 * result.config["precision_floor"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        reference = solve(cost.double(), reg=0.2, max_iter=5000, value_tol=None)
    assert reference.converged
    assert float(result.value) == pytest.approx(float(reference.value), rel=1e-5)


def test_kernel_form_float32_converges_below_the_log_domain_floor(gen):
    """The same float32 problem in kernel form (cost spread ~30 reg): float64 potentials and a fixed float32 kernel
    converge to tol, and the returned plan's marginal error (measured in float64) is below tol."""
    cost = _small_reg_problem(gen, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = solve(cost, reg=0.2, max_iter=5000, value_tol=None)
        reference = solve(cost.double(), reg=0.2, max_iter=5000, value_tol=None)
    assert result.converged and result.config["kernel_form"]
    plan = result.plan.double()
    error = float((plan.sum(1) - 1 / 60).abs().sum() + (plan.sum(0) - 1 / 50).abs().sum())
    assert error < 1e-5 and result.marginal_error < 1e-5
    assert float(result.value) == pytest.approx(float(reference.value), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_reg_value_stop_is_accurate_reported_and_earlier(gen, dtype):
    cost = _small_reg_problem(gen, dtype)
    with pytest.warns(ConvergenceWarning, match=r"dual value settled.*value_tol=None"):
        result = solve(cost, reg=0.2, max_iter=5000)  # value_tol="auto": on, since reg anneals here
    assert not result.converged and result.config["status"] == "value"
    assert result.marginal_error > 1e-5  # stopped before the marginal tolerance
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        reference = solve(cost.double(), reg=0.2, max_iter=5000, value_tol=None)
    assert result.n_iter < reference.n_iter
    # the stop estimates a relative 1e-4 (AUTO_VALUE_TOL); allow twice that
    assert float(result.value) == pytest.approx(float(reference.value), rel=2 * sinkhorn_module.AUTO_VALUE_TOL)


def test_value_stop_is_off_without_annealing_and_checks_its_argument(gen):
    cost = _small_reg_problem(gen, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = solve(cost, reg=0.2, max_iter=5000, eps_scaling=None)  # not annealed: no value stop
    assert result.converged and result.config["status"] == "converged"
    for bad in (0.0, 1.5, "fast", -1e-3):
        with pytest.raises(InvalidArgumentError, match="value_tol"):
            solve(cost, reg=0.2, value_tol=bad)


@pytest.mark.parametrize("remaining, expected", [(0.5, True), (2.0, False)])
def test_value_settled_on_a_linearly_converging_sequence(remaining, expected):
    """Value V - c rho^k and error rho^k: the estimate is conservative by (rho^-W - 1) / (W (1 - rho)) ~ 1.4."""
    rho, tol, limit, window = 0.9, 1e-4, 1000.0, sinkhorn_module.VALUE_WINDOW
    k = 30
    # choose c so that the true remaining rise after sweep k, c rho^k, is `remaining` times tol * limit
    c = remaining * tol * limit / rho**k
    values = [limit - c * rho**i for i in range(k + 1)]
    errors = [rho**i for i in range(k + 1)]
    assert sinkhorn_module._value_settled(values, errors, tol) is expected
    assert not sinkhorn_module._value_settled(values, [1.0] * (k + 1), tol)  # error not falling: never
    assert not sinkhorn_module._value_settled(values[:window], errors[:window], tol)  # too short


def test_float64_does_not_stall_where_float32_does(gen):
    cost = _small_reg_problem(gen, torch.float64)
    result = solve(cost, reg=0.2, max_iter=5000, tol=1e-9, value_tol=None)
    assert result.converged and result.config["status"] == "converged"
    assert result.config["precision_floor"] < 1e-9


def test_dataset_distance_huge_reg_refuses_nothing_and_stays_finite(gen):
    source = LabeledDataset(torch.randn(12, 3, generator=gen), [0] * 6 + [1] * 6)
    result = otdd(source, source, reg=1e15)
    assert float(result.distance_squared) == pytest.approx(0.0, abs=1e-6)


def test_anderson_safeguard_converges_where_the_extrapolation_wanders():
    """A 6 x 6 entropic OTDD minibatch with C/reg up to 280 and unequal class masses on the two sides: Anderson's
    extrapolation wandered (marginal error between 0.2 and 1.2 for thousands of sweeps) or not, depending on a
    1e-15 change of the cost (with or without a feature gradient). The safeguard switches it off and plain Sinkhorn
    converges: both give the same converged value."""
    from datasetflow import otdd
    from test_distributed_objectives import _otdd_problem

    source, target = _otdd_problem()
    options = {"outer": "minibatch", "batch_size": 6, "n_batches": 5, "seed": 6, "reg": 0.5, "tol": 1e-11}
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        plain = otdd(source, target, max_iter=5000, **options)
        x = source.x.clone().requires_grad_()
        tracked = otdd(source.with_features(x), target, max_iter=5000, **options)
    assert plain.ot.converged and tracked.ot.converged
    assert plain.ot.errors == pytest.approx(tracked.ot.errors, rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_reg_plan_and_label_gradients_have_no_subnormal_entries(gen, dtype):
    """At small reg the plan is nearly a permutation and most entries underflow; they are 0, never subnormal
    (subnormal operands made each P @ y of the envelope gradient ~150x slower), and the same holds for the
    gradient that reaches the class features through the Bures label cost."""
    x = torch.randn(60, 8, generator=gen, dtype=torch.float64) * 10
    y = x[torch.randperm(60, generator=gen)] + 0.1
    labels = torch.arange(60) % 3
    source = LabeledDataset(x.to(dtype).requires_grad_(), labels)
    target = LabeledDataset(y.to(dtype), labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = otdd(source, target, reg=0.05, debiased=False)
    tiny = torch.finfo(dtype).tiny
    plan = result.ot.plan
    assert bool((plan == 0).any())  # the regime of the test: entries underflow
    assert not bool(((plan != 0) & (plan.abs() < tiny)).any())
    (grad,) = torch.autograd.grad(result.distance_squared, source.x)
    assert bool(torch.isfinite(grad).all())
    assert not bool(((grad != 0) & (grad.abs() < tiny)).any())
