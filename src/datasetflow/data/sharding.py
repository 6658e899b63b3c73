"""Shards of a labeled dataset over the ranks of a process group.

A shard keeps its particles' *global* weights (they sum to 1 over all ranks, not on each rank) and the
*global* class list (a shard may hold no sample of some class), which is what sharded functionals
and :func:`~datasetflow.flows.loop.run_flow` expect.
"""

from __future__ import annotations

import torch

from ..distributed.comm import World, all_gather_object, all_reduce_sum, get_world, shard_range
from ..errors import InvalidArgumentError
from .dataset import LabeledDataset

__all__ = ["shard", "shard_local"]


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
