"""Typed, frozen results of OT solvers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["OTResult"]


@dataclass(frozen=True)
class OTResult:
    r"""Result of :func:`datasetflow.solve`.

    Attributes:
        value: 0-d tensor, the optimal value. Exact OT: :math:`\langle P, C\rangle`.
            Entropic OT: :math:`\langle P, C\rangle + \varepsilon\,\mathrm{KL}(P \| a b^\top)`
            (as ``ot.solve(..., reg=eps)``), equal at convergence to the dual value
            :math:`\langle f, a\rangle + \langle g, b\rangle`. With ``debiased=True`` the Sinkhorn
            divergence :math:`OT_\varepsilon(a,b) - \tfrac12 OT_\varepsilon(a,a) - \tfrac12 OT_\varepsilon(b,b)`.
            Carries gradients with respect to the cost (and weights) according to ``grad``.
        value_linear: 0-d tensor :math:`\langle P, C\rangle` without the entropic term
            (``ot.sinkhorn2``'s value), detached.
        plan: ``(n, m)`` optimal coupling, or None on the chunked backend.
        potentials: dual potentials ``(f, g)`` of shapes ``(n,)``, ``(m,)``.
        n_iter: Sinkhorn sweeps performed (epsilon-scaling ones included); 0 for exact OT,
            whose network simplex does not report an iteration count.
        converged: whether the stopping criterion was met.
        marginal_error: :math:`\|P 1 - a\|_1 + \|P^\top 1 - b\|_1` at the end.
        reg: the entropic regularisation used (None for exact OT).
        method: ``"exact"``, ``"sinkhorn"``, ``"lowrank"`` or ``"minibatch"``.
        backend: ``"dense"`` or ``"chunked"``.
        errors: marginal errors recorded during the iterations.
        self_values: for debiased divergences, the values of the two self-transport terms.
        plan_factors: for low-rank OT, ``(Q, g, R)`` of shapes ``(n, r)``, ``(r,)``, ``(m, r)`` with
            :math:`P = Q\,\mathrm{diag}(1/g)\,R^\top`.
        stderr: for minibatch OT, the standard error of the mean over the minibatch pairs.
        config: the options that produced this result.
    """

    value: torch.Tensor
    value_linear: torch.Tensor | None
    plan: torch.Tensor | None
    potentials: tuple[torch.Tensor, torch.Tensor] | None
    n_iter: int
    converged: bool
    marginal_error: float
    reg: float | None
    method: str
    backend: str = "dense"
    errors: tuple[float, ...] = ()
    self_values: tuple[torch.Tensor, torch.Tensor] | None = None
    plan_factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    stderr: float | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def diagnostics(self) -> dict[str, Any]:
        """JSON-friendly summary of the solver diagnostics."""
        return {
            "method": self.method,
            "backend": self.backend,
            "reg": self.reg,
            "n_iter": self.n_iter,
            "converged": self.converged,
            "marginal_error": self.marginal_error,
            **({"stderr": self.stderr} if self.stderr is not None else {}),
            **({"rank": int(self.plan_factors[1].shape[0])} if self.plan_factors is not None else {}),
        }
