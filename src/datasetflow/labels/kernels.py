r"""Kernels between probability distributions built on sliced Wasserstein distances.

A kernel object maps the matrix of :math:`\mathrm{SW}_p^p` values between classes
(:attr:`SWKernel.order` says which ``p``) to kernel values :math:`K(\mu, \nu)`:

=================  =============================================  ===========
name               :math:`K(\mu, \nu)`                            bandwidth
=================  =============================================  ===========
``riesz``          :math:`-\mathrm{SW}_2`                         none
``gaussian``       :math:`\exp(-\mathrm{SW}_2^2 / (2h))`          :math:`h > 0`
``riesz-r``        :math:`-\mathrm{SW}_2^r`, :math:`r \in (0, 2)`  none
``laplace``        :math:`\exp(-\mathrm{SW}_1 / h)`               :math:`h > 0`
``imq``            :math:`(h + \mathrm{SW}_2^2)^{-1/2}`           :math:`h > 0`
=================  =============================================  ===========

The Riesz kernels are conditionally negative-type distances, not positive definite; their MMD
is the energy distance of the SW metric. At coincident distributions (:math:`\mathrm{SW} = 0`)
they contribute 0 with a zero gradient, never NaN.

When the bandwidth is None it is set by the median heuristic on the first matrix the kernel
sees (the median of the off-diagonal :math:`\mathrm{SW}_2^2` values for ``gaussian`` and
``imq``, of :math:`\mathrm{SW}_1` for ``laplace``) and kept from then on (:attr:`bandwidth`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidArgumentError

__all__ = ["SWKernel", "get_kernel", "KERNELS"]

#: kernel name -> (SW order p it needs, has a bandwidth)
KERNELS: dict[str, tuple[int, bool]] = {
    "riesz": (2, False),
    "gaussian": (2, True),
    "riesz-r": (2, False),
    "laplace": (1, True),
    "imq": (2, True),
}
_ALIASES = {"generalized-riesz": "riesz-r", "generalised-riesz": "riesz-r", "inverse-multiquadric": "imq"}


def _safe_power(values: torch.Tensor, exponent: float) -> torch.Tensor:
    """``values ** exponent`` for ``values >= 0``, with value and gradient 0 where ``values == 0``."""
    positive = values > 0
    safe = torch.where(positive, values, torch.ones_like(values))
    return torch.where(positive, safe.pow(exponent), torch.zeros_like(values))


class SWKernel:
    """A kernel between distributions, as a function of their sliced Wasserstein distance.

    Args:
        name: one of ``riesz``, ``gaussian``, ``riesz-r`` (generalized Riesz), ``laplace``, ``imq``.
        bandwidth: :math:`h > 0` for ``gaussian``, ``laplace`` and ``imq`` (None: median
            heuristic on first use); must be None for the Riesz kernels.
        exponent: :math:`r \\in (0, 2)` of ``riesz-r`` (default 1, which is ``riesz``).

    Attributes:
        order: the ``p`` of the :math:`\\mathrm{SW}_p^p` matrix the kernel takes (1 or 2).
    """

    def __init__(self, name: str = "riesz", *, bandwidth: float | None = None, exponent: float = 1.0) -> None:
        key = _ALIASES.get(str(name).lower(), str(name).lower())
        if key not in KERNELS:
            raise InvalidArgumentError(
                f"unknown kernel {name!r}; valid kernels are {sorted(KERNELS)} (aliases: {sorted(_ALIASES)})."
            )
        self.name = key
        self.order, has_bandwidth = KERNELS[key]
        if bandwidth is not None:
            if not has_bandwidth:
                raise InvalidArgumentError(
                    f"the {key!r} kernel has no bandwidth, got bandwidth={bandwidth!r}; kernels with one are "
                    f"{sorted(k for k, (_, b) in KERNELS.items() if b)}."
                )
            if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not bandwidth > 0:
                raise InvalidArgumentError(f"bandwidth must be a positive number, got {bandwidth!r}.")
            bandwidth = float(bandwidth)
        if key == "riesz-r" and not 0 < exponent < 2:
            raise InvalidArgumentError(f"the generalized Riesz exponent r must lie in (0, 2), got {exponent!r}.")
        self.exponent = float(exponent)
        self.bandwidth = bandwidth
        self.has_bandwidth = has_bandwidth

    def __repr__(self) -> str:
        extra = f", bandwidth={self.bandwidth:g}" if self.bandwidth is not None else ""
        extra += f", exponent={self.exponent:g}" if self.name == "riesz-r" else ""
        return f"SWKernel({self.name!r}{extra})"

    def fit_bandwidth(self, sw: torch.Tensor) -> None:
        """Set a missing bandwidth to the median of the positive values of an SW matrix."""
        if not self.has_bandwidth or self.bandwidth is not None:
            return
        values = sw.detach().flatten()
        values = values[values > 0]
        median = float(values.median()) if values.numel() else 1.0
        self.bandwidth = median if median > 0 else 1.0

    def __call__(self, sw: torch.Tensor) -> torch.Tensor:
        """Kernel values from a matrix of :math:`\\mathrm{SW}_p^p` values (``p = order``)."""
        self.fit_bandwidth(sw)
        h = self.bandwidth
        if self.name == "riesz":
            return -_safe_power(sw, 0.5)
        if self.name == "riesz-r":
            return -_safe_power(sw, self.exponent / 2.0)
        if self.name == "gaussian":
            return torch.exp(-sw / (2.0 * h))
        if self.name == "laplace":
            return torch.exp(-sw / h)
        return (h + sw).rsqrt()  # imq

    def state_dict(self) -> dict[str, Any]:
        """The fitted bandwidth (for checkpoints)."""
        return {"bandwidth": self.bandwidth}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "bandwidth" in state:
            self.bandwidth = state["bandwidth"]


def get_kernel(kernel: str | SWKernel, *, bandwidth: float | None = None, exponent: float = 1.0) -> SWKernel:
    """A kernel object from a name or an instance (a copy, so fitted bandwidths are not shared)."""
    if isinstance(kernel, SWKernel):
        if bandwidth is not None:
            raise InvalidArgumentError("give the bandwidth to the SWKernel instance, not separately.")
        return SWKernel(kernel.name, bandwidth=kernel.bandwidth, exponent=kernel.exponent)
    if not isinstance(kernel, str):
        raise InvalidArgumentError(f"kernel must be a name in {sorted(KERNELS)} or an SWKernel, got {kernel!r}.")
    return SWKernel(kernel, bandwidth=bandwidth, exponent=exponent)
