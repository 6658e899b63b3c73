"""The solve() front door: exact and Sinkhorn against closed forms and POT, gradients, backends."""

from __future__ import annotations

import math

import ot
import pytest
import torch

import generators as G
from datasetflow import OTDDCost, solve
from datasetflow.costs import CostOperator
from datasetflow.errors import ConvergenceWarning, InvalidArgumentError, NonFiniteError, ShapeMismatchError

pytestmark = pytest.mark.fast


def _problem(gen, n=20, m=25, dim=3):
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    y = torch.randn(m, dim, generator=gen, dtype=torch.float64) + 1.0
    a = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    b = torch.rand(m, generator=gen, dtype=torch.float64) + 0.5
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("noise", [0.0, 0.9])
def test_exact_permutation(gen, noise):
    """A permuted copy (moved by less than half the smallest distance): the plan is the permutation."""
    case = G.permutation(gen, 15, 2, noise=noise)
    result = solve(case.cost)
    assert result.value.item() == pytest.approx(case.value, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(result.plan, case.plan)
    assert result.converged and result.method == "exact"


def test_exact_permutation_cost_matrix(gen):
    case = G.permutation_cost(gen, 20)
    result = solve(case.cost)
    assert result.value.item() == pytest.approx(case.value, rel=1e-12)
    torch.testing.assert_close(result.plan, case.plan)


@pytest.mark.parametrize("backend", ["dense", "chunked"])
@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_sinkhorn_on_permutations_is_within_the_entropic_bound(gen, monkeypatch, backend, noise):
    r"""OT_0 <= <P_eps, C> <= OT_eps <= OT_0 + reg log n: the permutation plan has KL(P | a b^T) = log n.

    The chunked backend (forced to 4-row blocks) must give the dense values."""
    case = G.permutation(gen, 24, 3, noise=noise)
    original = CostOperator.row_blocks
    monkeypatch.setattr(CostOperator, "row_blocks", lambda self, max_elements=0: original(self, 4 * self.shape[1]))
    reg = 1e-3 * case.cost.mean().item()
    options = {"reg": reg, "tol": 1e-10, "max_iter": 20000}
    result = solve(OTDDCost(case.x, case.y), backend=backend, **options)
    slack = 1e-9 * case.cost.mean().item()
    assert case.value - slack <= result.value_linear.item() <= result.value.item() + slack
    assert result.value.item() <= case.value + reg * math.log(len(case.x)) + slack
    assert result.converged and result.backend == backend
    if backend == "dense":
        assert torch.equal(result.plan.argmax(0), case.permutation)
        torch.testing.assert_close(result.plan, case.plan, atol=1e-6, rtol=0)
    else:
        dense = solve(case.cost, **options)
        assert result.plan is None
        assert result.value.item() == pytest.approx(dense.value.item(), rel=1e-10, abs=1e-14)
        assert result.value_linear.item() == pytest.approx(dense.value_linear.item(), rel=1e-8, abs=1e-14)


def test_exact_dirac_closed_form(gen):
    """Transport to a single Dirac costs the weighted mean squared distance."""
    case = G.dirac_against_cloud(gen, 20, 3)
    result = solve(torch.cdist(case.x, case.z) ** 2, case.a, torch.ones(1, dtype=torch.float64))
    assert result.value.item() == pytest.approx(case.value, rel=1e-12)
    torch.testing.assert_close(result.plan, case.plan)


@pytest.mark.parametrize(("n", "m", "weighted"), [(30, 30, False), (30, 30, True), (17, 26, True)])
def test_exact_one_dimensional(gen, n, m, weighted):
    """Equal sizes: matching the sorted values; otherwise the quantile-function integral."""
    case = G.one_dimensional(gen, n, m, weighted=weighted)
    result = solve(torch.cdist(case.x, case.y) ** 2, case.a, case.b)
    assert result.value.item() == pytest.approx(case.value, rel=1e-12)


def test_exact_matches_pot_emd2(gen):
    x, y, a, b = _problem(gen)
    cost = torch.cdist(x, y) ** 2
    assert solve(cost, a, b).value.item() == pytest.approx(ot.emd2(a.numpy(), b.numpy(), cost.numpy()), rel=1e-12)


@pytest.mark.parametrize("reg", [2.0, 0.3])
def test_sinkhorn_matches_pot(gen, reg):
    x, y, a, b = _problem(gen)
    cost = torch.cdist(x, y) ** 2
    result = solve(cost, a, b, reg=reg, tol=1e-12, max_iter=20000)
    linear = ot.sinkhorn2(a.numpy(), b.numpy(), cost.numpy(), reg, stopThr=1e-13, numItermax=200000)
    full = ot.solve(cost.numpy(), a.numpy(), b.numpy(), reg=reg, tol=1e-13, max_iter=200000)
    assert result.value_linear.item() == pytest.approx(float(linear), rel=1e-9)
    assert result.value.item() == pytest.approx(float(full.value), rel=1e-9)
    assert result.value_linear.item() == pytest.approx(float(full.value_linear), rel=1e-9)
    torch.testing.assert_close(result.plan, torch.as_tensor(full.plan), atol=1e-10, rtol=1e-7)
    assert result.converged and result.marginal_error < 1e-10


def test_sinkhorn_without_eps_scaling_agrees(gen):
    x, y, a, b = _problem(gen)
    cost = torch.cdist(x, y) ** 2
    scaled = solve(cost, a, b, reg=0.5, tol=1e-12)
    plain = solve(cost, a, b, reg=0.5, tol=1e-12, eps_scaling=None)
    assert scaled.value.item() == pytest.approx(plain.value.item(), rel=1e-10)


def test_envelope_gradient_equals_autodiff(gen):
    x, y, a, b = _problem(gen, n=12, m=10)
    cost = (torch.cdist(x, y) ** 2).requires_grad_()
    envelope = solve(cost, a, b, reg=0.5, tol=1e-13, max_iter=10000)
    autodiff = solve(cost, a, b, reg=0.5, tol=1e-13, max_iter=10000, grad="autodiff")
    (g_env,) = torch.autograd.grad(envelope.value, cost)
    (g_auto,) = torch.autograd.grad(autodiff.value, cost)
    torch.testing.assert_close(g_env, g_auto, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(g_env, envelope.plan)


def test_gradcheck_sinkhorn_envelope(gen):
    x, y, a, b = _problem(gen, n=6, m=5, dim=2)
    xs = x.clone().requires_grad_()

    def value(features):
        return solve(OTDDCost(features, y), a, b, reg=0.7, tol=1e-14, max_iter=20000).value

    assert torch.autograd.gradcheck(value, (xs,), atol=1e-6)


def test_gradcheck_exact(gen):
    x, y, a, b = _problem(gen, n=6, m=5, dim=2)
    xs = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda f: solve(OTDDCost(f, y), a, b).value, (xs,))


def test_chunked_equals_dense(gen, monkeypatch):
    x, y, a, b = _problem(gen, n=40, m=33)
    original = CostOperator.row_blocks
    monkeypatch.setattr(CostOperator, "row_blocks", lambda self, max_elements=0: original(self, 7 * self.shape[1]))
    results = {}
    for backend in ("dense", "chunked"):
        xs = x.clone().requires_grad_()
        ys = y.clone().requires_grad_()
        result = solve(OTDDCost(xs, ys), a, b, reg=0.4, tol=1e-12, backend=backend, debiased=True)
        results[backend] = (result, *torch.autograd.grad(result.value, (xs, ys)))
    (rd, gxd, gyd), (rc, gxc, gyc) = results["dense"], results["chunked"]
    assert rc.plan is None and rc.backend == "chunked"
    assert rc.value.item() == pytest.approx(rd.value.item(), rel=1e-12)
    assert rc.value_linear.item() == pytest.approx(rd.value_linear.item(), rel=1e-10)
    torch.testing.assert_close(gxc, gxd)
    torch.testing.assert_close(gyc, gyd)


def test_debiased_divergence_vanishes_on_identical_clouds(gen):
    x, _, a, _ = _problem(gen)
    result = solve(OTDDCost(x, x.clone()), a, a, reg=2.0, tol=1e-12, debiased=True)
    assert result.value.item() == pytest.approx(0.0, abs=1e-10)
    biased = solve(OTDDCost(x, x.clone()), a, a, reg=2.0, tol=1e-12)
    assert biased.value.item() > 1e-3  # the entropic bias the divergence removes


def test_non_convergence_warns(gen):
    x, y, a, b = _problem(gen)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        result = solve(torch.cdist(x, y) ** 2, a, b, reg=0.01, max_iter=3, eps_scaling=None)
    assert not result.converged and result.n_iter == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reg": -1.0}, InvalidArgumentError, "reg"),
        ({"reg": 1.0, "method": "simplex"}, InvalidArgumentError, "exact"),
        ({"reg": 1.0, "grad": "magic"}, InvalidArgumentError, "envelope"),
        ({"reg": 1.0, "backend": "gpu"}, InvalidArgumentError, "chunked"),
        ({"reg": 1e-300}, InvalidArgumentError, "underflows"),
        ({"method": "sinkhorn"}, InvalidArgumentError, "positive reg"),
        ({"reg": 1.0, "method": "exact"}, InvalidArgumentError, "no reg"),
        ({"debiased": True}, InvalidArgumentError, "debiased"),
    ],
)
def test_bad_arguments(gen, kwargs, error, match):
    x, y, a, b = _problem(gen)
    with pytest.raises(error, match=match):
        solve(torch.cdist(x, y) ** 2, a, b, **kwargs)


def test_bad_marginals_and_costs(gen):
    x, y, a, b = _problem(gen)
    cost = torch.cdist(x, y) ** 2
    with pytest.raises(ShapeMismatchError, match=r"\(20,\)"):
        solve(cost, b, a)
    bad = cost.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        solve(bad, a, b)
    with pytest.raises(InvalidArgumentError, match="self-costs"):
        solve(cost, a, b, reg=1.0, debiased=True)
