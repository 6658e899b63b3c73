r"""MMD between labeled datasets seen as distributions over their classes, with SW kernels.

A labeled dataset with classes :math:`c` is the measure :math:`P = \sum_c p_c\, \delta_{\mu_c}`
on :math:`\mathcal{P}_2(\mathbb{R}^d)`, where :math:`\mu_c = \frac{1}{n_c}\sum_{i\in c}\delta_{x_i}`
and :math:`p_c` is the class mass (the sum of the class's sample weights). With a kernel
:math:`K` between distributions (:mod:`~datasetflow.distances.kernels`),

.. math:: \tfrac12 \mathrm{MMD}_K^2(P, Q) = \tfrac12\Big[\sum_{c,c'} p_c p_{c'} K(\mu_c, \mu_{c'})
          + \sum_{c,c'} q_c q_{c'} K(\nu_c, \nu_{c'}) - 2 \sum_{c,c'} p_c q_{c'} K(\mu_c, \nu_{c'})\Big].

Inside a class the samples are uniform, so the sample weights must be constant within each
class: :math:`w_i = p_c / n_c`. Then the particle gradient divided by the mass :math:`w_i` (the
flow loop's one rescaling) is exactly the WoW gradient :math:`(n_c / p_c)\,\partial F/\partial x_i`
(Bonet, Vauthier & Korba, 2025). :meth:`LabeledDataset.with_class_weights` sets such weights.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import LabeledDataset
from ..errors import InvalidArgumentError, ShapeMismatchError
from .kernels import SWKernel, get_kernel
from .sliced import _directions, _on_grid, common_grid, pairwise_sliced, sort_classes

__all__ = ["mmd_sw", "class_masses", "mmd_from_quantiles"]


def class_masses(dataset: LabeledDataset, *, argument: str = "dataset") -> torch.Tensor:
    """``(C,)`` class masses :math:`p_c`, after checking the weights are uniform inside each class."""
    counts = dataset.class_counts()
    masses = dataset.class_weights()
    expected = (masses / counts.to(masses.dtype))[dataset.y]
    w = dataset.weights
    if not torch.allclose(w, expected, rtol=1e-5, atol=1e-12 / max(len(w), 1)):
        raise InvalidArgumentError(
            f"{argument} has sample weights that differ inside a class; the class-mixture (WoW) view treats each "
            "class as the uniform cloud of its samples, so only class masses may differ. Use "
            f"{argument}.with_class_weights(...) (e.g. 'uniform' or 'proportional')."
        )
    return masses


def mmd_from_quantiles(
    kernel: SWKernel,
    source: torch.Tensor,
    source_masses: torch.Tensor,
    target: torch.Tensor,
    target_masses: torch.Tensor,
    steps: torch.Tensor,
    *,
    target_term: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`\tfrac12\mathrm{MMD}_K^2` from class quantiles on a common grid.

    Args:
        kernel: the kernel; a missing bandwidth is fitted here, on the source-target SW matrix.
        source, target: ``(C, K, L)`` and ``(C', K, L)`` quantiles on the common grid ``steps`` ``(K,)``.
        source_masses, target_masses: ``(C,)`` and ``(C',)`` class masses.
        target_term: the constant :math:`\sum q q' K(\nu, \nu')` if already known.

    Returns:
        ``(value, target_term)``.
    """
    p = float(kernel.order)
    num_source = source.shape[0]
    if target_term is None:
        # one symmetric matrix over all classes of both sides: source-source, source-target, target-target
        sw = pairwise_sliced(torch.cat([source, target.to(source)]), None, steps, p)
        kernel.fit_bandwidth(sw[:num_source, num_source:])
        both = kernel(sw)
        target_term = target_masses @ both[num_source:, num_source:] @ target_masses
    else:
        # the target-target block is not needed: two products, source-source and source-target
        cross_sw = pairwise_sliced(source, target, steps, p)
        kernel.fit_bandwidth(cross_sw)
        both = torch.cat([kernel(pairwise_sliced(source, None, steps, p)), kernel(cross_sw)], dim=1)
    self_source, cross = both[:num_source, :num_source], both[:num_source, num_source:]
    value = 0.5 * (
        source_masses @ self_source @ source_masses + target_term - 2.0 * (source_masses @ cross @ target_masses)
    )
    return value, target_term


def mmd_sw(
    source: LabeledDataset,
    target: LabeledDataset,
    *,
    kernel: str | SWKernel = "riesz",
    bandwidth: float | None = None,
    exponent: float = 1.0,
    projections: Any = None,
    n_projections: int | None = 500,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    r"""Half the squared MMD with a sliced-Wasserstein kernel between two labeled datasets.

    .. math:: F(P) = \tfrac12 \mathrm{MMD}_K^2(P, Q), \qquad P = \sum_c p_c \delta_{\mu_c},\;
              Q = \sum_{c'} q_{c'} \delta_{\nu_{c'}},

    with every :math:`\mathrm{SW}` between classes computed exactly on the same ``L`` directions
    (see :mod:`~datasetflow.distances.mmd`). Class sizes may differ on both sides; class masses
    are the datasets' (``with_class_weights`` changes them). Differentiable in both datasets'
    features; ``mmd_sw(D, D) == 0`` with shared directions.

    Args:
        source, target: :class:`LabeledDataset` s of the same dimension ``d``.
        kernel: ``"riesz"`` (:math:`-\mathrm{SW}_2`, the paper's MMDSW), ``"gaussian"``,
            ``"riesz-r"``, ``"laplace"``, ``"imq"`` or an :class:`SWKernel`.
        bandwidth: :math:`h > 0` for the kernels that have one (None: median heuristic on the
            source-target SW values).
        exponent: :math:`r` of ``riesz-r``.
        projections: explicit ``(L, d)`` directions (then ``n_projections`` is ignored); else
            ``n_projections`` random ones drawn from ``generator`` (or from ``seed``, default 0).

    Returns:
        A 0-d tensor :math:`\tfrac12\mathrm{MMD}_K^2 \ge 0` (up to rounding for the Riesz kernels).

    Raises:
        ShapeMismatchError: dimensions of the datasets or of ``projections`` disagree.
        InvalidArgumentError: unknown kernel (the valid ones are listed), bandwidth <= 0,
            ``L = 0``, weights that differ inside a class.
    """
    for argument, value in (("source", source), ("target", target)):
        if not isinstance(value, LabeledDataset):
            raise InvalidArgumentError(f"{argument} must be a LabeledDataset, got {type(value).__name__}.")
    if source.dim != target.dim:
        raise ShapeMismatchError(f"source has dimension {source.dim} but target has {target.dim}.")
    kern = get_kernel(kernel, bandwidth=bandwidth, exponent=exponent)
    x2 = target.x.to(device=source.x.device, dtype=source.x.dtype)
    # explicit projections take precedence over the default count
    theta = _directions(
        projections, None if projections is not None else n_projections, source.dim, source.x, generator, seed
    )
    sorted1 = sort_classes(source.x, source.y, source.num_classes, theta)
    sorted2 = sort_classes(x2, target.y.to(source.x.device), target.num_classes, theta)
    steps, (index1, index2) = common_grid(sorted1.counts, sorted2.counts)
    masses1 = class_masses(source, argument="source")
    masses2 = class_masses(target, argument="target").to(masses1)
    value, _ = mmd_from_quantiles(kern, _on_grid(sorted1, index1), masses1, _on_grid(sorted2, index2), masses2, steps)
    return value
