r"""Class correspondences between labeled datasets (paper §6.4 and Appendix C).

A classifier trained on a dataset with ``k`` classes can be used on a flow that starts from a
dataset with ``k'`` classes: the OTDD's label-to-label distances give a ``(k', k)`` cost, and the
optimal coupling :math:`\pi^*` between the two class histograms, stacked as a final linear layer
(:class:`~datasetflow.models.classifier.CorrespondenceHead`), turns the ``k``-way prediction into
a ``k'``-way one. :func:`match_classes` turns a class-to-class cost into a hard assignment (used to
name k-means clusters after reference classes).
"""

from __future__ import annotations

import torch

from ..data.dataset import LabeledDataset
from ..distances.label_costs import DEFAULT_RELATIVE_REG, LabelCost, get_label_cost, relative_reg
from ..errors import InvalidArgumentError
from ..solvers.api import solve
from ._utils import check_choice, check_dataset_pair, check_matrix, sklearn_missing
from .classifier import CorrespondenceHead

__all__ = ["class_correspondence", "label_distance_matrix", "match_classes", "CorrespondenceHead", "COUPLING_METHODS"]

COUPLING_METHODS = ("exact", "sinkhorn")


def label_distance_matrix(
    source: LabeledDataset, target: LabeledDataset, *, inner: str | LabelCost = "gaussian"
) -> torch.Tensor:
    r"""The ``(C1, C2)`` OTDD label distances :math:`W_2^2(\alpha_i, \beta_j)` between the classes of two datasets.

    The same matrix as ``otdd(source, target, inner=inner).label_distances`` (paper Eq. 5), without
    solving the outer OT problem. ``target`` is moved to the device and dtype of ``source``.

    Args:
        source: dataset with ``C1`` classes in dimension ``d``.
        target: dataset with ``C2`` classes in the same dimension.
        inner: label cost, ``"gaussian"`` (Bures closed form, default), ``"exact"``, ``"sinkhorn"`` or a
            :class:`~datasetflow.distances.label_costs.LabelCost`.

    Returns:
        ``(C1, C2)`` detached tensor on ``source``'s device.
    """
    check_dataset_pair(("source", "target"), source, target)
    target = target.to(device=source.x.device, dtype=source.x.dtype)
    with torch.no_grad():
        return get_label_cost(inner).pairwise(source, target).detach()


def class_correspondence(
    source: LabeledDataset,
    target: LabeledDataset,
    label_distances: torch.Tensor | None = None,
    *,
    method: str = "exact",
    reg: float | None = None,
    inner: str | LabelCost = "gaussian",
) -> torch.Tensor:
    r"""Optimal coupling between the class histograms of two datasets under the OTDD label distances.

    With :math:`a \in \Delta_{k'}` the class masses of ``source`` and :math:`b \in \Delta_k` those of
    ``target``, and the label distances :math:`D_{ij} = W_2^2(\alpha_i, \beta_j)`,

    .. math:: \pi^* = \arg\min_{\pi \in \Pi(a, b)} \langle \pi, D\rangle
              \;(+\ \mathrm{reg}\,\mathrm{KL}(\pi\,\|\,a b^\top)\ \text{for Sinkhorn}).

    Direction: rows are the ``k'`` classes of ``source`` (the dataset the flow starts from, whose
    samples are to be classified), columns the ``k`` classes of ``target`` (the dataset a frozen
    classifier was trained on). Pass the result to
    :class:`~datasetflow.models.classifier.CorrespondenceHead` (or ``accuracy(..., correspondence=)``)
    to turn that classifier's ``k``-way output into a ``k'``-way prediction (paper §6.4).

    Args:
        source: dataset with ``k'`` classes (rows).
        target: dataset with ``k`` classes (columns), same feature dimension.
        label_distances: optional precomputed ``(k', k)`` cost, e.g. ``otdd(source, target).label_distances``
            (then the feature dimensions may differ); computed with :func:`label_distance_matrix` (``inner``)
            otherwise.
        method: ``"exact"`` (network simplex, default) or ``"sinkhorn"`` (entropic).
        reg: entropic regularisation for ``"sinkhorn"``; default ``0.05 * <a b^T, D>``.
        inner: label cost used when ``label_distances`` is None.

    Returns:
        ``(k', k)`` detached coupling: non-negative, row sums ``source.class_weights()``, column sums
        ``target.class_weights()`` (to the solver's tolerance for Sinkhorn).
    """
    check_dataset_pair(("source", "target"), source, target, same_dim=label_distances is None)
    check_choice("method", method, COUPLING_METHODS)
    shape = (source.num_classes, target.num_classes)
    if label_distances is None:
        cost = label_distance_matrix(source, target, inner=inner)
    else:
        cost = check_matrix("label_distances", label_distances, shape)
    device = source.x.device
    cost = cost.to(device=device, dtype=source.weights.dtype)
    a = source.class_weights()
    b = target.class_weights().to(device=device, dtype=cost.dtype)
    if method == "exact":
        if reg is not None:
            raise InvalidArgumentError(f"method='exact' takes no reg (got reg={reg!r}); use method='sinkhorn'.")
    else:
        reg = relative_reg(reg, float(a @ cost @ b), DEFAULT_RELATIVE_REG)
    return solve(cost, a, b, reg=reg, method=method, grad="detach").plan.detach()


def match_classes(cost: torch.Tensor, *, a: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
    r"""A hard matching of ``C`` row classes to ``C'`` column classes of minimal total cost.

    * Square costs (``C = C'``): the permutation :math:`\sigma` minimising :math:`\sum_i D_{i\sigma(i)}`
      (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``; exact OT between uniform
      histograms has the same solution). ``a`` and ``b`` are not used.
    * Otherwise: :math:`\sigma(i) = \arg\max_j \pi^*_{ij}` for the exact OT coupling :math:`\pi^*`
      between ``a`` and ``b`` (uniform by default), so several rows may share a column when ``C > C'``.

    Args:
        cost: ``(C, C')`` cost matrix, e.g. label distances or squared distances between class means.
        a, b: optional row / column masses ``(C,)`` and ``(C',)`` for non-square costs.

    Returns:
        ``(C,)`` long tensor: the column matched to each row, on ``cost``'s device.
    """
    matrix = check_matrix("cost", cost)
    rows, cols = matrix.shape
    if rows == cols:
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise sklearn_missing("match_classes") from exc
        _, assigned = linear_sum_assignment(matrix.cpu().double().numpy())
        return torch.as_tensor(assigned, dtype=torch.long, device=matrix.device)
    plan = solve(matrix, a, b, method="exact", grad="detach").plan
    return plan.argmax(1)
