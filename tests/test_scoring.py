"""One-to-one class scoring, the classifier ensemble, affine augmentation and pseudo-label embeddings."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datasetflow import LabeledDataset
from datasetflow.errors import InvalidArgumentError, ShapeMismatchError
from datasetflow.labels import clustering_accuracy, confusion_counts, embed, pseudo_labels
from datasetflow.models import Ensemble, LeNet5, pretrained_mnist_lenet5, pretrained_mnist_provenance, train_classifier
from datasetflow.models._utils import random_affine

labels = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(labels)
def test_one_to_one_accuracy_is_the_best_permutation(pairs):
    truth = torch.tensor([a for a, _ in pairs])
    predicted = torch.tensor([b for _, b in pairs])
    score, naming = clustering_accuracy(truth, predicted, n_true=4, n_predicted=4)
    best = max(sum(int(p == perm[t]) for t, p in pairs) for perm in itertools.permutations(range(4))) / len(pairs)
    assert score == pytest.approx(best)
    assert sorted(naming.tolist()) == [0, 1, 2, 3]  # one to one
    many, _ = clustering_accuracy(truth, predicted, rule="many-to-one", n_true=4, n_predicted=4)
    assert many >= score - 1e-12


@settings(max_examples=40, deadline=None)
@given(labels, st.permutations(range(4)))
def test_one_to_one_accuracy_ignores_renaming_the_predictions(pairs, perm):
    truth = torch.tensor([a for a, _ in pairs])
    predicted = torch.tensor([b for _, b in pairs])
    renamed = torch.tensor(perm)[predicted]
    assert clustering_accuracy(truth, predicted, n_predicted=4)[0] == pytest.approx(
        clustering_accuracy(truth, renamed, n_predicted=4)[0]
    )


def test_many_to_one_rewards_merging_and_one_to_one_does_not():
    truth = torch.tensor([0, 0, 1, 1, 2, 2])
    merged = torch.zeros(6, dtype=torch.long)
    assert clustering_accuracy(truth, merged)[0] == pytest.approx(1 / 3)
    assert clustering_accuracy(truth, merged, rule="many-to-one")[0] == 1.0
    counts = confusion_counts(truth, merged, 3, 3)
    assert counts.tolist() == [[2, 0, 0], [2, 0, 0], [2, 0, 0]]
    with pytest.raises(InvalidArgumentError, match="rule"):
        clustering_accuracy(truth, merged, rule="argmax")
    with pytest.raises(ShapeMismatchError, match="same length"):
        clustering_accuracy(truth, merged[:3])


def test_ensemble_averages_probabilities():
    torch.manual_seed(0)
    members = [LeNet5(num_classes=10) for _ in range(3)]
    x = torch.rand(5, 784)
    out = Ensemble(members)(x)
    expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
    torch.testing.assert_close(out.exp(), expected)
    assert Ensemble(members).features(x).shape == (5, 3 * 84)
    with pytest.raises(InvalidArgumentError, match="members"):
        Ensemble([])


def test_packaged_classifier_and_its_provenance():
    classifier = pretrained_mnist_lenet5()
    provenance = pretrained_mnist_provenance()
    assert len(classifier.model.members) == len(provenance["seeds"])
    assert provenance["heldout_accuracy"] >= 0.99  # the goal it was trained for, recorded when it was made
    assert provenance["heldout_accuracy"] >= max(provenance["member_heldout_accuracy"]) - 0.005


def test_random_affine_is_seeded_and_keeps_shape():
    images = torch.rand(4, 1, 28, 28)
    a = random_affine(images, torch.Generator().manual_seed(3))
    b = random_affine(images, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert a.shape == images.shape and not torch.allclose(a, images)
    identity = random_affine(images, torch.Generator(), degrees=0, scale=(1, 1), shear=0, translate=0)
    torch.testing.assert_close(identity, images, atol=1e-5, rtol=0)


def test_train_classifier_affine_onecycle_and_bad_options():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 28, 28, generator=g)
    data = LabeledDataset(x, [k % 2 for k in range(40)])
    model, history = train_classifier(data, epochs=2, augment="affine", schedule="onecycle")
    assert len(history["loss"]) == 2
    with pytest.raises(InvalidArgumentError, match="augment"):
        train_classifier(data, epochs=1, augment="mixup")
    with pytest.raises(InvalidArgumentError, match="schedule"):
        train_classifier(data, epochs=1, schedule="cosine")


def _two_kinds_of_images(per_class=30, seed=0):
    """Horizontal against vertical bars (with noise): HOG separates them exactly."""
    g = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.rand(2 * per_class, 28, 28, generator=g)
    for i in range(2 * per_class):
        offset = int(torch.randint(6, 20, (1,), generator=g))
        if i < per_class:
            images[i, offset : offset + 3, 4:24] = 1.0
        else:
            images[i, 4:24, offset : offset + 3] = 1.0
    return LabeledDataset(images, [0] * per_class + [1] * per_class)


@pytest.mark.parametrize(("embedding", "method"), [("hog", "kmeans"), ("hog+pca", "gmm")])
def test_pseudo_label_embeddings_separate_bar_orientations(embedding, method):
    if embedding.startswith("hog"):
        pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    data = _two_kinds_of_images()
    clusters = pseudo_labels(data, 2, embedding=embedding, method=method, n_components=2, seed=0)
    assert clustering_accuracy(data.y, clusters.y)[0] == 1.0


def test_consensus_pseudo_labels_agree_with_a_stable_single_run_and_validate():
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]])
    x = torch.cat([c + 0.5 * torch.randn(25, 2, generator=g) for c in centres])
    truth = torch.arange(4).repeat_interleave(25)
    data = LabeledDataset(x, truth)
    single = pseudo_labels(data, 4, method="kmeans", seed=0)
    merged = pseudo_labels(data, 4, method="kmeans", seed=0, consensus=5)
    # well-separated blobs: every run finds them, so the co-association is 0/1 and its clusters are the blobs
    assert clustering_accuracy(truth, merged.y)[0] == 1.0
    assert clustering_accuracy(single.y, merged.y)[0] == 1.0
    assert merged.num_classes == 4 and merged.x.shape == x.shape
    with pytest.raises(InvalidArgumentError, match="consensus"):
        pseudo_labels(data, 4, consensus=0)


def test_consensus_labels_keep_what_most_partitions_agree_on():
    pytest.importorskip("sklearn")
    from datasetflow.labels import consensus_labels

    # two of three runs split {0,1,2} | {3,4,5}; the third moves sample 3 (and renames its clusters)
    runs = [[0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1]]
    codes = consensus_labels(torch.tensor(runs), 2)
    assert clustering_accuracy(torch.tensor([0, 0, 0, 1, 1, 1]), torch.as_tensor(codes))[0] == 1.0
    with pytest.raises(ShapeMismatchError, match="partitions"):
        consensus_labels(torch.zeros(6), 2)
    with pytest.raises(InvalidArgumentError, match="n_clusters"):
        consensus_labels(torch.zeros(1, 3), 4)


def test_autoencoder_codes_are_seeded_and_reconstruct():
    from datasetflow.labels.embeddings import autoencoder_codes

    data = _two_kinds_of_images(per_class=20)
    a = autoencoder_codes(data.x, (28, 28), epochs=3, seed=1)
    b = autoencoder_codes(data.x, (28, 28), epochs=3, seed=1)
    assert a.shape == (40, 32) and a.dtype == data.x.dtype
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, autoencoder_codes(data.x, (28, 28), epochs=3, seed=2))


def test_embedding_pipeline_errors():
    x = torch.rand(10, 784)
    with pytest.raises(InvalidArgumentError, match="embedding"):
        embed(x, "hog+sift", feature_shape=(28, 28))
    with pytest.raises(InvalidArgumentError, match="only come first"):
        embed(x, "pca+hog", feature_shape=(28, 28))
    with pytest.raises(InvalidArgumentError, match="feature_shape"):
        embed(x, "autoencoder")
    with pytest.raises(ShapeMismatchError, match="grayscale"):
        embed(x, "hog", feature_shape=(3, 28, 28)[1:] + (1,))


def test_convnet3_shapes_and_instance_norm():
    from datasetflow.models import ConvNet

    torch.manual_seed(0)
    net = ConvNet(num_classes=10, width=8, depth=3)
    assert net(torch.rand(4, 784)).shape == (4, 10)
    assert net.head.in_features == 8 * 3 * 3
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 3 and all(m.num_groups == m.num_channels == 8 for m in norms)  # one group per channel
    # instance norm: scaling one image's pixels does not change its first-block activations after the norm
    x = torch.rand(2, 1, 28, 28)
    first = net.body[:2]
    torch.testing.assert_close(first(x), first(torch.cat([3 * x[:1], x[1:]])), atol=1e-3, rtol=1e-3)
    with pytest.raises(InvalidArgumentError, match="too small"):
        ConvNet(image_size=4, depth=3)
