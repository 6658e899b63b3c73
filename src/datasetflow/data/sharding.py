"""Shards of a labeled dataset over the ranks of a process group.

A shard keeps its particles' *global* weights (they sum to 1 over all ranks, not on each rank) and the
*global* class list (a shard may hold no sample of some class), which is what sharded functionals
and :func:`~datasetflow.flows.loop.run_flow` expect.
"""

from __future__ import annotations

import torch

from ..distributed.comm import World, all_gather_object, all_reduce_sum, gather_rows, get_world, shard_range
from ..errors import InvalidArgumentError
from .dataset import ClassStats, LabeledDataset

__all__ = ["shard", "shard_local", "sharded_class_stats", "gather_dataset"]


def shard(dataset: LabeledDataset, world: World | None = None) -> LabeledDataset:
    """This rank's contiguous, balanced slice of ``dataset`` (the same dataset on every rank).

    Rows ``[start, stop)`` of :func:`~datasetflow.distributed.shard_range`, with their global weights and
    the full class list. In single-process mode the dataset itself.
    """
    world = get_world() if world is None else world
    if not world.distributed:
        return dataset
    start, stop = shard_range(len(dataset), world)
    if stop <= start:
        raise InvalidArgumentError(
            f"{len(dataset)} samples cannot be sharded over {world.size} ranks (rank {world.rank} would get none)."
        )
    index = torch.arange(start, stop, device=dataset.x.device)
    return LabeledDataset.from_tensors(
        dataset.x[index],
        dataset.y[index],
        dataset.weights[index],
        dataset.classes,
        feature_shape=dataset.feature_shape,
        name=dataset.name,
    )


def gather_dataset(part: LabeledDataset, world: World | None = None) -> LabeledDataset:
    """Every rank's shard concatenated in rank order: the whole dataset, the same on every rank.

    The inverse of :func:`shard` (rows in the original order for its contiguous shards). This rank's features
    keep their graph, the others' are constants, so a replicated objective of the whole dataset gives each
    rank the gradient of its own rows. Traffic: ``n (d + 2)`` numbers per call.
    """
    world = get_world() if world is None else world
    if not world.distributed:
        return part
    x, _ = gather_rows(part.x, world)
    y, _ = gather_rows(part.y, world)
    weights, _ = gather_rows(part.weights.detach(), world)
    return LabeledDataset.from_tensors(x, y, weights, part.classes, feature_shape=part.feature_shape, name=part.name)


def shard_local(dataset: LabeledDataset, world: World | None = None) -> LabeledDataset:
    """Make a rank's own part of a dataset (each rank loaded different samples) a shard of the whole.

    The class list becomes the sorted union of every rank's classes (labels re-indexed), and the weights
    become global: a rank's weights are scaled by its share of the samples, so uniform weights stay
    uniform over all ranks.
    """
    world = get_world() if world is None else world
    if not world.distributed:
        return dataset
    names = all_gather_object(list(dataset.classes), world)
    union = list(dict.fromkeys(c for part in names for c in part))
    try:
        union = sorted(union)
    except TypeError:
        pass  # unorderable mix of names: keep the order of first appearance
    index = {c: k for k, c in enumerate(union)}
    lookup = torch.as_tensor([index[c] for c in dataset.classes], dtype=torch.long, device=dataset.y.device)
    total = all_reduce_sum(torch.tensor([float(len(dataset))], dtype=torch.float64), world)
    weights = dataset.weights * (len(dataset) / float(total))
    return LabeledDataset.from_tensors(
        dataset.x, lookup[dataset.y], weights, tuple(union), feature_shape=dataset.feature_shape, name=dataset.name
    )


class _CentredMoments(torch.autograd.Function):
    """``(C, d, d)`` float64 :math:`\\sum_{k \\in c} w_k (x_k - m_c)(x_k - m_c)^\\top / N_c` around given centres,
    accumulated over row blocks; the backward is :math:`w_k / N_c\\,(D_c + D_c^\\top)(x_k - m_c)` (centres constant)."""

    @staticmethod
    def forward(ctx, x, y, w64, centres, normaliser, num_classes):  # type: ignore[override]
        dim = x.shape[1]
        out = x.new_zeros(num_classes, dim, dim, dtype=torch.float64)
        rows = max(1, (1 << 22) // max(dim, 1))
        for start in range(0, x.shape[0], rows):
            block = slice(start, start + rows)
            centred = x[block].to(torch.float64) - centres[y[block]]
            weighted = centred * w64[block, None]
            for c in torch.unique(y[block]).tolist():
                mask = y[block] == c
                out[c] += weighted[mask].mT @ centred[mask]
        ctx.save_for_backward(x, y, w64, centres, normaliser)
        return out / normaliser[:, None, None]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, y, w64, centres, normaliser = ctx.saved_tensors
        sym = (grad + grad.mT).to(torch.float64)
        out = torch.empty_like(x)
        rows = max(1, (1 << 22) // max(x.shape[1], 1))
        for start in range(0, x.shape[0], rows):
            block = slice(start, start + rows)
            centred = x[block].to(torch.float64) - centres[y[block]]
            scaled = (w64[block] / normaliser[y[block]])[:, None] * centred
            part = torch.empty_like(scaled)
            for c in torch.unique(y[block]).tolist():
                mask = y[block] == c
                part[mask] = scaled[mask] @ sym[c]
            out[block] = part.to(x.dtype)
        return out, None, None, None, None, None


def sharded_class_stats(dataset: LabeledDataset, world: World | None = None, *, unbiased: bool = True) -> ClassStats:
    r"""The class statistics of all ranks' shards together, the same on every rank.

    Class counts, masses, :math:`\sum w^2` and weighted sums are all-reduced (float64), giving the global
    means; then every rank accumulates the second moments of its samples *centred on the global means*,
    in float64, and those are all-reduced too (two passes keep the float64 accuracy of a centred sum).
    Each class's covariance is factored once, :math:`F_c = \Lambda^{1/2} V^\top`, with the eigenvalue
    floor of :func:`~datasetflow.data.moments.covariance_factor`. Traffic: :math:`O(C d^2)` numbers.

    Differentiable with respect to this rank's features, for objectives that are the same on every rank
    (the sums go through :func:`~datasetflow.distributed.all_reduce_sum`, whose backward is the identity;
    the centring mean is treated as a constant, which is exact because
    :math:`\sum_k w_k (x_k - m_c) = 0` over all ranks). In single-process mode it is
    ``dataset.class_stats(unbiased=unbiased)``.
    """
    from .moments import covariance_factor

    world = get_world() if world is None else world
    if not world.distributed:
        return dataset.class_stats(unbiased=unbiased)
    x, y = dataset.x, dataset.y
    w64 = dataset.weights.detach().to(torch.float64)
    num_classes, dim = dataset.num_classes, dataset.dim
    local = torch.stack(
        [
            torch.bincount(y, minlength=num_classes).to(torch.float64),
            torch.zeros(num_classes, dtype=torch.float64, device=x.device).index_add(0, y, w64),
            torch.zeros(num_classes, dtype=torch.float64, device=x.device).index_add(0, y, w64 * w64),
        ]
    )
    counts64, mass, sq_mass = all_reduce_sum(local, world)
    if bool((counts64 == 0).any()):
        empty = [dataset.classes[k] for k in torch.nonzero(counts64 == 0).flatten().tolist()]
        raise InvalidArgumentError(f"classes {empty!r} have no sample on any rank.")
    normaliser = mass - sq_mass / mass if unbiased else mass.clone()
    normaliser = torch.where(normaliser <= mass * 1e-12, torch.ones_like(normaliser), normaliser)
    sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=x.device).index_add(
        0, y, w64[:, None] * x.to(torch.float64)
    )
    means64 = all_reduce_sum(sums, world) / mass[:, None]
    local_cov = _CentredMoments.apply(x, y, w64, means64.detach(), normaliser, num_classes)
    covariances = local_cov
    covariances = all_reduce_sum(covariances, world)
    factors = covariance_factor(covariances).to(x.dtype)
    return ClassStats(
        means=means64.to(x.dtype),
        weights=mass.to(dataset.weights.dtype),
        counts=counts64.to(torch.long),
        classes=dataset.classes,
        factors=factors,
    )
