"""LabeledDataset construction, label encoding and batched class statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasetflow import LabeledDataset
from datasetflow.errors import EmptyDatasetError, InvalidArgumentError, ShapeMismatchError

pytestmark = pytest.mark.fast


def test_images_are_flattened_and_shape_kept():
    x = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    ds = LabeledDataset(x, [0, 1, 0, 1, 1])
    assert ds.x.shape == (5, 6) and ds.feature_shape == (2, 3)
    assert ds.x.dtype == torch.get_default_dtype()
    assert torch.allclose(ds.weights.sum(), torch.tensor(1.0))


def test_non_contiguous_and_string_labels():
    ds = LabeledDataset(np.zeros((4, 2)), [7, 3, 7, 3])
    assert ds.classes == (3, 7) and ds.y.tolist() == [1, 0, 1, 0]
    assert ds.labels == [7, 3, 7, 3]
    names = LabeledDataset(np.zeros((3, 2)), np.array(["b", "a", "b"]))
    assert names.classes == ("a", "b")


def test_classes_as_names_for_index_labels():
    """The .npz convention: y indexes into classes."""
    ds = LabeledDataset(np.zeros((4, 2)), np.array([2, 0, 2, 1]), classes=["zero", "one", "two"])
    assert ds.labels == ["two", "zero", "two", "one"]


def test_explicit_class_order_by_value():
    ds = LabeledDataset(np.zeros((3, 2)), ["cat", "dog", "cat"], classes=["dog", "cat"])
    assert ds.y.tolist() == [1, 0, 1]


def test_unknown_label_and_empty_class_rejected():
    with pytest.raises(InvalidArgumentError, match="emu"):
        LabeledDataset(np.zeros((2, 2)), ["cat", "emu"], classes=["cat", "dog"])
    with pytest.raises(EmptyDatasetError, match="dog"):
        LabeledDataset(np.zeros((2, 2)), ["cat", "cat"], classes=["cat", "dog"])


def test_length_mismatches_rejected():
    with pytest.raises(ShapeMismatchError, match=r"x has 3 samples.*2 labels"):
        LabeledDataset(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ShapeMismatchError, match="weights"):
        LabeledDataset(np.zeros((3, 2)), [0, 1, 1], weights=[1.0, 2.0])
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        LabeledDataset(np.zeros((2, 2)), [0, 1], weights=[1.0, -2.0])


def test_class_stats_match_torch_cov(gen):
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    y[:3] = torch.tensor([0, 1, 2])
    ds = LabeledDataset(x, y)
    stats = ds.class_stats()
    covs = stats.covariance_matrices()
    for c in range(3):
        members = x[y == c]
        torch.testing.assert_close(stats.means[c], members.mean(0))
        torch.testing.assert_close(covs[c], torch.cov(members.T))
    assert stats.counts.tolist() == torch.bincount(y).tolist()
    biased = ds.class_stats(unbiased=False).covariance_matrices()
    members = x[y == 0]
    torch.testing.assert_close(biased[0], torch.cov(members.T, correction=0))


def test_weighted_class_stats_match_torch_cov_aweights(gen):
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    w = torch.rand(30, generator=gen, dtype=torch.float64) + 0.1
    y = [0] * 12 + [1] * 18
    stats = LabeledDataset(x, y, weights=w).class_stats()
    torch.testing.assert_close(stats.covariance_matrices()[1], torch.cov(x[12:].T, aweights=w[12:]))
    torch.testing.assert_close(stats.means[0], (w[:12, None] * x[:12]).sum(0) / w[:12].sum())
    torch.testing.assert_close(stats.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_class_stats_are_differentiable(gen):
    x = torch.randn(10, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    ds = LabeledDataset(x.detach(), [0] * 5 + [1] * 5).with_features(x)
    stats = ds.class_stats()
    (grad,) = torch.autograd.grad(stats.means.sum() + stats.covariance_matrices().sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_from_torch_dataset(gen):
    tensor_ds = torch.utils.data.TensorDataset(torch.randn(6, 2, 2, generator=gen), torch.tensor([0, 1, 0, 1, 2, 2]))
    ds = LabeledDataset.from_torch_dataset(tensor_ds)
    assert ds.x.shape == (6, 4) and ds.feature_shape == (2, 2) and ds.num_classes == 3


def test_subset_and_to(gen):
    ds = LabeledDataset(torch.randn(6, 2, generator=gen), ["a", "a", "b", "b", "c", "c"])
    sub = ds.subset(slice(0, 4))
    assert sub.classes == ("a", "b") and len(sub) == 4
    assert ds.to(dtype=torch.float64).x.dtype == torch.float64
    with pytest.raises(EmptyDatasetError):
        ds.subset(slice(0, 0))
