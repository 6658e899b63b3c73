"""The fast paths of the default OTDD pipeline agree with their reference forms: kernel-form Sinkhorn sweeps with
the log-domain ones, the one-GEMM squared-distance backward with autograd, the float32 polar factor with float64."""

from __future__ import annotations

import pytest
import torch

from conftest import gaussian_classes
from datasetflow import OTDDCost, otdd, solve
from datasetflow.costs.gaussian import pairwise_sqeuclidean, sqeuclidean
from datasetflow.costs.linalg import _nuclear_and_polar, nuclear_norm
from datasetflow.solvers import sinkhorn as sinkhorn_module

pytestmark = pytest.mark.fast


def _problem(gen, n=40, m=30, d=4, dtype=torch.float64):
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    y = torch.randn(m, d, generator=gen, dtype=dtype) + 0.5
    a = torch.rand(n, generator=gen, dtype=dtype) + 0.5
    b = torch.rand(m, generator=gen, dtype=dtype) + 0.5
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("symmetric", [False, True])
def test_kernel_form_sweeps_equal_log_domain_sweeps_and_recentre(gen, symmetric):
    """One kernel-form sweep gives the log-sum-exp update to rounding, also after the potentials drift past
    KERNEL_DRIFT (the kernel is rebuilt) and from a potential far from any centre."""
    x, y, a, b = _problem(gen)
    if symmetric:
        y, b = x, a
    cost = OTDDCost(x, y)
    dense = cost.dense()
    eps = 0.1 * float(dense.max())
    fast = sinkhorn_module._Kernel(cost, a, b, dense, kernel_form=True)
    slow = sinkhorn_module._Kernel(cost, a, b, dense, kernel_form=False)
    potential = torch.zeros(a.shape[0] if symmetric else b.shape[0], dtype=torch.float64)
    for shift in (0.0, 0.5, 40.0, -80.0):  # the last two move the potential past KERNEL_DRIFT * eps
        moved = potential + shift * eps * torch.rand(potential.shape, generator=gen, dtype=torch.float64)
        if symmetric:
            torch.testing.assert_close(fast.symmetric(moved, eps), slow.symmetric(moved, eps), rtol=1e-12, atol=1e-9)
        else:
            for got, expected in zip(fast.sweep(moved, eps), slow.sweep(moved, eps), strict=True):
                torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)
    assert fast.recentred >= 3  # rebuilt for the large drifts


@pytest.mark.parametrize(("dtype", "relative"), [(torch.float32, 0.05), (torch.float64, 0.05), (torch.float64, 0.005)])
def test_kernel_form_otdd_equals_log_domain_otdd(gen, dtype, relative, monkeypatch):
    """The debiased OTDD (value, plan, gradient) with kernel-form sweeps equals the log-domain solve, at the default
    reg (spread about 45 reg) and, in float64 (float32 stalls at its precision floor there), at a tenth of it (no
    annealing yet; the kernel is rebuilt as the potentials move)."""
    source = gaussian_classes(gen, num_classes=3, per_class=30, dim=6, dtype=dtype)
    target = gaussian_classes(gen, num_classes=3, per_class=25, dim=6, dtype=dtype)

    def run():
        x = source.x.clone().requires_grad_()
        result = otdd(source.with_features(x), target, relative_reg_fraction=relative)
        result.distance_squared.backward()
        return result, x.grad

    forms = []
    original = sinkhorn_module._Kernel.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if "kernel_form" in kwargs:  # (not the probe that reads the cost's extremes)
            forms.append(self.kernel_form)

    monkeypatch.setattr(sinkhorn_module._Kernel, "__init__", spy)
    fast, fast_grad = run()
    assert forms == [True] * 3  # the cross and both self-transport problems
    monkeypatch.setattr(sinkhorn_module, "KERNEL_MAX_SPREAD", 0.0)  # every solve in the log domain
    slow, slow_grad = run()
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(fast.distance_squared, slow.distance_squared, rtol=rtol, atol=0)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=10 * rtol, atol=10 * rtol * float(slow_grad.abs().max()))
    torch.testing.assert_close(fast.ot.plan, slow.ot.plan, rtol=10 * rtol, atol=10 * rtol * float(slow.ot.plan.max()))


@pytest.mark.filterwarnings("ignore::datasetflow.errors.ConvergenceWarning")
def test_kernel_form_is_chosen_only_for_moderate_reg(gen, monkeypatch):
    """Kernel form where the cost spread is at most KERNEL_MAX_SPREAD * reg; the log domain at small reg."""
    x, y, a, b = _problem(gen)
    cost = OTDDCost(x, y)
    spread = float(cost.dense().max() - cost.dense().min())
    chosen = []
    original = sinkhorn_module._Kernel.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if "kernel_form" in kwargs:
            chosen.append(self.kernel_form)

    monkeypatch.setattr(sinkhorn_module._Kernel, "__init__", spy)
    solve(cost, a, b, reg=spread / 10, method="sinkhorn")
    assert chosen[-1] is True
    solve(cost, a, b, reg=spread / (2 * sinkhorn_module.KERNEL_MAX_SPREAD), method="sinkhorn", max_iter=5000)
    assert chosen[-1] is False


@pytest.mark.parametrize("same", [False, True])
def test_pairwise_sqeuclidean_gradient(gen, same):
    """The one-GEMM backward equals autograd through the expansion (gradcheck, float64), for two point sets and for
    the self-cost of one."""
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    if same:
        assert torch.autograd.gradcheck(lambda p: pairwise_sqeuclidean(p), (x,))
        torch.testing.assert_close(pairwise_sqeuclidean(x), sqeuclidean(x, x))
    else:
        assert torch.autograd.gradcheck(pairwise_sqeuclidean, (x, y))
        torch.testing.assert_close(pairwise_sqeuclidean(x, y), sqeuclidean(x, y))


def test_self_cost_gradient_matches_two_sided_autograd(gen):
    """OTDDCost's self-cost (x on both sides) backward: one GEMM with G + G^T, equal to differentiating both sides."""
    x = torch.randn(12, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(12, 12, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((OTDDCost(x, x).dense() * weights).sum(), x)
    x2 = x.detach().clone().requires_grad_()
    shifted = x2 - x2.mean(0)
    (expected,) = torch.autograd.grad((sqeuclidean(shifted, shifted.clone()) * weights).sum(), x2)
    torch.testing.assert_close(grad, expected)


def test_float32_polar_factor_matches_float64(gen):
    """The nuclear norm's polar factor formed in float32 from float64 eigenvectors is within float32 rounding of
    the float64 one, on rank-deficient class-pair products like those of the Gaussian label cost."""
    basis = torch.randn(2, 5, 40, generator=gen, dtype=torch.float64)
    factors = torch.randn(2, 30, 5, generator=gen, dtype=torch.float64) @ basis
    factors = factors - factors.mean(1, keepdim=True)
    products = (factors[0] @ factors[1].mT)[None]
    value64, polar64 = _nuclear_and_polar(products)
    value32, polar32 = _nuclear_and_polar(products.float())
    assert polar32.dtype == torch.float32
    torch.testing.assert_close(value32, value64, rtol=1e-6, atol=0)
    assert float((polar32.double() - polar64).norm() / polar64.norm()) < 1e-5
    torch.testing.assert_close(nuclear_norm(products[0]), value64[0])


def _shuffled_classes(gen, sizes, dim, dtype=torch.float64, shift=0.0, uniform_within=True):
    """Classes of the given sizes in a random point order, with random positive weights: one per class (the
    class masses differ), or one per point with ``uniform_within=False``."""
    from datasetflow import LabeledDataset

    labels = torch.cat([torch.full((size,), k) for k, size in enumerate(sizes)])
    order = torch.randperm(len(labels), generator=gen)
    means = 2.0 * torch.randn(len(sizes), dim, generator=gen, dtype=dtype)
    x = means[labels] + torch.randn(len(labels), dim, generator=gen, dtype=dtype) + shift
    weights = torch.rand(len(labels), generator=gen, dtype=dtype) + 0.5
    if uniform_within:
        weights = weights[labels]
    return LabeledDataset(x[order], labels[order].tolist(), weights=(weights / weights.sum())[order])


@pytest.mark.parametrize("self_cost", [False, True])
def test_shared_gram_ground_cost_equals_pairwise_and_otdd_cost(gen, self_cost):
    """The Gaussian label cost's shared-Gram path gives the label matrix of ``pairwise`` and the cost matrix of
    ``OTDDCost.dense()`` (unequal classes in a shuffled order, unequal class masses, both cost weights)."""
    from datasetflow.labels.costs import GaussianLabelCost

    source = _shuffled_classes(gen, [7, 9, 8], dim=12, shift=30.0)
    target = source if self_cost else _shuffled_classes(gen, [8, 6, 7, 8], dim=12, shift=31.0)
    cost = GaussianLabelCost()
    shared = cost.dense_ground_cost(source, target, feature_weight=0.7, label_weight=1.3)
    assert shared is not None
    labels = cost.pairwise(source) if self_cost else cost.pairwise(source, target)
    dense = OTDDCost(source.x, target.x, source.y, target.y, labels, feature_weight=0.7, label_weight=1.3).dense()
    torch.testing.assert_close(shared[0], labels, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(shared[1], dense, rtol=1e-12, atol=1e-9)


def test_shared_gram_ground_cost_gradcheck(gen):
    """gradcheck of the shared-Gram cost (through the class means, the factors and the Bures trace terms)."""
    from datasetflow.labels.costs import GaussianLabelCost

    source = _shuffled_classes(gen, [3, 4], dim=5)
    target = _shuffled_classes(gen, [4, 3], dim=5, shift=0.5)
    probe = torch.randn(len(source), len(target), generator=gen, dtype=torch.float64)

    def loss(x):
        _, matrix = GaussianLabelCost().dense_ground_cost(source.with_features(x), target)
        return (matrix * probe).sum()

    assert torch.autograd.gradcheck(loss, (source.x.clone().requires_grad_(),))


def test_otdd_with_and_without_the_shared_gram_agree(gen, monkeypatch):
    """Default otdd() (debiased, dense): the shared-Gram path gives the value and the gradient of the separate
    label and ground costs, in float64."""
    from datasetflow.labels.costs import GaussianLabelCost

    source = _shuffled_classes(gen, [10, 12, 11], dim=16)
    target = _shuffled_classes(gen, [12, 10, 11], dim=16, shift=0.7)
    calls = []
    shared = GaussianLabelCost.dense_ground_cost

    def spy(self, *args, **kwargs):
        calls.append(1)
        return shared(self, *args, **kwargs)

    def run():
        x = source.x.clone().requires_grad_()
        result = otdd(source.with_features(x), target)
        result.distance_squared.backward()
        return result.distance_squared.detach(), x.grad

    monkeypatch.setattr(GaussianLabelCost, "dense_ground_cost", spy)
    value, grad = run()
    assert len(calls) == 3  # the cross cost and both self-costs
    monkeypatch.setattr(GaussianLabelCost, "dense_ground_cost", lambda *args, **kwargs: None)
    reference, reference_grad = run()
    torch.testing.assert_close(value, reference, rtol=1e-10, atol=0)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-8, atol=1e-12)


def test_shared_gram_is_declined_where_its_layout_does_not_hold(gen):
    """None (the separate path) for a class larger than d, a single-sample class, a ridge, diagonal covariances,
    classes so unequal that the padded Gram would be much larger than the cost, and unequal weights within a
    class."""
    from datasetflow.labels.costs import GaussianLabelCost

    def declined(sizes, dim=6, uniform_within=True, **options):
        data = _shuffled_classes(gen, sizes, dim, uniform_within=uniform_within)
        other = _shuffled_classes(gen, [4, 4], dim)
        return GaussianLabelCost(**options).dense_ground_cost(data, other) is None

    assert not declined([4, 5])
    assert declined([4, 7])  # 7 > d = 6 samples: a covariance-factored class
    assert declined([1, 5])
    assert declined([4, 5], ridge=0.1)
    assert declined([4, 5], diagonal=True)
    assert declined([2, 2, 2, 6])  # 4 classes padded to 6 rows: 24 > 1.5 x 12
    assert declined([4, 5], uniform_within=False)  # per-point weights: no single scale per class pair
