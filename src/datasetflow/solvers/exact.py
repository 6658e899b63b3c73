r"""Exact (unregularised) OT with POT's network simplex, with envelope gradients.

.. math:: OT(a, b) = \min_{P \in \Pi(a, b)} \langle P, C\rangle

The plan is computed by ``ot.emd`` in float64 on the CPU; the value
:math:`\langle P^\star, C\rangle` is returned on the cost's device and dtype with gradient
:math:`P^\star` with respect to ``C`` (and the dual potentials with respect to ``a``, ``b``).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ot
import torch

from ..costs.ground import CostOperator
from ..errors import ConvergenceWarning, InvalidArgumentError
from .envelope import attach_envelope
from .result import OTResult

__all__ = ["exact_ot", "exact_ot_many"]


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
    return exact_ot_many([(cost, a, b)], max_iter=max_iter, grad=grad, workers=1)[0]


def exact_ot_many(
    problems: list, *, max_iter: int = 1_000_000, grad: str = "envelope", workers: int | None = None
) -> list[OTResult]:
    """:func:`exact_ot` on each ``(cost, a, b)`` of ``problems``, in order.

    The network simplex (POT's C++ ``emd``, which releases the GIL) runs on ``workers`` threads (default
    ``torch.get_num_threads()``); every torch operation (the dense costs, the envelope graphs) runs on the calling
    thread in the problems' order, so the results and their gradients are bit-identical to one sequential loop
    whatever the number of workers.
    """
    if not isinstance(max_iter, int) or max_iter < 1:
        raise InvalidArgumentError(f"max_iter must be a positive int, got {max_iter!r}.")
    prepared = []
    for cost, a, b in problems:
        dense = cost.dense()
        a64, b64 = _to_numpy(a), _to_numpy(b)
        b64 = b64 * (a64.sum() / b64.sum())  # POT requires equal masses to double precision
        prepared.append((dense, a64, b64, _to_numpy(dense)))

    def network_simplex(item):
        _, a64, b64, cost64 = item
        return ot.emd(a64, b64, cost64, numItermax=max_iter, log=True)

    workers = min(len(prepared), max(1, torch.get_num_threads() if workers is None else int(workers)))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            solved = list(pool.map(network_simplex, prepared))
    else:
        solved = [network_simplex(item) for item in prepared]
    results = []
    for (cost, a, b), (dense, a64, b64, cost64), (plan64, log) in zip(problems, prepared, solved, strict=True):
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
        value64 = float((plan64 * cost64).sum())
        value = torch.tensor(value64, dtype=dense.dtype, device=dense.device)
        if grad != "detach":
            value = attach_envelope(value, cost, a, b, f, g, plan=plan, dense_cost=dense)
        error = float(np.abs(plan64.sum(1) - a64).sum() + np.abs(plan64.sum(0) - b64).sum())
        results.append(
            OTResult(
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
        )
    return results
