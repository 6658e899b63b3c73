r"""The one Functional protocol: objectives over labeled datasets that add and scale.

A functional :math:`F(\rho)` maps the current particle system (a :class:`FlowState`) to a
0-d tensor that is differentiable in the particle features (and in the label parameters
where the dynamics has them). Functionals compose::

    F = otdd_to(target) + 0.5 * potential(...) + interaction(...) + entropy(0.01)

Every term reports its value; :meth:`Functional.terms` lists the weighted leaves so the
flow loop can log each one. The entropy term :math:`\int \rho \log \rho` has no particle
value; it contributes Langevin noise of temperature :meth:`Functional.noise` instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from .state import FlowState

__all__ = ["Functional", "SumFunctional", "ScaledFunctional"]


class Functional(ABC):
    """Base class of every objective a flow can follow."""

    #: short name used in logs and histories
    name: str = "functional"

    @abstractmethod
    def value(self, state: FlowState) -> torch.Tensor:
        """The 0-d objective at ``state``, differentiable in its parameters."""

    def noise(self) -> float:
        """Temperature of the Langevin noise this functional adds (entropy terms); 0 otherwise."""
        return 0.0

    # Functionals may keep memory between evaluations (warm starts, a fixed target's terms).
    # The flow loop resets it at the start of a flow and checkpoints it, so that a resumed flow
    # is bit-identical to an uninterrupted one.
    def reset(self) -> None:  # noqa: B027 - optional hook, no memory by default
        """Forget any memory kept between evaluations."""

    def state_dict(self) -> dict[str, Any]:
        """The memory kept between evaluations (tensors and Python scalars only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore the memory saved by :meth:`state_dict`."""

    def terms(self) -> Iterator[tuple[str, float, Functional]]:
        """``(name, weight, leaf)`` for every weighted leaf of this functional."""
        yield self.name, 1.0, self

    def __call__(self, state: FlowState) -> torch.Tensor:
        return self.value(state)

    def __add__(self, other: Functional) -> Functional:
        if not isinstance(other, Functional):
            return NotImplemented
        return SumFunctional([self, other])

    def __radd__(self, other: object) -> Functional:
        if other == 0:  # sum([...]) starts from 0
            return self
        return NotImplemented

    def __mul__(self, weight: float) -> Functional:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return NotImplemented
        return ScaledFunctional(self, float(weight))

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SumFunctional(Functional):
    """:math:`F = \\sum_k F_k`."""

    name = "sum"

    def __init__(self, parts: list[Functional]) -> None:
        flat: list[Functional] = []
        for part in parts:
            flat.extend(part.parts if isinstance(part, SumFunctional) else [part])
        self.parts = flat

    def value(self, state: FlowState) -> torch.Tensor:  # noqa: D102
        return sum(
            (part.value(state) for part in self.parts),
            start=torch.zeros((), dtype=state.x.dtype, device=state.x.device),
        )

    def noise(self) -> float:  # noqa: D102
        return sum(part.noise() for part in self.parts)

    def terms(self) -> Iterator[tuple[str, float, Functional]]:  # noqa: D102
        for part in self.parts:
            yield from part.terms()

    def reset(self) -> None:  # noqa: D102
        for part in self.parts:
            part.reset()

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {str(k): sub for k, part in enumerate(self.parts) if (sub := part.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        for k, part in enumerate(self.parts):
            part.load_state_dict(state.get(str(k), {}))

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self.parts)


class ScaledFunctional(Functional):
    """:math:`F = w\\, G` for a constant weight :math:`w \\ge 0`."""

    def __init__(self, inner: Functional, weight: float) -> None:
        if not weight >= 0:
            raise InvalidArgumentError(f"a functional's weight must be non-negative, got {weight!r}.")
        self.inner, self.weight = inner, weight
        self.name = inner.name

    def value(self, state: FlowState) -> torch.Tensor:  # noqa: D102
        return self.weight * self.inner.value(state)

    def noise(self) -> float:  # noqa: D102
        return self.weight * self.inner.noise()

    def terms(self) -> Iterator[tuple[str, float, Functional]]:  # noqa: D102
        for name, weight, leaf in self.inner.terms():
            yield name, self.weight * weight, leaf

    def reset(self) -> None:  # noqa: D102
        self.inner.reset()

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.inner.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{self.weight:g} * {self.inner!r}"
