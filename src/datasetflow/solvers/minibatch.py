r"""Minibatch optimal transport (Fatras, Zine, Flamary, Gribonval & Courty, AISTATS 2020).

.. math::
    \overline{OT}_B(a, b) = \frac1K \sum_{k=1}^K OT\big(a_{I_k}, b_{J_k}\big), \qquad
    \mathbb{E}\,\overline{OT}_B = \mathbb{E}_{I, J}\, OT(a_I, b_J),

the mean over ``K`` independent pairs of minibatches :math:`I_k` (``B`` source points) and
:math:`J_k` (``B`` target points), each solved exactly (network simplex) or, with ``reg``, by
Sinkhorn; ``a_I`` are the selected weights renormalised (per class when stratified).

**Bias.** The estimator is unbiased for its own expectation :math:`\mathbb{E}\,OT(a_I, b_J)`, which
is *not* :math:`OT(a, b)`: it is at least :math:`OT(a, b)` for ``B`` below ``n`` in general, and its
self-distance :math:`\mathbb{E}\,OT(a_I, a_{I'})` is **not 0** (two independent minibatches of the same
dataset differ). At ``B = n`` (and ``B = m``) every minibatch is the whole dataset and the
estimator equals :math:`OT(a, b)` exactly. **Variance**: the standard error
:math:`\hat\sigma / \sqrt K` is reported in ``OTResult.stderr``.

**Stratified** draws (default, when the cost carries class labels) take from every class a number
of points proportional to its mass (largest remainders), so that minibatches keep the class
proportions: the label term is then not a source of variance.

Gradients: each minibatch value carries its envelope gradient (the minibatch plan), and their
mean is the gradient of the estimator; memory is ``O(B^2)`` per minibatch, never ``n x m``.
"""

from __future__ import annotations

import math

import torch

from ..costs.ground import CostOperator
from ..distributed.comm import World, all_reduce_max, all_reduce_sum
from ..errors import InvalidArgumentError
from .exact import exact_ot_many
from .result import OTResult
from .sinkhorn import sinkhorn

__all__ = ["minibatch_ot", "draw_minibatch", "disjoint_minibatches", "DEFAULT_BATCH_SIZE", "DEFAULT_N_BATCHES"]

#: Default minibatch size (capped at ``min(n, m)``).
DEFAULT_BATCH_SIZE = 1000
#: Default number of minibatch pairs.
DEFAULT_N_BATCHES = 8


def _quotas(masses: torch.Tensor, counts: torch.Tensor, size: int) -> torch.Tensor:
    """Per-class sample counts proportional to ``masses`` (largest remainders), capped at ``counts``."""
    masses64 = masses.detach().double().cpu()
    counts = counts.cpu()
    target = masses64 / masses64.sum() * size
    take = torch.minimum(target.floor().long(), counts)
    for _ in range(size):
        short = size - int(take.sum())
        if short <= 0:
            break
        room = take < counts
        if not bool(room.any()):
            break
        remainder = torch.where(room, target - take.double(), torch.full_like(target, -math.inf))
        order = torch.argsort(remainder, descending=True)
        grow = order[: min(short, int(room.sum()))]
        take[grow] += 1
    return take


def draw_minibatch(
    weights: torch.Tensor,
    size: int,
    generator: torch.Generator,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Draw ``size`` distinct indices with probabilities :math:`\propto` ``weights`` (per class when
    ``labels`` are given: class quotas proportional to class masses), and their renormalised weights
    (within each class to the class mass). With ``size == len(weights)`` the draw is a permutation of
    all indices and the weights are the original ones.

    Returns:
        ``(index (size,), batch weights (size,))`` on the weights' device.
    """
    n = weights.shape[0]
    w = weights.detach()
    if labels is None:
        index = torch.multinomial(w, size, replacement=False, generator=generator)
        sel = w[index]
        return index, sel / sel.sum() * w.sum()
    num = int(labels.max()) + 1
    masses = torch.zeros(num, dtype=w.dtype, device=w.device).index_add(0, labels, w)
    counts = torch.bincount(labels, minlength=num)
    take = _quotas(masses, counts, size)
    parts, part_w = [], []
    positions = torch.arange(n, device=w.device)
    for c in torch.nonzero(take).flatten().tolist():
        members = positions[labels == c]
        pick = torch.multinomial(w[members], int(take[c]), replacement=False, generator=generator)
        chosen = members[pick]
        parts.append(chosen)
        sel = w[chosen]
        part_w.append(sel / sel.sum() * masses[c])
    index, batch_w = torch.cat(parts), torch.cat(part_w)
    return index, batch_w / batch_w.sum() * w.sum()


def disjoint_minibatches(
    weights: torch.Tensor,
    size: int,
    count: int,
    generator: torch.Generator,
    labels: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    r"""``count`` *disjoint* minibatches of ``size`` points (``count * size <= len(weights)``): consecutive
    chunks of one random order (per class when ``labels`` are given, with the class quotas of
    :func:`draw_minibatch`), weights renormalised as there. Each minibatch is, on its own, a uniform draw;
    together they move every particle at most once, so that in a flow each drawn particle receives its
    own displacement (the mean of ``count`` minibatch gradients, each of mass ``1/size``).

    Returns:
        a list of ``(index (size,), batch weights (size,))``.
    """
    w = weights.detach()
    n = w.shape[0]
    if labels is None:
        order = torch.randperm(n, generator=generator, device=w.device)
        batches = []
        for k in range(count):
            index = order[k * size : (k + 1) * size]
            sel = w[index]
            batches.append((index, sel / sel.sum() * w.sum()))
        return batches
    num = int(labels.max()) + 1
    masses = torch.zeros(num, dtype=w.dtype, device=w.device).index_add(0, labels, w)
    counts = torch.bincount(labels, minlength=num)
    take = _quotas(masses, counts, size)
    positions = torch.arange(n, device=w.device)
    members = {}
    for c in torch.nonzero(take).flatten().tolist():
        group = positions[labels == c]
        members[c] = group[torch.randperm(group.shape[0], generator=generator, device=w.device)]
    batches = []
    for k in range(count):
        parts, part_w = [], []
        for c, group in members.items():
            q = int(take[c])
            # a chunk of q <= n_c consecutive positions (modulo n_c) of the class order: distinct points
            chunk = group[torch.arange(k * q, (k + 1) * q, device=w.device) % group.shape[0]]
            sel = w[chunk]
            parts.append(chunk)
            part_w.append(sel / sel.sum() * masses[c])
        index, batch_w = torch.cat(parts), torch.cat(part_w)
        batches.append((index, batch_w / batch_w.sum() * w.sum()))
    return batches


def minibatch_ot(
    cost: CostOperator,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    batch_size: int | None = None,
    n_batches: int | None = None,
    reg: float | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    stratify: bool = True,
    disjoint: bool = False,
    grad: str = "envelope",
    max_iter: int | None = None,
    tol: float | None = None,
    world: World | None = None,
) -> OTResult:
    r"""Minibatch OT estimator (see the module docstring: expectation, bias, variance).

    Args:
        cost: ``(n, m)`` cost operator that supports :meth:`~datasetflow.costs.ground.CostOperator.subset`.
        a, b: marginals ``(n,)``, ``(m,)``.
        batch_size: ``B`` with ``1 <= B <= min(n, m)`` (default ``min(n, m, 1000)``).
        n_batches: ``K >= 1`` pairs of minibatches (default 8).
        reg: None (default: exact OT on each minibatch) or an absolute entropic regularisation
            (Sinkhorn on each minibatch, not debiased).
        seed: seed of the minibatch draws (a ``torch.Generator`` on the cost's device), unless
            ``generator`` is given (a flow passes its own, checkpointed one).
        stratify: per-class quotas when the cost has class labels (default True).
        disjoint: draw the ``K`` source minibatches disjoint (:func:`disjoint_minibatches`; needs
            ``K * B <= n``; the expectation is unchanged, the variance lower). Flows use it, with
            ``K = n // B``, so that every particle moves by its own displacement at every step.
        grad: ``"envelope"``, ``"autodiff"`` (Sinkhorn minibatches only) or ``"detach"``.
        max_iter, tol: limits of the minibatch solvers.
        world: split the ``K`` pairs over these ranks (:class:`~datasetflow.distributed.World`; default one
            process). Every rank holds the same ``cost`` (the source gathered, its features passed through
            :func:`~datasetflow.distributed.mark_replicated` so that the gradients of every rank's pairs are summed)
            and makes the same seeded draws; rank ``r`` solves the pairs ``k % size == r`` and the ``K`` values are
            all-reduced (zeros elsewhere, so the sum is exact): the same value as one process, ``~K / size`` of the
            solves per rank.

    Returns:
        :class:`OTResult` with the mean ``value`` (differentiable), ``stderr`` (the standard error of
        the mean, ``nan`` for ``K = 1``), ``errors`` the ``K`` minibatch values, ``plan``/``potentials``
        None, ``method="minibatch"``.

    Raises:
        InvalidArgumentError: ``batch_size`` larger than ``min(n, m)`` or not positive, ``n_batches < 1``.
    """
    n, m = cost.shape
    if batch_size is None:
        batch_size = min(n, m, DEFAULT_BATCH_SIZE)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= min(n, m):
        raise InvalidArgumentError(
            f"batch_size must be an int in [1, min(n, m)] = [1, {min(n, m)}] for a cost of shape ({n}, {m}) "
            f"(a minibatch draws distinct points), got {batch_size!r}."
        )
    if n_batches is None:
        n_batches = DEFAULT_N_BATCHES
    if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
        raise InvalidArgumentError(f"n_batches must be a positive int, got {n_batches!r}.")
    if disjoint and n_batches * batch_size > n:
        raise InvalidArgumentError(
            f"disjoint minibatches need n_batches * batch_size <= n, got {n_batches} * {batch_size} > {n}."
        )
    if generator is None:
        generator = torch.Generator(device=cost.device).manual_seed(int(seed))
    strata = cost.strata() if stratify else None
    source_labels = None if strata is None else strata[0]
    sources = disjoint_minibatches(a, batch_size, n_batches, generator, source_labels) if disjoint else None
    world = World() if world is None else world
    drawn = []  # every pair is drawn here, in order, so that the generator's stream does not depend on the solves
    for k in range(n_batches):
        if sources is None:
            rows, wa = draw_minibatch(a, batch_size, generator, source_labels)
        else:
            rows, wa = sources[k]
        cols, wb = draw_minibatch(b, batch_size, generator, None if strata is None else strata[1])
        if k % world.size == world.rank:  # this rank solves pair k; the other ranks draw it (the same stream), no more
            drawn.append((rows, cols, wa, wb))
    subs = cost.subsets([d[0] for d in drawn], [d[1] for d in drawn])  # one gather per side for all the pairs
    pairs = [(sub, wa, wb) for sub, (_, _, wa, wb) in zip(subs, drawn, strict=True)]
    if reg is None:
        results = exact_ot_many(pairs, max_iter=max_iter or 1_000_000, grad=grad)
    else:
        results = [
            sinkhorn(
                sub,
                wa,
                wb,
                float(reg),
                max_iter=max_iter or 1000,
                tol=1e-5 if tol is None else tol,
                grad=grad,
                backend="dense",
            )
            for sub, wa, wb in pairs
        ]
    values = [r.value for r in results]
    linear = [r.value_linear.detach() for r in results]
    n_iter = sum(r.n_iter for r in results)
    converged = all(r.converged for r in results)
    marginal_error = max((r.marginal_error for r in results), default=0.0)
    if world.distributed:  # the K values, each from the rank that solved it (zeros elsewhere: an exact sum)
        mine = list(range(world.rank, n_batches, world.size))
        stacked = torch.zeros(n_batches, dtype=cost.params()[0].dtype, device=cost.device)
        summary = torch.zeros(n_batches + 3, dtype=torch.float64, device=cost.device)
        if values:
            index = torch.as_tensor(mine, device=cost.device)
            stacked = stacked.index_put((index,), torch.stack(values))
            summary[index] = torch.stack(linear).double()
        else:  # no pair here (K < size): keep the graph, so that this rank's backward joins the others' collectives
            stacked = stacked + sum(0.0 * t.sum() for t in cost.params() if t.requires_grad)
        summary[n_batches:] = torch.tensor([n_iter, 0.0 if converged else 1.0, 0.0], dtype=torch.float64)
        stacked = all_reduce_sum(stacked, world)
        summary = all_reduce_sum(summary, world)
        marginal_error = float(all_reduce_max(torch.tensor([float(marginal_error)], dtype=torch.float64), world))
        linear_mean = summary[:n_batches].mean().to(stacked.dtype)
        n_iter, converged = int(summary[n_batches]), float(summary[n_batches + 1]) == 0.0
    else:
        stacked = torch.stack(values)
        linear_mean = torch.stack(linear).mean()
    value = stacked.mean()
    detached = stacked.detach().double()
    stderr = float(detached.std(unbiased=True) / math.sqrt(n_batches)) if n_batches > 1 else math.nan
    return OTResult(
        value=value,
        value_linear=linear_mean,
        plan=None,
        potentials=None,
        n_iter=n_iter,
        converged=converged,
        marginal_error=marginal_error,
        reg=reg,
        method="minibatch",
        backend="dense",
        errors=tuple(float(v) for v in detached),
        stderr=stderr,
        config={
            "batch_size": batch_size,
            "n_batches": n_batches,
            "stratified": strata is not None,
            "disjoint": disjoint,
            "inner": "exact" if reg is None else "sinkhorn",
            "seed": seed,
            "grad": grad,
            **({"world_size": world.size, "solved_here": len(results)} if world.distributed else {}),
        },
    )
