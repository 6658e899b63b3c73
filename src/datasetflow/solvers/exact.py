r"""Exact (unregularised) OT with POT's network simplex, with envelope gradients.

.. math:: OT(a, b) = \min_{P \in \Pi(a, b)} \langle P, C\rangle

The plan is computed by ``ot.emd`` in float64 on the CPU; the value
:math:`\langle P^\star, C\rangle` is returned on the cost's device and dtype with gradient
:math:`P^\star` with respect to ``C`` (and the dual potentials with respect to ``a``, ``b``).
"""

from __future__ import annotations

import warnings

import numpy as np
import ot
import torch

from ..costs.ground import CostOperator
from ..errors import ConvergenceWarning, InvalidArgumentError
from .envelope import attach_envelope
from .result import OTResult

__all__ = ["exact_ot"]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def exact_ot(
    cost: CostOperator, a: torch.Tensor, b: torch.Tensor, *, max_iter: int = 1_000_000, grad: str = "envelope"
) -> OTResult:
    """Exact OT by network simplex (``ot.emd``); see the module docstring.

    Args:
        cost: ``(n, m)`` cost operator (materialised densely: exact OT needs the matrix).
        a, b: marginals ``(n,)``, ``(m,)`` with equal sums.
        max_iter: network-simplex iteration limit (POT's ``numItermax``).
        grad: ``"envelope"`` / ``"autodiff"`` (identical for exact OT) or ``"detach"``.
    """
    if not isinstance(max_iter, int) or max_iter < 1:
        raise InvalidArgumentError(f"max_iter must be a positive int, got {max_iter!r}.")
    dense = cost.dense()
    a64, b64 = _to_numpy(a), _to_numpy(b)
    b64 = b64 * (a64.sum() / b64.sum())  # POT requires equal masses to double precision
    plan64, log = ot.emd(a64, b64, _to_numpy(dense), numItermax=max_iter, log=True)
    converged = int(log["result_code"]) == 1
    if not converged:
        warnings.warn(
            f"exact OT (network simplex) stopped: {log['warning']} (max_iter={max_iter}).",
            ConvergenceWarning,
            stacklevel=3,
        )
    plan = torch.as_tensor(plan64, dtype=dense.dtype, device=dense.device)
    f = torch.as_tensor(log["u"], dtype=dense.dtype, device=dense.device)
    g = torch.as_tensor(log["v"], dtype=dense.dtype, device=dense.device)
    value64 = float((plan64 * _to_numpy(dense)).sum())
    value = torch.tensor(value64, dtype=dense.dtype, device=dense.device)
    if grad != "detach":
        value = attach_envelope(value, cost, a, b, f, g, plan=plan, dense_cost=dense)
    error = float(np.abs(plan64.sum(1) - a64).sum() + np.abs(plan64.sum(0) - b64).sum())
    return OTResult(
        value=value,
        value_linear=torch.tensor(value64, dtype=dense.dtype, device=dense.device),
        plan=plan,
        potentials=(f, g),
        n_iter=int(log.get("n_iter", 0) or 0),
        converged=converged,
        marginal_error=error,
        reg=None,
        method="exact",
        backend="dense",
        config={"max_iter": max_iter, "grad": grad},
    )
