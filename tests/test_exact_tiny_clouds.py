"""The closed-form exact label cost for clouds of one or two points equals POT's network simplex."""

from __future__ import annotations

import pytest
import torch

from datasetflow import ExactLabelCost, LabeledDataset, OTDDCost, solve, wow
from datasetflow.labels.costs import ClassClouds

pytestmark = pytest.mark.fast


def _pot_matrix(clouds1: ClassClouds, clouds2: ClassClouds) -> torch.Tensor:
    """Every pair through POT's network simplex (the path of larger clouds)."""
    rows = []
    for x1, w1 in zip(clouds1.points, clouds1.weights, strict=True):
        pairs = zip(clouds2.points, clouds2.weights, strict=True)
        rows.append(torch.stack([solve(OTDDCost(x1, x2), w1, w2, method="exact").value for x2, w2 in pairs]))
    return torch.stack(rows)


def _dataset(gen, sizes, dim=3, weighted=True):
    labels = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    x = torch.randn(len(labels), dim, generator=gen, dtype=torch.float64)
    weights = torch.rand(len(labels), generator=gen, dtype=torch.float64) + 0.1 if weighted else None
    return LabeledDataset(x, labels, weights=weights)


def test_two_point_closed_form_equals_network_simplex(gen):
    source = _dataset(gen, [2, 1, 2, 2, 1, 2])
    target = _dataset(gen, [1, 2, 2, 2, 1])
    cost = ExactLabelCost()
    first, second = cost.summarize(source), cost.summarize(target)
    torch.testing.assert_close(cost.pairwise(first, second), _pot_matrix(first, second), rtol=1e-10, atol=1e-12)
    symmetric = cost.pairwise(first)
    reference = _pot_matrix(first, first)
    torch.testing.assert_close(symmetric, reference - torch.diag_embed(reference.diagonal()), rtol=1e-10, atol=1e-12)
    assert torch.all(symmetric.diagonal() == 0)


def test_two_point_closed_form_gradients_equal_the_envelope_ones(gen):
    source = _dataset(gen, [2, 2, 1, 2])
    target = _dataset(gen, [2, 1, 2])
    x = source.x.clone().requires_grad_()
    moved = source.with_features(x)
    cost = ExactLabelCost()
    (fast,) = torch.autograd.grad(cost.pairwise(moved, target).sum(), x)
    (slow,) = torch.autograd.grad(_pot_matrix(cost.summarize(moved), cost.summarize(target)).sum(), x)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


def test_mixed_cloud_sizes_use_both_paths(gen):
    source = _dataset(gen, [2, 5, 1])
    target = _dataset(gen, [4, 2])
    cost = ExactLabelCost()
    first, second = cost.summarize(source), cost.summarize(target)
    torch.testing.assert_close(cost.pairwise(first, second), _pot_matrix(first, second), rtol=1e-10, atol=1e-12)


def test_wow_with_many_two_point_classes(gen):
    source = _dataset(gen, [2] * 60, dim=5, weighted=False)
    target = _dataset(gen, [2] * 50, dim=5, weighted=False)
    result = wow(source, target)
    assert result.class_costs.shape == (60, 50)
    first, second = ExactLabelCost().summarize(source), ExactLabelCost().summarize(target)
    torch.testing.assert_close(result.class_costs[:5, :5], _pot_matrix(first, second)[:5, :5], rtol=1e-10, atol=1e-12)
