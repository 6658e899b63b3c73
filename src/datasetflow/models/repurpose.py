r"""Model re-purposing: flow a dataset to the domain a frozen classifier was trained on (paper §7.3).

A classifier :math:`f` trained on the target dataset :math:`\beta` (classes :math:`1..k`) is
kept frozen. The source dataset :math:`\alpha` (classes :math:`1..k'`) follows a gradient flow
towards :math:`\beta` (``objective="otdd"``: :math:`\tfrac12\mathrm{OTDD}^2`, fd-fl dynamics;
``objective="mmd-sw"``: :math:`\tfrac12\mathrm{MMD}^2` with a sliced-Wasserstein kernel, the
WoW flow) and :math:`f` classifies the flowed samples.

How predictions are scored. A sample of source class :math:`c` is correct when :math:`f` predicts
the target class :math:`m(c)` that :math:`c` is named after:

* ``naming="names"`` (the default when every source class is also a target class, e.g. USPS and
  MNIST digits): :math:`m(c) = c`, by class name.
* ``naming="hungarian"`` (the default otherwise, e.g. garments against digits): :math:`m` is the
  one-to-one naming that maximises the accuracy, found by the Hungarian algorithm on the
  confusion counts of true source classes and predicted target classes
  (:func:`~datasetflow.labels.matching.clustering_accuracy`), before and after the flow alike. This
  is the clustering accuracy of the classifier's predictions: two source classes are never scored
  against the same target class.
* ``naming="correspondence"``: before the flow, :math:`m` comes from the §6.4 correspondence (the OT
  coupling of the two class histograms under the OTDD label distances,
  :func:`~datasetflow.labels.matching.class_correspondence`); after it, from the WoW coupling
  between the flowed classes and the target classes (:func:`datasetflow.wow`), which names classes
  without looking at the classifier. Also one to one (:func:`~datasetflow.labels.matching.match_classes`).

Every result also carries the *many-to-one* score (each source class named after its most frequent
prediction, so several source classes may share a name), labelled as such: it is an upper bound that
rewards predicting few classes and is never the headline number.

Unlabeled sources (``flow_labels="kmeans"``): the flow uses k-means pseudo-labels (optionally on
an embedding, such as the frozen classifier's own features) instead of the source labels; the
true labels are used only to score the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.dataset import LabeledDataset, json_name
from ..distances.wow import wow
from ..errors import InvalidArgumentError
from ..flows.loop import run_flow
from ..flows.result import FlowResult
from ..functionals.mmd_sw import mmd_sw_to
from ..functionals.otdd_target import otdd_to
from ..labels.matching import class_correspondence, clustering_accuracy, match_classes
from ..labels.pseudo import align_pseudo_labels, pseudo_labels
from .classifier import accuracy, predict

__all__ = ["repurpose", "RepurposeResult"]

OBJECTIVES = ("otdd", "mmd-sw")
NAMINGS = ("names", "hungarian", "correspondence")


@dataclass(frozen=True)
class RepurposeResult:
    """Result of :func:`repurpose`.

    Attributes:
        accuracy_before: fraction of source samples the frozen classifier gets right before the flow.
        accuracy_after: the same on the flowed samples.
        curve: ``[(step, accuracy), ...]`` measured during the flow (``eval_every``).
        matching_before, matching_after: for each source class, the name of the target class it is
            scored against (see the module docstring).
        flow: the :class:`~datasetflow.flows.result.FlowResult` (final particles carry the flow labels).
        flow_labels: ``"true"`` or ``"kmeans"``.
        pseudo_label_accuracy: with pseudo-labels, their clustering accuracy against the true source
            labels (one-to-one Hungarian naming of clusters after classes).
        naming: ``"names"``, ``"hungarian"`` or ``"correspondence"``.
        many_to_one_before, many_to_one_after: the many-to-one score (see the module docstring),
            an upper bound reported only next to the one-to-one accuracies.
        seconds: wall time of the flow.
    """

    accuracy_before: float
    accuracy_after: float
    curve: list[tuple[int, float]]
    matching_before: list[Hashable]
    matching_after: list[Hashable]
    flow: FlowResult
    flow_labels: str
    naming: str
    pseudo_label_accuracy: float | None = None
    many_to_one_before: float | None = None
    many_to_one_after: float | None = None
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (no particles)."""

        return {
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "curve": [[s, a] for s, a in self.curve],
            "matching_before": [json_name(c) for c in self.matching_before],
            "matching_after": [json_name(c) for c in self.matching_after],
            "flow_labels": self.flow_labels,
            "naming": self.naming,
            "pseudo_label_accuracy": self.pseudo_label_accuracy,
            "many_to_one_before": self.many_to_one_before,
            "many_to_one_after": self.many_to_one_after,
            "objective": list(self.flow.objective),
            "steps": self.flow.steps,
            "seconds": self.seconds,
            "config": self.config,
        }


def _score(
    classifier: Callable, x: torch.Tensor, y: torch.Tensor, matching: Sequence[Hashable], target: LabeledDataset
) -> float:
    """Accuracy of ``classifier`` on ``x`` when a sample of source class ``c`` counts as correct if the
    classifier predicts ``matching[c]`` (outputs named after ``target.classes``)."""
    named = LabeledDataset.from_tensors(x, y.to(x.device), torch.full_like(x[:, 0], 1.0 / len(x)), tuple(matching))
    return accuracy(classifier, named, target_classes=target.classes)


def _hungarian(
    classifier: Callable, x: torch.Tensor, y: torch.Tensor, source: LabeledDataset, target: LabeledDataset
) -> tuple[list[Hashable], float]:
    """The one-to-one naming of the source classes that maximises the accuracy on ``x``, and the
    many-to-one score of the same predictions."""
    predicted = predict(classifier, x).cpu()
    kwargs = {"n_true": source.num_classes, "n_predicted": target.num_classes}
    _, naming = clustering_accuracy(y.cpu(), predicted, **kwargs)
    many, _ = clustering_accuracy(y.cpu(), predicted, rule="many-to-one", **kwargs)
    return [target.classes[j] if j >= 0 else None for j in naming.tolist()], many


def repurpose(
    source: LabeledDataset,
    target: LabeledDataset,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    *,
    objective: str = "otdd",
    steps: int = 100,
    step_size: float | None = None,
    optimizer: str | None = None,
    naming: str | None = None,
    flow_labels: str = "true",
    embedding: Any = None,
    clustering: str = "kmeans",
    eval_every: int | None = None,
    record_every: int | None = None,
    callbacks: Sequence[Callable] = (),
    functional_options: dict[str, Any] | None = None,
    class_weights: str = "uniform",
    seed: int = 0,
) -> RepurposeResult:
    r"""Flow ``source`` to ``target`` and score a frozen ``classifier`` (trained on ``target``) before and after.

    Args:
        source: the dataset to re-purpose (its labels score the result; with ``flow_labels="true"``
            they also drive the flow).
        target: the classifier's training domain (classifier output ``j`` is ``target.classes[j]``).
        classifier: ``(b, d) -> (b, k)`` scores, e.g. a :class:`FrozenClassifier`.
        objective: ``"otdd"`` (½ OTDD², fd-fl, Gaussian label cost, debiased Sinkhorn) or ``"mmd-sw"``
            (½ MMD² with the Riesz SW kernel, uniform class weights, heavy-ball momentum).
        steps: flow steps.
        step_size: default 0.5 for ``otdd`` (SGD) and 1.0 for ``mmd-sw`` (momentum 0.9).
        optimizer: default ``"sgd"`` for ``otdd`` and ``"momentum"`` for ``mmd-sw``.
        naming: ``"names"``, ``"hungarian"`` or ``"correspondence"`` (default: names when every source
            class name is a target class name, else hungarian; see the module docstring).
        flow_labels: ``"true"`` (supervised) or ``"kmeans"`` (pseudo-labels, unsupervised; the
            clustering method is ``clustering``).
        embedding: the space the pseudo-labels cluster in (see :func:`~datasetflow.labels.pseudo.embed`):
            None (pixels), a stage name or ``"+"``-joined pipeline such as ``"hog+umap"``, or a callable
            such as ``model.features``.
        clustering: ``"kmeans"`` or ``"gmm"`` (:func:`~datasetflow.labels.pseudo.pseudo_labels`).
        eval_every: also score the particles every this many steps (into ``curve``).
        record_every: record the trajectory (for image grids).
        callbacks: extra ``run_flow`` callbacks (e.g. a progress bar).
        functional_options: options of :func:`otdd_to` / :func:`mmd_sw_to`.
        class_weights: class masses of both datasets during the flow: ``"uniform"`` (default; every
            class weighs the same, so unequal class counts do not force mass across classes) or
            ``"proportional"`` (the sample counts).
        seed: seed of the flow, of k-means and of the SW directions.

    Returns:
        A :class:`RepurposeResult`.
    """
    if objective not in OBJECTIVES:
        raise InvalidArgumentError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    if flow_labels not in ("true", "kmeans"):
        raise InvalidArgumentError(f"flow_labels must be 'true' or 'kmeans', got {flow_labels!r}.")
    shared = set(source.classes) <= set(target.classes)
    naming = naming or ("names" if shared else "hungarian")
    if naming not in NAMINGS:
        raise InvalidArgumentError(f"naming must be one of {NAMINGS}, got {naming!r}.")
    if naming == "names" and not shared:
        missing = [c for c in source.classes if c not in set(target.classes)]
        raise InvalidArgumentError(f"naming='names' needs every source class in the target; missing {missing!r}.")
    target = target.to(device=source.x.device, dtype=source.x.dtype)
    true_y = source.y.clone()
    hungarian_before = _hungarian(classifier, source.x, true_y, source, target)
    if naming == "names":
        before = list(source.classes)
    elif naming == "hungarian":
        before = hungarian_before[0]
    else:
        coupling = class_correspondence(source, target)
        before = [target.classes[j] for j in match_classes(coupling, maximize=True).tolist()]
    accuracy_before = _score(classifier, source.x, true_y, before, target)

    pseudo_accuracy = None
    flow_source = source
    if flow_labels == "kmeans":
        clusters = pseudo_labels(source, target.num_classes, embedding=embedding, seed=seed, method=clustering)
        flow_source = align_pseudo_labels(clusters, target)
        pseudo_accuracy, _ = clustering_accuracy(true_y, clusters.y)

    options = dict(functional_options or {})
    if class_weights not in ("uniform", "proportional"):
        raise InvalidArgumentError(f"class_weights must be 'uniform' or 'proportional', got {class_weights!r}.")
    # equal class masses on both sides: with unequal class counts (USPS), proportional masses would
    # force the transport to move part of a class into another class's region
    flow_source = flow_source.with_class_weights(class_weights)
    target_weighted = target.with_class_weights(class_weights)
    if objective == "otdd":
        functional = otdd_to(target_weighted, **options)
        step_size = 0.5 if step_size is None else step_size
        optimizer = optimizer or "sgd"
    else:
        options.setdefault("seed", seed)
        functional = mmd_sw_to(target_weighted, **options)
        step_size = 1.0 if step_size is None else step_size
        optimizer = optimizer or "momentum"

    curve: list[tuple[int, float]] = []

    def evaluate(step: int, state, info) -> None:
        if eval_every and step % eval_every == 0:
            with torch.no_grad():
                curve.append((step, _score(classifier, state.x.detach(), true_y, matching_now(state), target)))

    def matching_now(state) -> list[Hashable]:
        """The target class each true source class is scored against at this step."""
        if naming == "names":
            return before
        if naming == "hungarian":
            return _hungarian(classifier, state.x.detach(), true_y, source, target)[0]
        flowed = state.dataset().with_features(state.x.detach())
        return _source_matching(flow_source, wow(flowed, target, inner="exact").matched_classes, true_y, source)

    if eval_every:
        curve.append((0, accuracy_before))
    start = time.perf_counter()
    result = run_flow(
        functional,
        flow_source,
        optimizer=optimizer,
        step_size=step_size,
        steps=steps,
        seed=seed,
        record_every=record_every,
        callbacks=[evaluate, *callbacks],
        optimizer_options={"momentum": 0.9} if optimizer == "momentum" else None,
    )
    seconds = time.perf_counter() - start
    hungarian_after = _hungarian(classifier, result.final.x, true_y, source, target)
    if naming == "names":
        after = before
    elif naming == "hungarian":
        after = hungarian_after[0]
    else:
        matched = wow(result.final, target, inner="exact").matched_classes
        after = _source_matching(flow_source, matched, true_y, source)
    accuracy_after = _score(classifier, result.final.x, true_y, after, target)
    if eval_every and (not curve or curve[-1][0] != result.steps):
        curve.append((result.steps, accuracy_after))
    return RepurposeResult(
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
        curve=curve,
        matching_before=before,
        matching_after=after,
        flow=result,
        flow_labels=flow_labels,
        naming=naming,
        pseudo_label_accuracy=pseudo_accuracy,
        many_to_one_before=hungarian_before[1],
        many_to_one_after=hungarian_after[1],
        seconds=seconds,
        config={
            "objective": objective,
            "steps": steps,
            "step_size": step_size,
            "optimizer": optimizer,
            "functional": repr(functional),
            "class_weights": class_weights,
            "seed": seed,
            "embedding": embedding if isinstance(embedding, str) or embedding is None else repr(embedding),
            "clustering": clustering,
        },
    )


def _source_matching(flow_source, matched, true_y, source) -> list[Hashable]:
    """For each true source class, the target class it is scored against after the flow: the matched
    class of the flow class (cluster) it is assigned to, one to one, by the overlap of their samples."""
    flow_y = flow_source.y.cpu()
    counts = torch.zeros(source.num_classes, flow_source.num_classes, dtype=torch.float64)
    counts.index_put_((true_y.cpu(), flow_y), torch.ones(len(flow_y), dtype=torch.float64), accumulate=True)
    return [matched[k] for k in match_classes(counts, maximize=True).tolist()]
