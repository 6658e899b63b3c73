r"""The one Functional protocol: objectives over labeled datasets that add and scale.

A functional :math:`F(\rho)` maps the current particle system to a 0-d tensor that is
differentiable in the particle features (and in the label parameters where the dynamics has
them). It sees the particles only through the small :class:`Particles` protocol (features,
labels, weights and a label view) and knows nothing about the dynamics that moves them; a
:class:`~datasetflow.data.dataset.LabeledDataset` can be passed directly. Functionals compose::

    F = otdd_to(target) + 0.5 * potential(...) + interaction(...) + entropy(0.01)

Every term reports its value; :meth:`Functional.terms` lists the weighted leaves so the
flow loop can log each one. The entropy term :math:`\int \rho \log \rho` has no particle
value; it contributes Langevin noise of temperature :meth:`Functional.noise` instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from ..data.dataset import ClassStats, LabeledDataset
from ..distributed.comm import World
from ..errors import InvalidArgumentError

__all__ = ["Functional", "SumFunctional", "ScaledFunctional", "Particles", "DatasetParticles", "as_particles"]


@runtime_checkable
class Particles(Protocol):
    """What a functional sees of the particle system :math:`\rho = \\sum_i w_i \\delta_{(x_i, y_i)}`.

    Attributes:
        x: ``(n, d)`` features (differentiable: the tensor the flow moves).
        y: ``(n,)`` label indices into ``classes``.
        weights: ``(n,)`` masses summing to 1.
        classes: the class names.
        world: the ranks the particles are sharded over (:class:`~datasetflow.distributed.World`);
            in single-process mode ``world.size == 1``. When sharded, ``x``, ``y`` and ``weights`` are this
            rank's shard (weights summing to 1 over all ranks) and a functional returns the objective of
            all the particles, the same on every rank.
    """

    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    classes: tuple[Hashable, ...]
    world: World

    def dataset(self) -> LabeledDataset:
        """The particles as a :class:`LabeledDataset` whose features keep their graph."""
        ...

    def label_view(self) -> tuple[LabeledDataset, ClassStats | None]:
        """What label-aware functionals (OTDD) compare: a dataset and, where the label distributions are
        parameters of their own, their :class:`ClassStats` (None: statistics of the samples)."""
        ...


class DatasetParticles:
    """A :class:`LabeledDataset` seen as :class:`Particles` (labels fixed, statistics from the samples)."""

    def __init__(self, dataset: LabeledDataset) -> None:
        self._dataset = dataset
        self.x, self.y, self.weights, self.classes = dataset.x, dataset.y, dataset.weights, dataset.classes
        self.world = World()

    def dataset(self) -> LabeledDataset:  # noqa: D102
        return self._dataset

    def label_view(self) -> tuple[LabeledDataset, ClassStats | None]:  # noqa: D102
        return self._dataset, None


def as_particles(particles: Any) -> Particles:
    """``particles`` itself if it follows the :class:`Particles` protocol; a :class:`LabeledDataset` wrapped."""
    if isinstance(particles, LabeledDataset):
        return DatasetParticles(particles)
    if not isinstance(particles, Particles):
        raise InvalidArgumentError(
            f"a functional is evaluated on Particles (e.g. a flow's state) or a LabeledDataset, got "
            f"{type(particles).__name__}."
        )
    return particles


class Functional(ABC):
    """Base class of every objective a flow can follow."""

    #: short name used in logs and histories
    name: str = "functional"
    #: whether :meth:`value` handles particles sharded over several ranks (``state.world.size > 1``):
    #: it then returns the objective of all particles, the same on every rank, differentiable in this
    #: rank's shard. ``run_flow`` refuses a sharded flow whose functional has a leaf without it.
    supports_sharding: bool = False

    @abstractmethod
    def value(self, state: Particles) -> torch.Tensor:
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

    def __call__(self, state: Particles | LabeledDataset) -> torch.Tensor:
        return self.value(as_particles(state))

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

    def value(self, state: Particles) -> torch.Tensor:  # noqa: D102
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

    def value(self, state: Particles) -> torch.Tensor:  # noqa: D102
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
