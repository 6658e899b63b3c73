"""Learning components: LeNet-5, frozen classifiers, class correspondences, pseudo-labels, h_flow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from datasetflow import LabeledDataset, otdd
from datasetflow.errors import InvalidArgumentError, ShapeMismatchError
from datasetflow.flows import FlowResult, Trajectory
from datasetflow.labels import (
    align_pseudo_labels,
    class_correspondence,
    label_distance_matrix,
    match_classes,
    pseudo_labels,
)
from datasetflow.models import (
    CorrespondenceHead,
    FrozenClassifier,
    LeNet5,
    PushForwardMap,
    accuracy,
    predict,
    train_classifier,
)

pytestmark = pytest.mark.fast

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pattern_images(per_class: int, seed: int, size: int = 28, device: str = "cpu") -> LabeledDataset:
    """Three easy classes of ``size x size`` images: a horizontal bar, a vertical bar, a square frame."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.zeros(3, size, size)
    mid = size // 2
    base[0, mid - 2 : mid + 2, 4:-4] = 1.0
    base[1, 4:-4, mid - 2 : mid + 2] = 1.0
    base[2, 6:-6, 6:8] = base[2, 6:-6, -8:-6] = base[2, 6:8, 6:-6] = base[2, -8:-6, 6:-6] = 1.0
    x = base.repeat_interleave(per_class, 0) + 0.2 * torch.randn(3 * per_class, size, size, generator=gen)
    y = [name for name in ("bar-h", "bar-v", "frame") for _ in range(per_class)]
    return LabeledDataset(x, y, device=device)


def blobs(per_class: list[int], dim: int, seed: int, spread: float = 10.0, names=None) -> LabeledDataset:
    """Well-separated Gaussian blobs (unit-scale noise 0.3) with ``per_class[c]`` samples in class ``c``."""
    gen = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(len(per_class), dim, generator=gen, dtype=torch.float64)
    counts = torch.as_tensor(per_class)
    x = means.repeat_interleave(counts, 0) + 0.3 * torch.randn(
        int(counts.sum()), dim, generator=gen, dtype=torch.float64
    )
    names = names or list(range(len(per_class)))
    return LabeledDataset(x, [names[c] for c, k in enumerate(per_class) for _ in range(k)])


# ---------------------------------------------------------------------------- LeNet-5 and its training


@pytest.mark.parametrize("device", DEVICES)
def test_lenet_learns_easy_patterns(device):
    train = pattern_images(24, seed=0, device=device)
    test = pattern_images(20, seed=1, device=device)
    model, history = train_classifier(train, epochs=3, batch_size=16, validation=test)
    assert set(history) == {"loss", "accuracy", "val_accuracy"} and len(history["loss"]) == 3
    assert history["loss"][-1] < history["loss"][0]
    assert accuracy(model, test) >= 0.95
    assert history["val_accuracy"][-1] == pytest.approx(accuracy(model, test))
    labels = predict(model, test)
    assert labels.dtype == torch.long and labels.shape == (60,) and labels.device == test.x.device
    assert model.features(test.x[:5]).shape == (5, 84)


def test_lenet_shapes_for_28_32_and_channels_last():
    assert LeNet5(10, 1, 28)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert LeNet5(4, 3, 32)(torch.zeros(2, 3 * 32 * 32)).shape == (2, 4)
    assert LeNet5(3, 1, 16).features(torch.zeros(2, 256)).shape == (2, 84)
    hwc = LeNet5.for_feature_shape((32, 32, 3), num_classes=5)
    assert hwc.channels_last and hwc.image_shape == (3, 32, 32)
    images = torch.randn(2, 3, 32, 32)
    flat_hwc = images.permute(0, 2, 3, 1).reshape(2, -1)
    torch.testing.assert_close(hwc(flat_hwc), hwc(images))
    with pytest.raises(ShapeMismatchError, match="feature_shape"):
        LeNet5.for_feature_shape((7,))


def test_train_classifier_is_seeded_and_validates():
    data = pattern_images(6, seed=2)
    first, h1 = train_classifier(data, epochs=1, batch_size=8, seed=3, augment=True)
    second, h2 = train_classifier(data, epochs=1, batch_size=8, seed=3, augment=True)
    other, _ = train_classifier(data, epochs=1, batch_size=8, seed=4, augment=True)
    assert h1 == h2
    params, same, different = (m.state_dict() for m in (first, second, other))
    assert all(torch.equal(params[name], same[name]) for name in params)
    assert not all(torch.equal(params[name], different[name]) for name in params)
    _, progress = train_classifier(data, epochs=1, batch_size=8, seed=3, augment=True, progress=True)
    assert progress == h1
    with pytest.raises(InvalidArgumentError, match=r"\('adam', 'adamw'\)"):
        train_classifier(data, epochs=1, optimizer="sgd")
    with pytest.raises(ShapeMismatchError, match="3 classes"):
        train_classifier(data, model=LeNet5(num_classes=2), epochs=1)


def test_accuracy_on_a_hand_built_case():
    # the "model" predicts the class stored in the first feature
    def oracle(x):
        return nn.functional.one_hot(x[:, 0].long(), 3).double()

    data = LabeledDataset(torch.tensor([[0.0, 9], [1, 9], [2, 9], [2, 9]]), ["a", "b", "c", "a"])
    assert accuracy(oracle, data) == pytest.approx(0.75)
    # outputs named differently from the dataset's order: output j is ("c", "a", "b")[j]
    assert accuracy(oracle, data, target_classes=("c", "a", "b")) == pytest.approx(0.0)
    assert accuracy(oracle, data, target_classes=("a", "b", "z")) == pytest.approx(0.5)
    torch.testing.assert_close(predict(oracle, data.x, batch_size=3), torch.tensor([0, 1, 2, 2]))


def test_frozen_classifier_keeps_eval_mode_and_passes_input_gradients():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    frozen = FrozenClassifier(model).train()
    assert not frozen.training and not model.training
    assert not any(p.requires_grad for p in frozen.parameters())
    x = torch.randn(5, 4, requires_grad=True)
    frozen(x).sum().backward()
    assert x.grad is not None and torch.equal(frozen(x), frozen(x))


# ---------------------------------------------------------------------------- class correspondence


def test_class_correspondence_is_a_coupling_of_the_class_histograms():
    source = blobs([5, 9, 14], dim=3, seed=0)  # k' = 3
    target = blobs([7, 11], dim=3, seed=1, names=["p", "q"])  # k = 2
    for method in ("exact", "sinkhorn"):
        pi = class_correspondence(source, target, method=method)
        tol = 1e-6 if method == "exact" else 1e-4
        assert pi.shape == (3, 2) and bool((pi >= 0).all())
        torch.testing.assert_close(pi.sum(1), source.class_weights(), atol=tol, rtol=0)
        torch.testing.assert_close(pi.sum(0), target.class_weights(), atol=tol, rtol=0)
    distances = otdd(source, target).label_distances
    torch.testing.assert_close(label_distance_matrix(source, target), distances)
    torch.testing.assert_close(class_correspondence(source, target, distances), class_correspondence(source, target))
    elsewhere = blobs([4, 4], dim=7, seed=2)  # a precomputed cost needs no common feature space
    assert class_correspondence(source, elsewhere, torch.rand(3, 2, dtype=torch.float64)).shape == (3, 2)


def test_class_correspondence_recovers_a_relabelling():
    source = blobs([10, 10, 10, 10], dim=5, seed=3, names=["w", "x", "y", "z"])
    perm = torch.tensor([2, 0, 3, 1])  # source class i is target class perm[i]
    target = LabeledDataset(source.x, perm[source.y], classes=[0, 1, 2, 3])
    pi = class_correspondence(source, target)
    torch.testing.assert_close(pi * 4, nn.functional.one_hot(perm, 4).double(), atol=1e-9, rtol=0)
    # the coupling maps a perfect classifier of the target's classes to the source's classes
    assert accuracy(lambda x: nn.functional.one_hot(perm[source.y], 4).double(), source, correspondence=pi) == 1.0


def test_correspondence_head_maps_k_classes_to_k_prime():
    # classifier classes (k = 3) -> flow-source classes (k' = 2): classes 0, 1 -> 0 and class 2 -> 1
    pi = torch.tensor([[0.3, 0.2, 0.0], [0.0, 0.1, 0.4]], dtype=torch.float64)
    model = nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(10 * torch.eye(3, dtype=torch.float64))  # a perfect classifier of one-hot inputs
    head = CorrespondenceHead(model, pi)
    x = torch.eye(3, dtype=torch.float64)
    q = head(x)
    assert q.shape == (3, 2)
    torch.testing.assert_close(q.sum(1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(q, model(x).softmax(1) @ (pi / pi.sum(0)).T)
    assert predict(head, x).tolist() == [0, 0, 1]
    assert head.num_classes == 2 and not any(p.requires_grad for p in model.parameters())
    probs = CorrespondenceHead(lambda z: z, pi, model_output="probs")
    torch.testing.assert_close(probs(x), torch.tensor([[1.0, 0.0], [2 / 3, 1 / 3], [0.0, 1.0]], dtype=torch.float64))
    with pytest.raises(ShapeMismatchError, match="3 columns"):
        CorrespondenceHead(lambda z: z[:, :2], pi)(x)
    with pytest.raises(InvalidArgumentError, match="no mass"):
        CorrespondenceHead(model, torch.tensor([[1.0, 0.0, 0.0]]))
    with pytest.raises(InvalidArgumentError, match=r"\('logits', 'probs'\)"):
        CorrespondenceHead(model, pi, model_output="scores")


def test_match_classes_recovers_a_hidden_permutation():
    gen = torch.Generator().manual_seed(5)
    points = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    perm = torch.randperm(6, generator=gen)
    shuffled = points[perm] + 0.01 * torch.randn(6, 4, generator=gen, dtype=torch.float64)
    cost = torch.cdist(points, shuffled) ** 2  # row i is closest to the column j with perm[j] = i
    assert torch.equal(match_classes(cost), torch.argsort(perm))
    merged = torch.cdist(points[[0, 0, 1, 1]] + 0.01, points[:2])  # four rows, two columns
    assert match_classes(merged).tolist() == [0, 0, 1, 1]
    with pytest.raises(ShapeMismatchError, match="2-d"):
        match_classes(torch.zeros(3))


def test_correspondence_validates_arguments():
    source, target = blobs([4, 4], dim=2, seed=6), blobs([4, 4, 4], dim=2, seed=7)
    with pytest.raises(InvalidArgumentError, match=r"\('exact', 'sinkhorn'\)"):
        class_correspondence(source, target, method="greedy")
    with pytest.raises(ShapeMismatchError, match=r"\(2, 3\)"):
        class_correspondence(source, target, torch.zeros(3, 2))
    with pytest.raises(InvalidArgumentError, match="takes no reg"):
        class_correspondence(source, target, reg=0.1)
    with pytest.raises(ShapeMismatchError, match="dimensions"):
        class_correspondence(source, blobs([4], dim=3, seed=8))


# ---------------------------------------------------------------------------- pseudo-labels


@pytest.mark.parametrize(
    ("embedding", "cost"),
    [(None, "means"), (None, "otdd"), ("pca", "means"), (lambda x: x[:, :4] * 2, "otdd")],
)
def test_pseudo_labels_and_alignment_recover_true_labels(embedding, cost):
    truth = blobs([20, 25, 30], dim=8, seed=9, names=["cat", "dog", "emu"])
    pseudo = pseudo_labels(truth, 3, embedding=embedding, n_components=3)
    assert pseudo.num_classes == 3 and torch.equal(pseudo.x, truth.x)
    aligned = align_pseudo_labels(pseudo, truth, cost=cost)
    assert aligned.labels == truth.labels and aligned.classes == truth.classes
    assert accuracy(lambda x: nn.functional.one_hot(aligned.y, 3).double(), truth) == 1.0


def test_pseudo_labels_of_a_tensor_and_of_images_keep_shapes():
    images = pattern_images(5, seed=10)
    pseudo = pseudo_labels(images.x.reshape(15, 28, 28), 3, embedding="pca", n_components=5, seed=1)
    assert pseudo.feature_shape == (28, 28) and len(pseudo) == 15
    aligned = align_pseudo_labels(pseudo, images, cost="means")
    assert aligned.labels == images.labels


def test_pseudo_labels_validate_arguments():
    data = blobs([3, 3], dim=2, seed=11)
    with pytest.raises(InvalidArgumentError, match="n_clusters"):
        pseudo_labels(data, 0)
    with pytest.raises(InvalidArgumentError, match="exceeds"):
        pseudo_labels(data, 7)
    with pytest.raises(InvalidArgumentError, match=r"\('kmeans', 'gmm'\)"):
        pseudo_labels(data, 2, method="dbscan")
    with pytest.raises(InvalidArgumentError, match=r"\('pca', 'hog', 'autoencoder', 'umap'\)"):
        pseudo_labels(data, 2, embedding="tsne")
    with pytest.raises(InvalidArgumentError, match=r"\('otdd', 'means'\)"):
        align_pseudo_labels(data, data, cost="hamming")
    with pytest.raises(ShapeMismatchError, match="feature dimensions"):
        align_pseudo_labels(data, blobs([3], dim=3, seed=12))


# ---------------------------------------------------------------------------- learned push-forward h_flow


@pytest.mark.parametrize("device", DEVICES)
def test_push_forward_map_learns_an_affine_map(device):
    gen = torch.Generator().manual_seed(13)
    dim = 4
    matrix = torch.eye(dim, dtype=torch.float64) + 0.5 * torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    shift = torch.randn(dim, generator=gen, dtype=torch.float64)
    x0 = torch.randn(512, dim, generator=gen, dtype=torch.float64).to(device)
    xT = x0 @ matrix.T.to(device) + shift.to(device)
    fitted = PushForwardMap(hidden=64, epochs=60, batch_size=64, lr=3e-3, seed=0).fit(x0, xT)
    test = torch.randn(200, dim, generator=gen, dtype=torch.float64).to(device)
    expected = test @ matrix.T.to(device) + shift.to(device)
    mapped = fitted.transform(test)
    assert mapped.shape == (200, dim) and mapped.device == test.device and mapped.dtype == torch.float64
    relative = (mapped - expected).norm() / (expected - test).norm()  # relative to the displacement
    assert relative < 0.05, float(relative)
    torch.testing.assert_close(fitted(test), mapped)
    assert len(fitted.history_) == 60 and fitted.history_[-1] < fitted.history_[0]


def test_push_forward_map_conv_and_dataset_pairs():
    start = pattern_images(4, seed=14, size=12)
    end = start.with_features(1.0 - start.x)
    fitted = PushForwardMap("conv", hidden=16, epochs=2, batch_size=4).fit((start, end))
    assert fitted.feature_shape_ == (12, 12)
    assert fitted.transform(start).shape == (12, 144)
    again = PushForwardMap("conv", hidden=16, epochs=2, batch_size=4).fit(start, end)
    torch.testing.assert_close(again.transform(start.x), fitted.transform(start.x))
    trajectory = Trajectory(steps=(0, 9), feature_shape=(12, 12), positions=(start.x, end.x), labels=(start.y,) * 2)
    result = FlowResult(end, [], {}, 9, "steps", trajectory, [], end.classes, 0.0)
    from_result = PushForwardMap("conv", hidden=16, epochs=2, batch_size=4).fit(result)
    torch.testing.assert_close(from_result.transform(start.x), fitted.transform(start.x))
    custom = PushForwardMap(nn.Linear(144, 144), epochs=1, residual=False).fit(start.x, end.x)
    assert custom.transform(start.x).shape == (12, 144)


def test_push_forward_map_validates_arguments():
    x = torch.randn(10, 3)
    with pytest.raises(ShapeMismatchError, match=r"\(10, 3\) and \(9, 3\)"):
        PushForwardMap().fit(x, x[:9])
    with pytest.raises(InvalidArgumentError, match=r"\('mlp', 'conv'\)"):
        PushForwardMap("transformer").fit(x, x)
    with pytest.raises(InvalidArgumentError, match="not fitted"):
        PushForwardMap().transform(x)
    with pytest.raises(InvalidArgumentError, match="epochs"):
        PushForwardMap(epochs=0).fit(x, x)
    with pytest.raises(InvalidArgumentError, match="FlowResult"):
        PushForwardMap().fit(x)
    with pytest.raises(ShapeMismatchError, match="feature_shape"):
        PushForwardMap("conv", epochs=1).fit(x, x)
    fitted = PushForwardMap(epochs=1, hidden=4).fit(x, x)
    with pytest.raises(ShapeMismatchError, match="dimension 3"):
        fitted.transform(torch.randn(2, 5))
