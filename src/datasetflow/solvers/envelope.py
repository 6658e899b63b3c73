r"""Gradients of OT values by the envelope theorem.

At the optimum, :math:`\partial\, OT / \partial C_{ij} = P_{ij}` and
:math:`\partial\, OT/\partial a_i = f_i`, :math:`\partial\, OT/\partial b_j = g_j`, so no
differentiation through solver iterations is needed. :func:`attach_envelope` returns a
tensor equal to the given value whose gradient is exactly that, for dense and for
chunked (implicitly defined) costs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..costs.ground import CostOperator

__all__ = ["attach_envelope", "attach_envelope_factored"]

PlanBlock = Callable[[int, int, torch.Tensor], torch.Tensor]


class _EnvelopeChunked(torch.autograd.Function):
    """Value with a backward that recomputes the cost and plan block by block."""

    @staticmethod
    def forward(ctx, value, cost, plan_block, a, b, f, g, *params):  # type: ignore[override]
        ctx.cost, ctx.plan_block = cost, plan_block
        ctx.save_for_backward(f, g, *params)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        f, g, *params = ctx.saved_tensors
        cost: CostOperator = ctx.cost
        need = ctx.needs_input_grad
        grads: list[torch.Tensor | None] = [None] * len(params)
        wanted = [k for k, p in enumerate(params) if need[7 + k]]
        if wanted:
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_(k in wanted) for k, p in enumerate(params)]
                for start, stop in cost.row_blocks():
                    block = cost.block(start, stop, leaves)
                    plan = ctx.plan_block(start, stop, block.detach())
                    inputs = [leaves[k] for k in wanted]
                    parts = torch.autograd.grad(block, inputs, grad_outputs=plan * grad_output, allow_unused=True)
                    for k, part in zip(wanted, parts, strict=False):
                        if part is not None:
                            grads[k] = part if grads[k] is None else grads[k] + part
        grad_a = f * grad_output if need[3] else None
        grad_b = g * grad_output if need[4] else None
        return (None, None, None, grad_a, grad_b, None, None, *grads)


class _EnvelopeDense(torch.autograd.Function):
    """``value`` with the gradient ``plan`` for a dense cost matrix (no ``n x m`` pass in the forward)."""

    @staticmethod
    def forward(ctx, value, dense_cost, plan):  # type: ignore[override]
        ctx.save_for_backward(plan)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        (plan,) = ctx.saved_tensors
        return None, plan * grad_output, None


def attach_envelope(
    value: torch.Tensor,
    cost: CostOperator,
    a: torch.Tensor,
    b: torch.Tensor,
    f: torch.Tensor,
    g: torch.Tensor,
    *,
    plan: torch.Tensor | None = None,
    dense_cost: torch.Tensor | None = None,
    plan_block: PlanBlock | None = None,
) -> torch.Tensor:
    """Return ``value`` (detached) with envelope-theorem gradients attached.

    Args:
        value: 0-d tensor, the optimal value (no graph needed).
        cost: the cost operator whose ``params()`` receive ``sum_ij P_ij dC_ij``.
        a, b: marginals (gradient ``f``, ``g`` if they require grad).
        f, g: optimal dual potentials.
        plan: dense ``(n, m)`` optimal plan; with ``dense_cost`` (the differentiable
            ``(n, m)`` cost, already computed) no cost is recomputed.
        plan_block: for chunked costs, ``plan_block(start, stop, cost_block)`` returns the
            plan rows ``start:stop``; the backward recomputes cost blocks.
    """
    value = value.detach()
    if plan is not None and dense_cost is not None:
        out = _EnvelopeDense.apply(value, dense_cost, plan.detach()) if dense_cost.requires_grad else value
        if a.requires_grad:
            out = out + (f.detach() * (a - a.detach())).sum()
        if b.requires_grad:
            out = out + (g.detach() * (b - b.detach())).sum()
        return out
    if plan_block is None:
        if plan is None:
            raise ValueError("attach_envelope needs plan and dense_cost, or plan_block.")
        dense_plan = plan.detach()

        def plan_block(start: int, stop: int, _block: torch.Tensor) -> torch.Tensor:
            return dense_plan[start:stop]

    params = cost.params()
    if not (any(p.requires_grad for p in params) or a.requires_grad or b.requires_grad):
        return value
    return _EnvelopeChunked.apply(value, cost, plan_block, a, b, f.detach(), g.detach(), *params)


def attach_envelope_factored(
    value: torch.Tensor,
    factors: tuple[torch.Tensor, torch.Tensor],
    left: torch.Tensor,
    right: torch.Tensor,
) -> torch.Tensor:
    r"""``value`` (detached) with the envelope gradient of a factorised cost and a factorised plan.

    With the cost :math:`C = A B^\top` and the plan :math:`P = U V^\top` (``U`` of shape ``(n, r)``,
    ``V`` of shape ``(m, r)``), :math:`\partial \langle P, C\rangle / \partial A = P B = U (V^\top B)`
    and :math:`\partial/\partial B = P^\top A = V (U^\top A)`: ``O((n + m) k r)``, no ``n x m`` matrix.

    Args:
        value: 0-d tensor, the optimal value.
        factors: the differentiable ``(A, B)`` of shapes ``(n, k)``, ``(m, k)``.
        left, right: ``U``, ``V`` (detached inside).
    """
    big_a, big_b = factors
    value = value.detach()
    if not (big_a.requires_grad or big_b.requires_grad):
        return value
    u, v = left.detach(), right.detach()
    a_d, b_d = big_a.detach(), big_b.detach()
    with torch.no_grad():
        grad_a = u @ (v.mT @ b_d)
        grad_b = v @ (u.mT @ a_d)
    return value + ((big_a - a_d) * grad_a).sum() + ((big_b - b_d) * grad_b).sum()
