"""Model re-purposing: the library function, the embedded classifier and the CLI command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import invoke_cli
from datasetflow import LabeledDataset, load_dataset
from datasetflow.errors import InvalidArgumentError
from datasetflow.models import LeNet5, accuracy, pretrained_mnist_lenet5, repurpose


def _blobs(means, per_class=15, seed=0, labels=None) -> LabeledDataset:
    g = torch.Generator().manual_seed(seed)
    centres = torch.as_tensor(means, dtype=torch.float64)
    x = centres.repeat_interleave(per_class, 0) + 0.3 * torch.randn(
        len(centres) * per_class, 2, generator=g, dtype=torch.float64
    )
    names = labels or list(range(len(centres)))
    return LabeledDataset(x, [names[k] for k in range(len(centres)) for _ in range(per_class)])


class NearestMean(torch.nn.Module):
    """Scores: minus the squared distance to each target class mean (a 'frozen classifier')."""

    def __init__(self, target: LabeledDataset) -> None:
        super().__init__()
        self.means = target.class_stats().means.detach()

    def forward(self, x):
        return -(torch.cdist(x.to(self.means), self.means) ** 2)


TARGET_MEANS = [[0.0, 0.0], [3.0, 0.0], [6.0, 0.0]]
SOURCE_MEANS = [[2.5, 0.0], [5.5, 0.0], [8.5, 0.0]]  # shifted by 2.5: two classes misclassified before


def test_supervised_flow_fixes_a_shifted_domain():
    target, source = _blobs(TARGET_MEANS, seed=1), _blobs(SOURCE_MEANS, seed=2)
    result = repurpose(
        source,
        target,
        NearestMean(target),
        steps=30,
        step_size=0.5,
        eval_every=10,
        functional_options={"outer": "exact"},
    )
    assert result.naming == "names"
    assert result.accuracy_before < 0.5
    assert result.accuracy_after == 1.0
    assert [s for s, _ in result.curve] == [0, 10, 20, 30]
    summary = result.to_dict()
    assert json.dumps(summary) and summary["accuracy_after"] == 1.0


def test_correspondence_naming_and_pseudo_labels():
    target = _blobs(TARGET_MEANS, seed=1)
    source = _blobs(SOURCE_MEANS, seed=2, labels=["a", "b", "c"])
    supervised = repurpose(
        source, target, NearestMean(target), steps=30, step_size=0.5, functional_options={"outer": "exact"}
    )
    assert supervised.naming == "hungarian"  # label sets differ: one-to-one naming by default
    assert supervised.matching_after == [0, 1, 2]  # a -> 0, b -> 1, c -> 2 (the shifted copies)
    assert supervised.accuracy_after == 1.0 and supervised.many_to_one_after == 1.0
    coupled = repurpose(
        source,
        target,
        NearestMean(target),
        steps=30,
        step_size=0.5,
        naming="correspondence",
        functional_options={"outer": "exact"},
    )
    assert coupled.matching_after == [0, 1, 2] and coupled.accuracy_after == 1.0
    unsupervised = repurpose(
        source,
        target,
        NearestMean(target),
        steps=30,
        step_size=0.5,
        flow_labels="kmeans",
        functional_options={"outer": "exact"},
    )
    assert unsupervised.pseudo_label_accuracy == 1.0 and unsupervised.accuracy_after == 1.0
    wow_flow = repurpose(
        source,
        target,
        NearestMean(target),
        objective="mmd-sw",
        steps=60,
        step_size=0.02,
        functional_options={"n_projections": 50},
    )
    assert wow_flow.accuracy_after > wow_flow.accuracy_before


class Constant(torch.nn.Module):
    """A 'classifier' that predicts class 0 for everything."""

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 3).to(x.dtype)


def test_one_to_one_scoring_does_not_reward_a_constant_prediction():
    target = _blobs(TARGET_MEANS, seed=1)
    source = _blobs(SOURCE_MEANS, seed=2, labels=["a", "b", "c"])
    result = repurpose(source, target, Constant(), steps=2, step_size=0.1, functional_options={"outer": "exact"})
    assert result.accuracy_after == pytest.approx(1 / 3)  # only one class can be named "0"
    assert result.many_to_one_after == 1.0  # the many-to-one rule names every class "0"
    assert result.to_dict()["many_to_one_after"] == 1.0


def test_bad_arguments():
    target, source = _blobs(TARGET_MEANS), _blobs(SOURCE_MEANS, labels=["a", "b", "c"])
    with pytest.raises(InvalidArgumentError, match="objective"):
        repurpose(source, target, NearestMean(target), objective="kl")
    with pytest.raises(InvalidArgumentError, match="flow_labels"):
        repurpose(source, target, NearestMean(target), flow_labels="dbscan")
    with pytest.raises(InvalidArgumentError, match="missing"):
        repurpose(source, target, NearestMean(target), naming="names")


def test_embedded_classifier_recognises_the_embedded_mnist_subset():
    classifier = pretrained_mnist_lenet5()
    assert not any(p.requires_grad for p in classifier.parameters())
    assert accuracy(classifier, load_dataset("mnist-mini")) >= 0.95  # it never saw these images


@pytest.mark.slow
def test_cli_repurpose_writes_results_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    result = invoke_cli("repurpose", "--steps", "3", "--max-samples", "120", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "accuracy  before" in result.stdout
    payload = json.loads((out / "result.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "curve", "objective", "source", "target", "figures"):
        assert key in payload
    assert 0.0 <= payload["accuracy_before"] <= 1.0 and len(payload["objective"]) == 3
    assert payload["figures"] == ["images.png", "objective.png", "accuracy.png"]
    with np.load(out / "final.npz", allow_pickle=False) as final:
        assert final["x"].shape == (120, 28, 28)


@pytest.mark.fast
def test_cli_repurpose_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save(LeNet5(num_classes=3).state_dict(), bad)
    result = invoke_cli("repurpose", "--classifier", bad, "--steps", "1", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "not a LeNet5 state dict for 10 classes" in result.stderr
    result = invoke_cli("repurpose", "usps-mini", "fashion-mnist-mini", "--resize", "28x28", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "embedded classifier is an MNIST LeNet-5" in result.stderr
