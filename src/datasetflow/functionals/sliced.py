r"""Sliced dataset distances to a fixed target as flow functionals: :math:`F(\rho) = \mathrm{SD}_p^p(\rho, \beta)`.

``sotdd_to`` (s-OTDD, the moment transform) and ``busemann_to`` (SWB1DG or SWBG) evaluate
:func:`~datasetflow.distances.sliced.sliced_distance` on the particles and return its ``value_pow``
(the root is not differentiable at 0; spec §5). The gradient reaches each particle through its own
projection and through its class's moments (s-OTDD), mean and :math:`\tilde\sigma` (SWB1DG) or
Gaussian (SWBG). The flow loop divides it by the particle's mass, the one Wasserstein rescaling
(:math:`v_i = \nabla_{x_i} F / a_i`), as for every other functional.

Directions: with ``resample=True`` (default, as the authors' flows) every evaluation draws a fresh
direction-bank seed from the functional's own ``torch.Generator`` (seeded with ``seed``), so the
objective is a stochastic estimate; ``resample=False`` keeps the bank of ``seed`` (a deterministic
objective). The generator's state is part of :meth:`state_dict`, which the flow checkpoints, so a
resumed flow draws the same directions as an uninterrupted one. ``standardize="joint"`` and SWBG's
``label_map="pca"`` are fitted once, at the first evaluation, on the particles and the target, and kept.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import LabeledDataset
from ..data.sharding import gather_dataset
from ..distances.sliced import fit_preprocessing, sliced_distance
from ..distances.sliced_sketch import check_quantiles, fit_sharded_preprocessing
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..solvers.sliced import check_n_projections
from .base import Functional, Particles
from .config import TermType, _keyword_options, _target_builder, register_term

__all__ = ["SlicedToTarget", "SOTDDToTarget", "BusemannToTarget", "sotdd_to", "busemann_to"]

#: Default directions per step (the spec's 500-1000 per flow step).
FLOW_PROJECTIONS = 500


class SlicedToTarget(Functional):
    """Shared machinery of :class:`SOTDDToTarget` and :class:`BusemannToTarget` (see the module docstring)."""

    name = "sliced"
    family = "sotdd"
    supports_sharding = True

    def _setup(self, target: LabeledDataset, options: dict[str, Any], resample: bool, seed: int) -> None:
        if not isinstance(target, LabeledDataset):
            raise InvalidArgumentError(f"target must be a LabeledDataset, got {type(target).__name__}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidArgumentError(f"seed must be an int, got {seed!r}.")
        check_n_projections(options["n_projections"])
        self.quantiles = check_quantiles(options.pop("quantiles", None))
        #: with ``quantiles``: the bound on ``|value - exact-mode value|`` of the last evaluation, else None
        self.last_error_bound: float | None = None
        self.target, self.options, self.resample, self.seed = target, options, bool(resample), int(seed)
        # validate every option now (on the target against itself), so a bad one fails before the flow starts
        sliced_distance(target, target, family=self.family, **{**options, "n_projections": 1})
        self.reset()

    def reset(self) -> None:  # noqa: D102
        self._generator = torch.Generator().manual_seed(self.seed)
        self._fitted: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        state: dict[str, Any] = {"generator": self._generator.get_state()}
        if self._fitted is not None:
            state["fitted"] = self._fitted
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.reset()
        if "generator" in state:
            self._generator.set_state(state["generator"])
        self._fitted = state.get("fitted")

    def _fit(self, data: LabeledDataset, world: Any = None) -> dict[str, Any]:
        if self._fitted is None and world is not None:  # the scalable mode: sharded particles, not gathered
            options = self.options
            self._fitted = fit_sharded_preprocessing(
                data.to(dtype=torch.float64),
                self.target.to(device=data.x.device, dtype=torch.float64),
                world,
                family=self.family,
                standardize=options.get("standardize"),
                label_map=options.get("label_map"),
                label_dim=options.get("label_dim", 10),
                seed=self.seed,
            )
        if self._fitted is None:
            options = self.options
            self._fitted = fit_preprocessing(
                (data.to(dtype=torch.float64), self.target.to(device=data.x.device, dtype=torch.float64)),
                family=self.family,
                standardize=options.get("standardize"),
                label_map=options.get("label_map"),
                label_dim=options.get("label_dim", 10),
                seed=self.seed,
            )
        return self._fitted

    def value(self, state: Particles) -> torch.Tensor:  # noqa: D102
        # sharded particles, exact mode: the shards are all-gathered (this rank's rows keep their graph); scalable
        # mode (quantiles): each rank keeps its shard and only sketches and class sums are all-reduced. Every rank
        # draws the same directions from the same generator, so the value is replicated
        sketched = self.quantiles is not None
        data = state.dataset() if sketched else gather_dataset(state.dataset(), state.world)
        if data.dim != self.target.dim:
            raise ShapeMismatchError(f"the particles have dimension {data.dim} but the target has {self.target.dim}.")
        if self.target.x.device != data.x.device or self.target.x.dtype != data.x.dtype:
            self.target = self.target.to(device=data.x.device, dtype=data.x.dtype)
        fitted = self._fit(data, state.world if sketched else None)
        seed = int(torch.randint(0, 2**62, (1,), generator=self._generator)) if self.resample else self.seed
        options = {**self.options, "standardize": fitted["standardize"]}
        if self.family == "swbg":
            options["label_map"] = fitted["label_map"]
        if not sketched:
            return sliced_distance(data, self.target, family=self.family, seed=seed, **options).value_pow
        result = sliced_distance(
            data, self.target, family=self.family, seed=seed, world=state.world, quantiles=self.quantiles, **options
        )
        self.last_error_bound = result.error_bound_pow
        return result.value_pow

    def __repr__(self) -> str:
        return (
            f"{self.name}_to(target={self.target.name or 'dataset'!r}, family={self.family!r}, "
            f"n_projections={self.options['n_projections']}, resample={self.resample})"
        )


class SOTDDToTarget(SlicedToTarget):
    r"""s-OTDD to a fixed target, :math:`F(\rho) = \mathrm{sOTDD}_p^p(\rho, \beta)` (``value_pow``).

    Args:
        target: the target :class:`LabeledDataset`.
        n_projections: directions per evaluation (default 500).
        n_moments, rates, p, chunk: as in :func:`~datasetflow.distances.sliced.sotdd`.
        standardize: as in :func:`~datasetflow.distances.sliced.sotdd`, but ``"joint"`` by default (fitted once
            on the initial particles and the target): the moment features :math:`t^\lambda/\lambda!` of raw
            features far from unit scale make the flow stiff (the small 2-D flow of
            ``tests/test_functionals_sliced.py`` diverges unstandardised even at small steps, and converges
            standardised).
        resample: fresh directions at every evaluation (default) or the fixed bank of ``seed``.
        seed: seed of the functional's generator (checkpointed) or of the fixed bank.
        quantiles: None (exact mode: sharded particles are all-gathered, ``n (d + 2)`` numbers per step) or ``Q``
            (the scalable mode of :mod:`~datasetflow.distances.sliced_sketch`, as ``mmd_sw_to(quantiles=Q)``:
            :math:`O(C L Q)` numbers per step, independent of ``n``; the bound on the change of the value it makes
            is recorded in :attr:`last_error_bound` after every evaluation). Uniform weights inside every class.
    """

    name = "sotdd"
    family = "sotdd"

    def __init__(
        self,
        target: LabeledDataset,
        *,
        n_projections: int = FLOW_PROJECTIONS,
        n_moments: int = 5,
        rates: str = "sotdd",
        p: float = 2,
        standardize: Any = "joint",
        chunk: int | None = None,
        resample: bool = True,
        seed: int = 0,
        quantiles: int | None = None,
    ) -> None:
        options = {"n_projections": n_projections, "n_moments": n_moments, "rates": rates, "p": p}
        self._setup(
            target, {**options, "standardize": standardize, "chunk": chunk, "quantiles": quantiles}, resample, seed
        )


class BusemannToTarget(SlicedToTarget):
    r"""Busemann-sliced distance (SWB1DG or SWBG) to a fixed target, :math:`F(\rho) = \mathrm{SWB}_p^p(\rho,
    \beta)` (``value_pow``).

    Args:
        target: the target :class:`LabeledDataset`.
        variant: ``"swb1dg"`` (default) or ``"swbg"``.
        n_projections: directions per evaluation (default 500).
        p, eps, label_map, label_dim, standardize, chunk: as in :func:`~datasetflow.distances.sliced.busemann`.
        resample: fresh directions at every evaluation (default) or the fixed bank of ``seed``.
        seed: seed of the functional's generator (checkpointed) or of the fixed bank.
        quantiles: None (exact mode) or ``Q``, the scalable mode (as in :class:`SOTDDToTarget`).
    """

    name = "busemann"

    def __init__(
        self,
        target: LabeledDataset,
        *,
        variant: str = "swb1dg",
        n_projections: int = FLOW_PROJECTIONS,
        p: float = 2,
        eps: float | None = None,
        label_map: Any = None,
        label_dim: int = 10,
        standardize: Any = None,
        chunk: int | None = None,
        resample: bool = True,
        seed: int = 0,
        quantiles: int | None = None,
    ) -> None:
        if variant not in ("swb1dg", "swbg"):
            raise InvalidArgumentError(f"variant must be one of ('swb1dg', 'swbg'), got {variant!r}.")
        self.family = variant
        options = {"n_projections": n_projections, "p": p, "eps": eps, "label_map": label_map}
        self._setup(
            target,
            {**options, "label_dim": label_dim, "standardize": standardize, "chunk": chunk, "quantiles": quantiles},
            resample,
            seed,
        )


def sotdd_to(target: LabeledDataset, **options: Any) -> SOTDDToTarget:
    """Shorthand for :class:`SOTDDToTarget`."""
    return SOTDDToTarget(target, **options)


def busemann_to(target: LabeledDataset, **options: Any) -> BusemannToTarget:
    """Shorthand for :class:`BusemannToTarget`."""
    return BusemannToTarget(target, **options)


def _term(cls: type) -> TermType:
    return TermType(
        _target_builder(cls),
        optional=_keyword_options(cls),
        needs_target=True,
        numbers=("p",),
        positive=("n_projections",),
    )


register_term("sotdd", _term(SOTDDToTarget))
register_term("busemann", _term(BusemannToTarget))
