r"""Class matching: the two operations every part of the library that pairs classes is built on.

* :func:`class_coupling`: an optimal transport coupling between two label sets,
  :math:`\pi^\star = \arg\min_{\pi \in \Pi(a, b)} \langle \pi, D\rangle` (+ an optional entropic term),
  with :math:`D` a ``(C1, C2)`` class-to-class cost and :math:`a, b` the class masses. Soft and
  mass-preserving: a class may split across several others.
* :func:`assign_one_to_one`: a one-to-one assignment (Hungarian algorithm,
  ``scipy.optimize.linear_sum_assignment``) minimising (or maximising) the total score
  :math:`\sum_i S_{i\sigma(i)}`; when ``C1 > C2`` the rows left over get ``-1``.

On top of them: :func:`label_distance_matrix` (the OTDD label distances), :func:`class_correspondence`
(the paper's §6.4 coupling of two datasets' classes), :func:`match_classes` (a hard, one-to-one
naming of classes after others) and :func:`clustering_accuracy` (the share of samples whose
predicted class is the one-to-one Hungarian name of their true class; the many-to-one rule is
available only under its own name).
"""

from __future__ import annotations

import torch

from ..data.dataset import LabeledDataset, check_dataset_pair
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..solvers.api import DEFAULT_RELATIVE_REG, relative_reg, solve
from ..utils import check_choice, check_matrix, missing_extra
from .costs import LabelCost, get_label_cost

__all__ = [
    "class_coupling",
    "assign_one_to_one",
    "label_distance_matrix",
    "class_correspondence",
    "match_classes",
    "confusion_counts",
    "clustering_accuracy",
    "COUPLING_METHODS",
    "SCORING_RULES",
]

COUPLING_METHODS = ("exact", "sinkhorn")
SCORING_RULES = ("one-to-one", "many-to-one")


def class_coupling(
    cost: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    method: str = "exact",
    reg: float | None = None,
) -> torch.Tensor:
    r"""Optimal coupling between two label sets under a class-to-class cost.

    .. math:: \pi^\star = \arg\min_{\pi \in \Pi(a, b)} \langle \pi, D\rangle
              \;(+\ \mathrm{reg}\,\mathrm{KL}(\pi\,\|\,a b^\top)\ \text{for Sinkhorn})

    Args:
        cost: ``(C1, C2)`` costs :math:`D` (e.g. label distances).
        a, b: ``(C1,)`` and ``(C2,)`` class masses (uniform when None).
        method: ``"exact"`` (network simplex, default) or ``"sinkhorn"``.
        reg: entropic regularisation for ``"sinkhorn"`` (default ``0.05 * <a b^T, D>``).

    Returns:
        ``(C1, C2)`` detached coupling with row sums ``a`` and column sums ``b``.
    """
    check_choice("method", method, COUPLING_METHODS)
    matrix = check_matrix("cost", cost)
    rows, cols = matrix.shape
    a = matrix.new_full((rows,), 1.0 / rows) if a is None else a.to(matrix)
    b = matrix.new_full((cols,), 1.0 / cols) if b is None else b.to(matrix)
    if method == "exact":
        if reg is not None:
            raise InvalidArgumentError(f"method='exact' takes no reg (got reg={reg!r}); use method='sinkhorn'.")
    else:
        reg = relative_reg(reg, float(a @ matrix @ b), DEFAULT_RELATIVE_REG)
    return solve(matrix, a, b, reg=reg, method=method, grad="detach").plan.detach()


def assign_one_to_one(scores: torch.Tensor, *, maximize: bool = False) -> torch.Tensor:
    r"""The one-to-one assignment :math:`\sigma` of rows to columns with the best total score.

    Minimises :math:`\sum_i S_{i\sigma(i)}` (or maximises it, e.g. for overlap counts or coupling
    masses) over injective maps when ``C1 <= C2``; when ``C1 > C2`` only ``C2`` rows are assigned.

    Args:
        scores: ``(C1, C2)`` matrix.
        maximize: maximise instead of minimise.

    Returns:
        ``(C1,)`` long tensor on ``scores``' device: the column assigned to each row, ``-1`` for rows
        left unassigned (only when ``C1 > C2``).
    """
    matrix = check_matrix("scores", scores)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:  # pragma: no cover - scipy comes with POT
        raise missing_extra("assign_one_to_one", "scipy", "cluster") from exc
    rows, cols = linear_sum_assignment(matrix.cpu().double().numpy(), maximize=maximize)
    out = torch.full((matrix.shape[0],), -1, dtype=torch.long)
    out[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
    return out.to(matrix.device)


def label_distance_matrix(
    source: LabeledDataset, target: LabeledDataset, *, inner: str | LabelCost = "gaussian"
) -> torch.Tensor:
    r"""The ``(C1, C2)`` OTDD label distances :math:`W_2^2(\alpha_i, \beta_j)` between the classes of two datasets.

    The same matrix as ``otdd(source, target, inner=inner).label_distances`` (paper Eq. 5), without
    solving the outer OT problem. ``target`` is moved to the device and dtype of ``source``.

    Args:
        source: dataset with ``C1`` classes in dimension ``d``.
        target: dataset with ``C2`` classes in the same dimension.
        inner: a label cost or its name (see :mod:`~datasetflow.labels.costs`).

    Returns:
        ``(C1, C2)`` detached tensor on ``source``'s device.
    """
    check_dataset_pair(("source", "target"), source, target)
    with torch.no_grad():
        return get_label_cost(inner).between(source, target).detach()


def class_correspondence(
    source: LabeledDataset,
    target: LabeledDataset,
    label_distances: torch.Tensor | None = None,
    *,
    method: str = "exact",
    reg: float | None = None,
    inner: str | LabelCost = "gaussian",
) -> torch.Tensor:
    r"""Optimal coupling between the class histograms of two datasets under the OTDD label distances (§6.4).

    :func:`class_coupling` with the label distances :math:`D_{ij} = W_2^2(\alpha_i, \beta_j)` and
    the class masses of both datasets. Rows are the ``k'`` classes of ``source`` (the dataset the flow
    starts from, whose samples are to be classified), columns the ``k`` classes of ``target`` (the
    dataset a frozen classifier was trained on). Stacked on a frozen ``k``-way classifier
    (:class:`~datasetflow.models.classifier.CorrespondenceHead`) it gives a ``k'``-way prediction.

    Args:
        source: dataset with ``k'`` classes (rows).
        target: dataset with ``k`` classes (columns), same feature dimension.
        label_distances: optional precomputed ``(k', k)`` cost (then the dimensions may differ).
        method: ``"exact"`` (default) or ``"sinkhorn"``.
        reg: entropic regularisation for ``"sinkhorn"``.
        inner: label cost used when ``label_distances`` is None.

    Returns:
        ``(k', k)`` detached coupling with row sums ``source.class_weights()`` and column sums
        ``target.class_weights()``.
    """
    check_dataset_pair(("source", "target"), source, target, same_dim=label_distances is None)
    shape = (source.num_classes, target.num_classes)
    if label_distances is None:
        cost = label_distance_matrix(source, target, inner=inner)
    else:
        cost = check_matrix("label_distances", label_distances)
        if tuple(cost.shape) != shape:
            raise ShapeMismatchError(
                f"label_distances must have shape {shape} (source classes, target classes), got {tuple(cost.shape)}."
            )
    cost = cost.to(device=source.x.device, dtype=source.weights.dtype)
    return class_coupling(cost, source.class_weights(), target.class_weights(), method=method, reg=reg)


def match_classes(cost: torch.Tensor, *, maximize: bool = False) -> torch.Tensor:
    r"""A one-to-one naming of ``C`` row classes after ``C'`` column classes of minimal total cost.

    :func:`assign_one_to_one`; rows left over when ``C > C'`` are named after their cheapest column
    (the only many-to-one case, unavoidable with fewer columns than rows).

    Args:
        cost: ``(C, C')`` cost matrix (label distances, squared distances between class means, ...), or
            scores with ``maximize=True``.

    Returns:
        ``(C,)`` long tensor: the column matched to each row.
    """
    matrix = check_matrix("cost", cost)
    assigned = assign_one_to_one(matrix, maximize=maximize)
    left = assigned < 0
    if bool(left.any()):
        best = matrix.argmax(1) if maximize else matrix.argmin(1)
        assigned = torch.where(left, best.to(assigned.device), assigned)
    return assigned


def confusion_counts(
    truth: torch.Tensor, predicted: torch.Tensor, n_true: int | None = None, n_predicted: int | None = None
) -> torch.Tensor:
    r"""``(C, C')`` float64 counts :math:`N_{cj} = \#\{i : y_i = c,\ \hat y_i = j\}` (on the CPU).

    Args:
        truth: ``(n,)`` integer labels in ``0..C-1``.
        predicted: ``(n,)`` integer labels in ``0..C'-1``.
        n_true, n_predicted: ``C`` and ``C'`` (default: one more than the largest label).
    """
    truth, predicted = torch.as_tensor(truth).long().cpu().flatten(), torch.as_tensor(predicted).long().cpu().flatten()
    if truth.shape != predicted.shape:
        raise ShapeMismatchError(
            f"truth and predicted must have the same length, got {tuple(truth.shape)} and {tuple(predicted.shape)}."
        )
    if len(truth) and (int(truth.min()) < 0 or int(predicted.min()) < 0):
        raise InvalidArgumentError("truth and predicted must be non-negative class indices.")
    rows = n_true if n_true is not None else int(truth.max()) + 1 if len(truth) else 0
    cols = n_predicted if n_predicted is not None else int(predicted.max()) + 1 if len(predicted) else 0
    counts = torch.zeros(rows, cols, dtype=torch.float64)
    counts.index_put_((truth, predicted), torch.ones(len(truth), dtype=torch.float64), accumulate=True)
    return counts


def clustering_accuracy(
    truth: torch.Tensor,
    predicted: torch.Tensor,
    *,
    rule: str = "one-to-one",
    n_true: int | None = None,
    n_predicted: int | None = None,
) -> tuple[float, torch.Tensor]:
    r"""Accuracy of predicted labels against true labels whose names differ, under a naming of the true classes.

    With the confusion counts :math:`N` (:func:`confusion_counts`) of ``n`` samples:

    * ``"one-to-one"`` (default; the clustering accuracy): :math:`\max_\sigma \frac1n \sum_c N_{c\sigma(c)}`
      over injective namings :math:`\sigma` of true classes after predicted ones (Hungarian algorithm,
      :func:`assign_one_to_one`); with more true classes than predicted ones, the classes left over
      count as wrong.
    * ``"many-to-one"``: :math:`\frac1n \sum_c \max_j N_{cj}`, every true class named after its most
      frequent prediction. Several true classes may take the same name, so it rewards a predictor
      that puts everything in few classes; report it only next to the one-to-one score.

    Args:
        truth: ``(n,)`` true class indices.
        predicted: ``(n,)`` predicted class (or cluster) indices.
        rule: ``"one-to-one"`` or ``"many-to-one"``.
        n_true, n_predicted: numbers of classes (default from the labels).

    Returns:
        ``(accuracy, naming)``: a float in ``[0, 1]`` and the ``(C,)`` long tensor of the predicted class
        each true class is named after (``-1`` for classes left unnamed by the one-to-one rule).
    """
    check_choice("rule", rule, SCORING_RULES)
    counts = confusion_counts(truth, predicted, n_true, n_predicted)
    total = float(counts.sum())
    if total == 0:
        raise InvalidArgumentError("clustering_accuracy needs at least one sample.")
    if rule == "one-to-one":
        naming = assign_one_to_one(counts, maximize=True)
        named = naming >= 0
        hits = counts[torch.nonzero(named).flatten(), naming[named]].sum()
    else:
        naming = counts.argmax(1)
        hits = counts.max(1).values.sum()
    return float(hits) / total, naming
