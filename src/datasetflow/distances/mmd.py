r"""MMD between labeled datasets seen as distributions over their classes, with SW kernels.

A labeled dataset with classes :math:`c` is the measure :math:`P = \sum_c p_c\, \delta_{\mu_c}`
on :math:`\mathcal{P}_2(\mathbb{R}^d)`, where :math:`\mu_c = \frac{1}{n_c}\sum_{i\in c}\delta_{x_i}`
and :math:`p_c` is the class mass (the sum of the class's sample weights). With a kernel
:math:`K` between distributions (:mod:`~datasetflow.labels.kernels`), a function of a
class-to-class cost (:mod:`~datasetflow.labels.costs`; by default the sliced Wasserstein cost),

.. math:: \tfrac12 \mathrm{MMD}_K^2(P, Q) = \tfrac12\Big[\sum_{c,c'} p_c p_{c'} K(\mu_c, \mu_{c'})
          + \sum_{c,c'} q_c q_{c'} K(\nu_c, \nu_{c'}) - 2 \sum_{c,c'} p_c q_{c'} K(\mu_c, \nu_{c'})\Big].

Inside a class the samples are uniform, so the sample weights must be constant within each
class: :math:`w_i = p_c / n_c`. Then the particle gradient divided by the mass :math:`w_i` (the
flow loop's one rescaling) is exactly the WoW gradient :math:`(n_c / p_c)\,\partial F/\partial x_i`
(Bonet, Vauthier & Korba, 2025). :meth:`LabeledDataset.with_class_weights` sets such weights.

:func:`mmd_from_summaries` is the one computation behind both :func:`mmd_sw` and the flow
functional :class:`~datasetflow.functionals.mmd_sw.MMDSWToTarget`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import LabeledDataset
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..labels.costs import LabelCost, SlicedLabelCost, get_label_cost
from ..labels.kernels import SWKernel, get_kernel
from ..solvers.sliced import draw_directions

__all__ = ["mmd_sw", "class_masses", "mmd_from_summaries", "kernel_label_cost"]


def class_masses(dataset: LabeledDataset, *, argument: str = "dataset") -> torch.Tensor:
    """``(C,)`` class masses :math:`p_c`, after checking the weights are uniform inside each class."""
    counts = dataset.class_counts()
    w = dataset.weights
    # summed in float64: a float32 sum over a large class drifts by more than the tolerance below
    masses = torch.zeros(dataset.num_classes, dtype=torch.float64, device=w.device).index_add(0, dataset.y, w.double())
    expected = (masses / counts.to(masses.dtype))[dataset.y]
    if not torch.allclose(w.double(), expected, rtol=1e-5, atol=1e-12 / max(len(w), 1)):
        raise InvalidArgumentError(
            f"{argument} has sample weights that differ inside a class; the class-mixture (WoW) view treats each "
            "class as the uniform cloud of its samples, so only class masses may differ. Use "
            f"{argument}.with_class_weights(...) (e.g. 'uniform' or 'proportional')."
        )
    return masses.to(w.dtype)


def kernel_label_cost(
    kernel: SWKernel,
    inner: str | LabelCost = "sliced",
    *,
    n_projections: int | None = None,
    projections: Any = None,
    seed: int | None = None,
) -> LabelCost:
    r"""The label cost a kernel is evaluated on: ``inner`` (a name or an instance) whose order ``p`` is the
    kernel's (:math:`\mathrm{SW}_1` for ``laplace``, else squared distances); the sliced options
    apply to ``inner="sliced"``."""
    if isinstance(inner, str) and get_label_cost(inner).name == "sliced":
        cost: LabelCost = SlicedLabelCost(
            n_projections=n_projections, projections=projections, p=kernel.order, seed=0 if seed is None else seed
        )
    else:
        if projections is not None:
            raise InvalidArgumentError("projections apply to the sliced label cost (inner='sliced') only.")
        cost = get_label_cost(inner)
    if cost.order != kernel.order:
        raise InvalidArgumentError(
            f"the {kernel.name!r} kernel takes a label cost of order p={kernel.order:g}, but {cost!r} has order "
            f"p={cost.order:g}; use inner='sliced' (its order follows the kernel) or a kernel of order {cost.order:g}."
        )
    return cost


def mmd_from_summaries(
    kernel: SWKernel,
    label_cost: LabelCost,
    source: Any,
    source_masses: torch.Tensor,
    target: Any,
    target_masses: torch.Tensor,
    *,
    target_term: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`\tfrac12\mathrm{MMD}_K^2` between two class mixtures from their label-cost summaries.

    Args:
        kernel: the kernel; a missing bandwidth is fitted here, on the source-target cost matrix.
        label_cost: the class-to-class cost the kernel is a function of.
        source, target: ``label_cost.summarize(...)`` of both datasets (``C`` and ``C'`` classes).
        source_masses, target_masses: ``(C,)`` and ``(C',)`` class masses.
        target_term: the constant :math:`\sum q q' K(\nu, \nu')` if already known.

    Returns:
        ``(value, target_term)``.
    """
    cross_cost = label_cost.pairwise(source, target)
    kernel.fit_bandwidth(cross_cost)
    if target_term is None:
        target_masses = target_masses.to(cross_cost)
        target_term = target_masses @ kernel(label_cost.pairwise(target)) @ target_masses
    self_source = kernel(label_cost.pairwise(source))
    value = 0.5 * (
        source_masses @ self_source @ source_masses
        + target_term.to(cross_cost)
        - 2.0 * (source_masses @ kernel(cross_cost) @ target_masses.to(cross_cost))
    )
    return value, target_term


def mmd_sw(
    source: LabeledDataset,
    target: LabeledDataset,
    *,
    kernel: str | SWKernel = "riesz",
    bandwidth: float | None = None,
    exponent: float = 1.0,
    inner: str | LabelCost = "sliced",
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
        inner: the class-to-class cost the kernel is a function of: ``"sliced"`` (default), or any
            other label cost of order 2 (e.g. ``"gaussian"``: a Bures kernel).
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
    # explicit projections take precedence over the default count
    label_cost = kernel_label_cost(
        kern,
        inner,
        n_projections=None if projections is not None else n_projections,
        projections=projections,
        seed=seed,
    )
    target = target.to(device=source.x.device, dtype=source.x.dtype)
    options: dict[str, Any] = {}
    if isinstance(label_cost, SlicedLabelCost):
        if generator is not None and projections is None:
            options["directions"] = draw_directions(
                label_cost.n_projections, source.dim, generator=generator, dtype=source.x.dtype, device=source.x.device
            )
        else:
            options["directions"] = label_cost.directions(source.dim, source.x)
    first = label_cost.summarize(source, **options)
    second = label_cost.summarize(target, **options)
    masses1 = class_masses(source, argument="source")
    masses2 = class_masses(target, argument="target").to(masses1)
    value, _ = mmd_from_summaries(kern, label_cost, first, masses1, second, masses2)
    return value
