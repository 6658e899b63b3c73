"""OTDD and a flow step on real, full-size classes (more samples than dimensions), float32 against float64.

Issue 9 item 1: MNIST digits 3 and 5 (1,010 and 892 test images, d = 784) take the d x d path of the
Gaussian label cost; a float32 ``eigh`` used to fail to converge on them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from datasetflow import GaussianLabelCost, LabeledDataset, otdd, otdd_to, run_flow

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "mnist_test.npz").exists(), reason="full MNIST not in ../shared/data"),
]


def _digits(path, digits, dtype=torch.float32) -> LabeledDataset:
    with np.load(path, allow_pickle=False) as data:
        keep = np.isin(data["y"], digits)
        x = torch.as_tensor(data["x"][keep].reshape(int(keep.sum()), -1), dtype=torch.float64) / 255
        return LabeledDataset(x.to(dtype), data["y"][keep])


@pytest.fixture(scope="module")
def mnist_35():
    source = _digits(SHARED_DATA / "mnist_test.npz", [3, 5])
    target = _digits(SHARED_DATA / "fashion_mnist_test.npz", [0, 7])
    assert min(source.class_counts().tolist()) > source.dim  # both classes take the d x d path
    return source, target


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def test_full_size_classes_label_cost_float32_matches_float64(mnist_35):
    source, target = mnist_35
    stats = source.class_stats()
    assert stats.factors.shape[1] <= source.dim  # factored covariances, not a copy of the samples
    cost = GaussianLabelCost()
    lab32 = cost.pairwise(source, target)
    lab64 = cost.pairwise(source.to(dtype=torch.float64), target.to(dtype=torch.float64))
    assert torch.isfinite(lab32).all()
    assert _rel(lab32, lab64) < 1e-4
    # the eigen-factors reproduce the classes' covariances (torch.cov in float64)
    x64 = source.x.double()
    for c in range(2):
        members = x64[source.y == c]
        covariance = stats.covariance_matrices()[c].double()
        assert _rel(covariance, torch.cov(members.T)) < 1e-5


def test_full_size_classes_otdd_and_flow_step_float32_match_float64(mnist_35):
    source, target = mnist_35
    values, grads, steps = {}, {}, {}
    for dtype in (torch.float32, torch.float64):
        src, tgt = source.to(dtype=dtype), target.to(dtype=dtype)
        x = src.x.clone().requires_grad_()
        result = otdd(src.with_features(x), tgt)
        result.distance_squared.backward()
        values[dtype], grads[dtype] = result.distance_squared.detach(), x.grad
        flow = run_flow(otdd_to(tgt), src, steps=1)
        steps[dtype] = flow.final.x - src.x
    assert _rel(values[torch.float32], values[torch.float64]) < 1e-3
    assert _rel(grads[torch.float32], grads[torch.float64]) < 1e-3
    assert _rel(steps[torch.float32], steps[torch.float64]) < 1e-3
    assert float(steps[torch.float64].abs().max()) > 0
