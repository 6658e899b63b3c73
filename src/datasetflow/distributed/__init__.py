"""Sharding over processes with ``torch.distributed``: the process group, collectives and fault handling.

This package holds only what every layer needs to shard its work (it depends on torch alone); the
sharded computations live where their concept lives (class statistics in ``data``, row-sharded
Sinkhorn in ``solvers``, sliced distances in ``distances``, the flow loop and its checkpoints in
``flows``). See ``docs/distributed.md``.
"""

from . import comm
from .comm import *  # noqa: F403

__all__ = [*comm.__all__]
