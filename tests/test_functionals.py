"""Functionals: composition, closed-form gradients of the built-in potentials and interactions."""

from __future__ import annotations

import pytest
import torch

from datasetflow import LabeledDataset
from datasetflow.errors import InvalidArgumentError, ShapeMismatchError
from datasetflow.flows import FlowState
from datasetflow.functionals import (
    SumFunctional,
    ball_constraint,
    class_repulsion,
    collapse,
    entropy,
    hyperplane_margin,
    norm_potential,
    otdd_to,
    potential,
    quadratic_repulsion,
)

pytestmark = pytest.mark.fast


def _state(gen, n=12, dim=3, classes=2):
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    labels = [k % classes for k in range(n)]
    state = FlowState.from_dataset(LabeledDataset(x, labels))
    state.x.requires_grad_()
    return state


def _grad(functional, state):
    (grad,) = torch.autograd.grad(functional.value(state), state.x)
    return grad


def test_composition_adds_and_scales(gen):
    state = _state(gen)
    a, b = collapse([0]), ball_constraint([0.0, 0.0, 0.0], 0.5)
    combined = a + 2.0 * b + 0.5 * entropy(0.3)
    assert isinstance(combined, SumFunctional)
    expected = a.value(state) + 2.0 * b.value(state)
    torch.testing.assert_close(combined.value(state), expected)
    assert combined.noise() == pytest.approx(0.15)
    names = [(name, weight) for name, weight, _ in combined.terms()]
    assert names == [("collapse", 1.0), ("ball", 2.0), ("entropy", 0.5)]
    assert sum([a, b]).value(state).item() == pytest.approx((a.value(state) + b.value(state)).item())
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        a * -1.0


def test_norm_potential_gradient_closed_form(gen):
    state = _state(gen)
    w = state.weights[:, None]
    x = state.x.detach()
    torch.testing.assert_close(_grad(norm_potential(), state), w * x / x.norm(dim=1, keepdim=True))
    matrix = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    offset = torch.randn(3, generator=gen, dtype=torch.float64)
    residual = x @ matrix.T - offset
    expected = w * (residual / residual.norm(dim=1, keepdim=True)) @ matrix
    torch.testing.assert_close(_grad(norm_potential(matrix, offset), state), expected)
    only_class_one = _grad(norm_potential(classes=[1]), state)
    assert torch.all(only_class_one[state.y == 0] == 0)


def test_hyperplane_margin_gradient(gen):
    state = _state(gen)
    normal = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    sign = 2.0 * state.y.double() - 1.0
    active = (sign * (state.x.detach() @ normal - 0.3)) > 0
    expected = state.weights[:, None] * active[:, None] * sign[:, None] * normal
    torch.testing.assert_close(_grad(hyperplane_margin(normal, 0.3), state), expected)


def test_ball_constraint_gradient(gen):
    state = _state(gen)
    center = torch.tensor([0.2, 0.0, -0.1], dtype=torch.float64)
    diff = state.x.detach() - center
    dist = diff.norm(dim=1, keepdim=True)
    expected = state.weights[:, None] * (dist > 1.0) * diff / dist
    torch.testing.assert_close(_grad(ball_constraint(center, 1.0), state), expected)


def test_collapse_gradient(gen):
    state = _state(gen)
    expected = torch.zeros_like(state.x)
    expected[:, [0, 2]] = state.x.detach()[:, [0, 2]]
    torch.testing.assert_close(_grad(collapse([0, 2]), state), state.weights[:, None] * expected)


def test_class_repulsion_gradient(gen):
    state = _state(gen, n=6)
    x, y, w = state.x.detach(), state.y, state.weights
    expected = torch.zeros_like(x)
    for i in range(len(x)):
        for j in range(len(x)):
            if y[i] != y[j]:
                diff = x[i] - x[j]
                dist = diff.norm()
                # d/dx_i of 1/2 sum_kl w_k w_l exp(-|x_k - x_l|): both orderings contribute
                expected[i] += w[i] * w[j] * (-torch.exp(-dist) * diff / dist)
    torch.testing.assert_close(_grad(class_repulsion(), state), expected)


def test_quadratic_repulsion_gradient(gen):
    state = _state(gen, n=6)
    x, y, w = state.x.detach(), state.y, state.weights
    other = (y[:, None] != y[None, :]).double()
    expected = -2.0 * w[:, None] * ((other * w[None, :]).sum(1, keepdim=True) * x - (other * w[None, :]) @ x)
    torch.testing.assert_close(_grad(quadratic_repulsion(), state), expected)


def test_repulsion_gradient_finite_for_coincident_points(gen):
    state = _state(gen, n=4)
    with torch.no_grad():
        state.x[1] = state.x[0]
    assert torch.isfinite(_grad(class_repulsion(), state)).all()


def test_user_callables_and_shape_errors(gen):
    state = _state(gen)
    value = potential(lambda x, y: (x**2).sum(1)).value(state)
    assert value.item() == pytest.approx(float((state.weights * (state.x.detach() ** 2).sum(1)).sum()))
    with pytest.raises(ShapeMismatchError, match="one value per particle"):
        potential(lambda x, y: x).value(state)
    with pytest.raises(InvalidArgumentError, match="callable"):
        potential(3.0)
    with pytest.raises(InvalidArgumentError, match="sigma"):
        entropy(-1.0)


def test_otdd_to_target_is_half_squared_otdd(gen):
    from datasetflow import otdd

    state = _state(gen)
    target = LabeledDataset(torch.randn(10, 3, generator=gen, dtype=torch.float64) + 1, [0, 1] * 5)
    value = otdd_to(target, outer="exact").value(state)
    expected = otdd(state.dataset(), target, outer="exact").distance_squared
    assert value.item() == pytest.approx(0.5 * expected.item())
    with pytest.raises(InvalidArgumentError, match="LabeledDataset"):
        otdd_to(target.x)


def test_otdd_to_target_caches_fixed_target_terms(gen):
    """Later evaluations reuse the target's terms and the first regularisation, with the same value."""
    from datasetflow import otdd

    state = _state(gen)
    target = LabeledDataset(torch.randn(10, 3, generator=gen, dtype=torch.float64) + 1, [0, 1] * 5)
    functional = otdd_to(target, tol=1e-10)
    first = functional.value(state)
    reg = functional._cache["reg"]
    with torch.no_grad():
        state.x.add_(0.3)
    cached = functional.value(state)
    direct = otdd(state.dataset(), target, reg=reg, tol=1e-10).distance_squared
    assert cached.item() == pytest.approx(0.5 * direct.item(), rel=1e-9)
    assert first.item() != pytest.approx(cached.item())
    (grad_cached,) = torch.autograd.grad(cached, state.x)
    (grad_direct,) = torch.autograd.grad(
        0.5 * otdd(state.dataset(), target, reg=reg, tol=1e-10).distance_squared, state.x
    )
    torch.testing.assert_close(grad_cached, grad_direct, rtol=1e-6, atol=1e-9)


def test_builtin_shape_errors(gen):
    state = _state(gen)  # 3-d features
    with pytest.raises(ShapeMismatchError, match="center"):
        ball_constraint([0.0, 0.0], 1.0).value(state)
    with pytest.raises(ShapeMismatchError, match="out of range"):
        collapse([5]).value(state)
    with pytest.raises(ShapeMismatchError, match="normal"):
        hyperplane_margin([1.0, 0.0]).value(state)
    with pytest.raises(ShapeMismatchError, match="matrix"):
        norm_potential(torch.eye(2)).value(state)
