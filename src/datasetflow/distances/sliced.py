r"""Sliced dataset distances: s-OTDD (moment transform) and Busemann slicing (SWB1DG, SWBG).

A labeled dataset :math:`D = \sum_i a_i \delta_{(x_i, P_{y_i})}` (class laws
:math:`P_c = \sum_{y_j = c} (a_j/\alpha_c)\,\delta_{x_j}`, class masses :math:`\alpha_c`) is sliced by a
*hybrid projection* :math:`\omega = (\theta, \psi, \dots)`, :math:`\theta \in S^{d-1}`, :math:`\psi \in S^m`:

.. math:: z_\omega(x_i) = \psi_1\,\theta^\top x_i + \sum_{r=1}^m \psi_{r+1}\, h_{\omega,r}(P_{y_i}),
          \qquad
          \mathrm{SD}_p^p(D, D') = \mathbb{E}_\omega\, W_p^p(z_\omega\#D,\; z_\omega\#D'),

estimated by the mean of :math:`w_l = W_p^p` over :math:`L` independent draws (``value_pow``; ``value`` is
its :math:`p`-th root). Each 1-D :math:`W_p^p` is exact (sorting, merged quantile levels for unequal
sizes or weights). The families differ only in the class features :math:`h`:

* ``sotdd`` (Nguyen et al., ICML 2025, the moment transform projection, :math:`m = k`):
  :math:`h_r(P) = \mathbb{E}_P[(\theta^\top X)^{\lambda_r}] / \lambda_r!` with
  :math:`\lambda_r \sim` zero-truncated Poisson of rate :math:`r` (``rates="sotdd"``) or :math:`r - 1`
  (``rates="bonet"``, where :math:`\lambda_1 \equiv 1`), drawn per projection.
* ``swb1dg`` (Bonet et al., AISTATS 2026, :math:`m = 1`): the Busemann function of :math:`\theta\#P`
  along the 1-D Gaussian ray from :math:`N(0, \varepsilon^2)` to :math:`N(m_1, s_1^2)`,
  :math:`m_1 \sim U(-1, 1)`, :math:`s_1 = \varepsilon + \sqrt{1 - m_1^2}`:
  :math:`h(P) = -m_1\,\mathrm{mean}(\theta\#P) - (s_1 - \varepsilon)(\tilde\sigma(\theta\#P) - \varepsilon)`,
  with :math:`\tilde\sigma(\nu) = \int_0^1 Q_\nu(u)\,\Phi^{-1}(u)\,du` computed *exactly* on the class's
  cumulative weights :math:`c_r`: :math:`\tilde\sigma = \sum_r t_{(r)}[\varphi(\Phi^{-1}(c_{r-1})) -
  \varphi(\Phi^{-1}(c_r))]` (the public code's quadrature is biased, spec §3.2).
* ``swbg`` (:math:`m = 1`): the Busemann function of the class Gaussian :math:`N(m_c, \Sigma_c)` (mean and
  biased covariance in a fixed label space :math:`x \mapsto Ex`) along a Bures ray from
  :math:`N(0, \varepsilon I)`: :math:`h = -\langle m_{dir}, m_c\rangle + \varepsilon\,\mathrm{tr}\,S -
  \sqrt{\varepsilon}\,\|S\Sigma_c^{1/2}\|_*`, with :math:`m_{dir} = u/\sqrt{1+\varepsilon}` and
  :math:`S = P\,\mathrm{diag}(|g|/\|g\|)\,P^\top/\sqrt{1+\varepsilon}` (:math:`P` Haar orthogonal).

**Directions** come from a *direction bank* (spec §1.5): projection :math:`l` belongs to block
:math:`\lfloor l / 256 \rfloor`, drawn on the CPU in float64 by a generator seeded with a fixed mix of
``(seed, block)``, in the order :math:`\theta`, :math:`\psi`, family parameters, then cast and moved to the
data's device. The same ``(seed, L)`` gives the same directions on every device and for every ``chunk``,
the first :math:`L` directions of a larger :math:`L` are the same, and no projection is dropped.

**Numerics.** Projections :math:`\theta^\top x` are formed in the data's dtype, then everything after
(powers, class sums, Busemann values, sorting, cumulative weights) runs in float64. Powers use the
log-space form :math:`\mathrm{sgn}(t)^\lambda \exp(\lambda\log|t| - \log\lambda!)` (0 at :math:`t = 0`, and
:math:`t` itself for :math:`\lambda = 1`), so nothing overflows before the class sums. Features are used as
given unless ``standardize`` says otherwise (one shared affine map, never one per dataset; see
:func:`sotdd`). Memory is :math:`O((n + m)\,B)` for a chunk of :math:`B` projections: the gradient is
computed chunk by chunk while the value is formed (one forward and one backward pass per chunk) and
stored, so no graph over all :math:`L` directions is ever kept.

:func:`distance_matrix` projects each of :math:`N` datasets once per chunk (one sketch per dataset,
shared directions) and compares all pairs from the sorted sketches: :math:`N` projection passes, not
:math:`N^2`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..costs.linalg import nuclear_norm, psd_sqrt, safe_sqrt
from ..data.dataset import LabeledDataset, check_dataset_pair
from ..errors import EmptyDatasetError, InvalidArgumentError, NonFiniteError, ShapeMismatchError
from ..solvers.sliced import argsort_rows, check_n_projections, check_p, wasserstein_1d_sorted

__all__ = [
    "SlicedResult",
    "DistanceMatrixResult",
    "DirectionBank",
    "sotdd",
    "busemann",
    "sliced_distance",
    "distance_matrix",
    "fit_preprocessing",
    "SLICED_FAMILIES",
    "MATRIX_METHODS",
    "BLOCK_SIZE",
    "DEFAULT_SLICED_PROJECTIONS",
]

#: Projections per block of the direction bank.
BLOCK_SIZE = 256
#: The families of :func:`sliced_distance`.
SLICED_FAMILIES = ("sotdd", "swb1dg", "swbg")
#: The methods of :func:`distance_matrix` (``busemann`` is SWB1DG, ``busemann-gaussian`` SWBG).
MATRIX_METHODS = ("sotdd", "busemann", "busemann-gaussian", "otdd")
#: Default number of projections (the spec recommends 10^4 for reported distances, 500-1000 per flow step).
DEFAULT_SLICED_PROJECTIONS = 1000
#: A chunk of projections holds at most this many projected values (both datasets together) by default.
CHUNK_ELEMENTS = 1 << 22
_RATES = ("sotdd", "bonet")
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class SlicedResult:
    r"""Result of :func:`sotdd`, :func:`busemann` and :func:`sliced_distance` (frozen).

    Attributes:
        value: 0-d tensor, :math:`\mathrm{value\_pow}^{1/p}` (differentiable; gradient 0 at 0). Biased low
            by :math:`O(1/L)` as the root of an unbiased mean.
        value_pow: 0-d tensor, the mean of the per-projection :math:`W_p^p` (differentiable in both datasets'
            features; for ``p = 2`` in the units of ``otdd().distance_squared``).
        stderr_pow: float, :math:`\mathrm{sd}(w)/\sqrt{L}` (0 for ``L = 1``).
        stderr: float, its delta-method transfer to ``value``, :math:`\mathrm{stderr\_pow}/(p\,
            \mathrm{value}^{p-1})` (inf at ``value = 0`` with a non-zero ``stderr_pow``).
        per_projection: ``(L,)`` float64 values :math:`w_l` (detached).
        config: the settings (family, seed, L, block size, chunk, p, moments and rates or eps, label map,
            standardisation, dtype, device, sizes).
        error_bound: the scalable mode (``quantiles=Q``): a bound on ``|value - value of the exact mode|`` for the
            same directions (:mod:`~datasetflow.distances.sliced_sketch`); None in the exact mode.
        error_bound_pow: the same bound for ``value_pow``; None in the exact mode.
    """

    value: torch.Tensor
    value_pow: torch.Tensor
    stderr_pow: float
    stderr: float
    per_projection: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)
    error_bound: float | None = None
    error_bound_pow: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (no per-projection values)."""
        return {
            "value": float(self.value.detach()),
            "value_pow": float(self.value_pow.detach()),
            "stderr": self.stderr if math.isfinite(self.stderr) else None,
            "stderr_pow": self.stderr_pow,
            "config": dict(self.config),
        }


@dataclass(frozen=True)
class DistanceMatrixResult:
    r"""Result of :func:`distance_matrix` (frozen).

    Attributes:
        matrix_pow: ``(N, N)`` float64 ``value_pow`` entries (``distance_squared`` for ``otdd``), zero diagonal.
        matrix: ``(N, N)`` their :math:`p`-th roots (square roots for ``otdd``).
        stderr_pow: ``(N, N)`` standard errors over projections (zeros for ``otdd``).
        names: the datasets' names, in order.
        method: the method name.
        seconds: wall time of the computation.
        config: the settings.
    """

    matrix_pow: torch.Tensor
    matrix: torch.Tensor
    stderr_pow: torch.Tensor
    names: tuple[str, ...]
    method: str
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- the direction bank
def _block_seed(seed: int, block: int) -> int:
    """A fixed mix (SplitMix64) of ``(seed, block)`` into a 63-bit generator seed."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(block) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def _unit_rows(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    g = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def _zero_truncated_poisson(rates: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    r"""``(rows, k)`` draws of :math:`1 + \mathrm{Poisson}(\rho - \tau)`, :math:`\tau = -\log u`,
    :math:`u \sim U(e^{-\rho}, 1)`: the exact zero-truncated Poisson of rate :math:`\rho` (rate 0 gives 1)."""
    low = torch.exp(-rates)[None, :].expand(rows, -1)
    u = low + (1.0 - low) * torch.rand(rows, rates.numel(), generator=generator, dtype=torch.float64)
    tau = -torch.log(u)
    return 1 + torch.poisson((rates[None, :] - tau).clamp_min(0), generator=generator).long()


class DirectionBank:
    r"""The seeded projections :math:`\omega_1, \dots, \omega_L` of one sliced distance (spec §1.5).

    Args:
        family: ``"sotdd"``, ``"swb1dg"`` or ``"swbg"``.
        seed: the bank's seed.
        n_projections: :math:`L`.
        dim: the feature dimension :math:`d`.
        n_moments: :math:`k` (``sotdd``).
        rates: ``"sotdd"`` (rates :math:`1..k`) or ``"bonet"`` (:math:`0..k-1`).
        label_dim: :math:`d'` of the label space (``swbg``).
        eps: :math:`\varepsilon` of the ray (``swb1dg``, ``swbg``).

    :meth:`chunk` returns the parameters of projections ``start..stop-1``; block :math:`b` is always drawn
    whole (256 projections), so the parameters of a projection depend only on ``(seed, l)``.
    """

    def __init__(
        self,
        family: str,
        seed: int,
        n_projections: int,
        dim: int,
        *,
        n_moments: int = 0,
        rates: str = "sotdd",
        label_dim: int | None = None,
        eps: float = 0.0,
    ) -> None:
        self.family, self.seed, self.n_projections, self.dim = family, int(seed), int(n_projections), int(dim)
        self.n_moments, self.rates, self.label_dim, self.eps = int(n_moments), rates, label_dim, float(eps)
        self._cache: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def psi_dim(self) -> int:
        """:math:`m + 1`, the length of :math:`\\psi`."""
        return self.n_moments + 1 if self.family == "sotdd" else 2

    def block(self, index: int) -> dict[str, torch.Tensor]:
        """The float64 CPU parameters of block ``index`` (``BLOCK_SIZE`` projections)."""
        if index in self._cache:
            return self._cache[index]
        generator = torch.Generator(device="cpu").manual_seed(_block_seed(self.seed, index))
        rows = BLOCK_SIZE
        out = {"theta": _unit_rows((rows, self.dim), generator), "psi": _unit_rows((rows, self.psi_dim), generator)}
        if self.family == "sotdd":
            k = self.n_moments
            offset = 1.0 if self.rates == "sotdd" else 0.0
            rates = torch.arange(k, dtype=torch.float64) + offset
            out["lam"] = _zero_truncated_poisson(rates, rows, generator) if k else torch.ones(rows, 0).long()
        elif self.family == "swb1dg":
            out["m1"] = 2.0 * torch.rand(rows, generator=generator, dtype=torch.float64) - 1.0
        else:
            dp = int(self.label_dim)
            u = _unit_rows((rows, dp), generator)
            g = torch.randn(rows, dp, generator=generator, dtype=torch.float64).abs()
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
            q, r = torch.linalg.qr(torch.randn(rows, dp, dp, generator=generator, dtype=torch.float64))
            signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
            q = q * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None, :]  # Haar
            root = math.sqrt(1.0 + self.eps)
            out["m_dir"] = u / root
            out["S"] = (q * g[:, None, :]) @ q.mT / root
        self._cache = {index: out}  # chunks walk the bank in order: keep the last block only
        return out

    def chunk(self, start: int, stop: int, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """Parameters of projections ``start..stop-1``: ``theta`` in ``dtype`` on ``device``, the rest float64."""
        parts: dict[str, list[torch.Tensor]] = {}
        for b in range(start // BLOCK_SIZE, (stop - 1) // BLOCK_SIZE + 1):
            low, high = max(start, b * BLOCK_SIZE) - b * BLOCK_SIZE, min(stop, (b + 1) * BLOCK_SIZE) - b * BLOCK_SIZE
            for key, value in self.block(b).items():
                parts.setdefault(key, []).append(value[low:high])
        out = {key: torch.cat(values).to(device) for key, values in parts.items()}
        out["theta64"] = out["theta"]
        out["theta"] = out["theta"].to(dtype)
        return out

    def config(self) -> dict[str, Any]:
        """The bank's settings (the header two sketches must share)."""
        out: dict[str, Any] = {"family": self.family, "seed": self.seed, "n_projections": self.n_projections}
        out["block_size"] = BLOCK_SIZE
        if self.family == "sotdd":
            out.update(n_moments=self.n_moments, rates=self.rates)
        else:
            out["eps"] = self.eps
        if self.family == "swbg":
            out["label_dim"] = self.label_dim
        return out


# ---------------------------------------------------------------------- checks and preprocessing
def _check_dataset(name: str, ds: LabeledDataset) -> None:
    counts = ds.class_counts()
    if bool((counts == 0).any()):
        empty = [ds.classes[k] for k in torch.nonzero(counts == 0).flatten().tolist()]
        raise EmptyDatasetError(f"{name} has classes {empty!r} without samples (x of shape {tuple(ds.x.shape)}).")
    if not bool(torch.isfinite(ds.x.detach()).all()):
        raise NonFiniteError(f"{name}.x of shape {tuple(ds.x.shape)} holds NaN or Inf.")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class _Affine:
    """``x -> (x - shift) / scale`` (float64 constants, detached), recorded in the config."""

    shift: torch.Tensor | None
    scale: torch.Tensor | None
    mode: str

    def config(self) -> dict[str, Any]:
        if self.shift is None and self.scale is None:
            return {"mode": "none"}
        out: dict[str, Any] = {"mode": self.mode}
        for key, value in (("shift", self.shift), ("scale", self.scale)):
            if value is not None:
                out[key] = float(value) if value.numel() == 1 else [float(v) for v in value.tolist()]
        return out


def _fit_standardize(standardize: Any, datasets: Sequence[LabeledDataset]) -> _Affine:
    """The shared affine map: None (as given), ``"joint"`` (fitted on all the datasets) or ``(shift, scale)``."""
    dim = datasets[0].dim
    if standardize is None or standardize == "none":
        return _Affine(None, None, "none")
    if standardize == "joint":
        with torch.no_grad():
            means = [ds.weights.double() @ ds.x.double() for ds in datasets]
            shift = torch.stack([m.cpu() for m in means]).mean(0)
            second = [
                float(ds.weights.double() @ (ds.x.double() - shift.to(ds.x.device)).square().sum(1)) for ds in datasets
            ]
        scale = math.sqrt(sum(second) / len(second) / dim)
        return _Affine(shift, torch.tensor([scale if scale > 0 else 1.0], dtype=torch.float64), "joint")
    if isinstance(standardize, (tuple, list)) and len(standardize) == 2:
        shift, scale = (
            torch.as_tensor(default if v is None else v, dtype=torch.float64).reshape(-1).cpu()
            for v, default in zip(standardize, (0.0, 1.0), strict=True)
        )
        for key, value in (("shift", shift), ("scale", scale)):
            if value.numel() not in (1, dim):
                raise ShapeMismatchError(
                    f"standardize {key} must be a number or a ({dim},) vector, got {value.numel()} values."
                )
            if not bool(torch.isfinite(value).all()):
                raise NonFiniteError(f"standardize {key} holds NaN or Inf.")
        if not bool((scale > 0).all()):
            raise InvalidArgumentError("standardize scale must be positive.")
        return _Affine(shift, scale, "given")
    raise InvalidArgumentError(
        f"standardize must be None (features as given), 'joint' (one affine map fitted on the union of the compared "
        f"datasets) or a (shift, scale) pair, got {standardize!r}."
    )


def _label_map(label_map: Any, label_dim: int, datasets: Sequence[LabeledDataset], affine: _Affine, seed: int):
    """``(E (d', d) float64 CPU or None for the identity, description)`` of the SWBG label space."""
    dim = datasets[0].dim
    if label_map is None:
        label_map = "identity" if dim <= 64 else "pca"
    if isinstance(label_map, str):
        if label_map == "identity":
            return None, "identity"
        if label_map != "pca":
            raise InvalidArgumentError(f"label_map must be None, 'identity', 'pca' or a (d', {dim}) matrix.")
        label_dim = _check_int("label_dim", label_dim, 1)
        if label_dim > dim:
            raise InvalidArgumentError(f"label_dim={label_dim} exceeds the feature dimension d={dim}.")
        generator = torch.Generator().manual_seed(_block_seed(seed, -1))
        rows = []
        with torch.no_grad():
            for ds in datasets:  # at most 5000 points of each dataset, the same for any pairing
                take = torch.randperm(len(ds), generator=generator)[:5000].to(ds.x.device)
                rows.append(_standardized(ds.x[take].double(), affine).cpu())
        pooled = torch.cat([r - r.mean(0) for r in rows])
        # randomized range finder (two power iterations) with the seeded generator, then an exact SVD in it
        basis = pooled @ torch.randn(dim, min(dim, label_dim + 10), generator=generator, dtype=torch.float64)
        for _ in range(2):
            basis = pooled @ (pooled.T @ torch.linalg.qr(basis).Q)
        small = torch.linalg.qr(basis).Q.T @ pooled
        axes = torch.linalg.svd(small, full_matrices=False).Vh[:label_dim]
        axes = axes * torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))  # a fixed sign per axis
        return axes.contiguous(), f"pca-{label_dim} (randomized, fitted on the compared datasets)"
    matrix = torch.as_tensor(label_map, dtype=torch.float64).cpu()
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ShapeMismatchError(f"label_map must have shape (d', {dim}), got {tuple(matrix.shape)}.")
    if not bool(torch.isfinite(matrix).all()):
        raise NonFiniteError("label_map holds NaN or Inf.")
    return matrix, f"given ({matrix.shape[0]}x{dim})"


def _standardized(x: torch.Tensor, affine: _Affine) -> torch.Tensor:
    if affine.shift is not None:
        x = x - affine.shift.to(x)
    if affine.scale is not None:
        x = x / affine.scale.to(x)
    return x


def fit_preprocessing(
    datasets: Sequence[LabeledDataset],
    *,
    family: str = "sotdd",
    standardize: Any = None,
    label_map: Any = None,
    label_dim: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """The fitted, fixed form of ``standardize`` and (for ``swbg``) ``label_map`` on ``datasets``.

    Returns ``{"standardize": None or (shift, scale), "label_map": "identity" or a (d', d) tensor}``, to pass
    to :func:`sliced_distance` so that later calls (e.g. every step of a flow) use the same constants
    instead of refitting them on moving data.
    """
    affine = _fit_standardize(standardize, datasets)
    fitted: Any = None if affine.shift is None and affine.scale is None else (affine.shift, affine.scale)
    out: dict[str, Any] = {"standardize": fitted, "label_map": label_map}
    if family == "swbg":
        matrix, _ = _label_map(label_map, label_dim, datasets, affine, seed)
        out["label_map"] = "identity" if matrix is None else matrix
    return out


# ---------------------------------------------------------------------- projection of one dataset
@dataclass
class _Side:
    """One dataset prepared for slicing, its points grouped by class (the value does not depend on their order):
    float64 weights, class masses, the class segments."""

    perm: torch.Tensor | None  # (n,) the class-grouping permutation of the points (None: already grouped)
    y: torch.Tensor  # (n,) grouped class ids (non-decreasing)
    weights64: torch.Tensor
    num_classes: int
    masses64: torch.Tensor
    over_mass: torch.Tensor  # (n,) a_i / alpha_{y_i}
    uniform: bool  # all sample weights equal
    segments: list[tuple[int, int]]  # the column range of every class
    bracket: torch.Tensor | None  # (n,) exact sigma~ weights of each class's sorted slots (uniform inside classes)
    first: torch.Tensor  # (n,) bool: first slot of its class
    last: torch.Tensor  # (n,) bool: last slot of its class
    counts_np: np.ndarray | None = None  # (C,) class sizes (the segment lengths)
    starts_np: np.ndarray | None = None  # (C,) first column of every class segment

    @property
    def sorted_y(self) -> torch.Tensor:
        return self.y

    @classmethod
    def build(cls, ds: LabeledDataset) -> _Side:
        perm = torch.argsort(ds.y, stable=True)
        if bool((ds.y[1:] >= ds.y[:-1]).all()):
            perm = None
        y = ds.y if perm is None else ds.y[perm]
        w = ds.weights.detach().to(torch.float64)
        w = w if perm is None else w[perm]
        counts = torch.bincount(y, minlength=ds.num_classes)
        masses = torch.zeros(ds.num_classes, dtype=torch.float64, device=w.device).index_add(0, y, w)
        over_mass = w / masses[y]
        ends = torch.cumsum(counts, 0)
        last = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        last[ends - 1] = True
        first = torch.zeros_like(last)
        first[ends - counts] = True
        ends_list = ends.tolist()
        segments = list(zip([0, *ends_list[:-1]], ends_list, strict=True))
        # uniform inside every class: the sigma~ weights depend on the class sizes only
        inside = bool(torch.allclose(over_mass, (1.0 / counts.to(w))[y], rtol=1e-12, atol=0))
        bracket = None
        if inside:
            bracket = _bracket_grouped((1.0 / counts.to(torch.float64))[y], y, first, last)
        uniform = bool((w == w[0]).all())
        counts_np = counts.cpu().numpy()
        starts_np = np.asarray([start for start, _ in segments], dtype=np.intp)
        return cls(
            perm, y, w, ds.num_classes, masses, over_mass, uniform, segments, bracket, first, last, counts_np, starts_np
        )

    def arrange(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(n, d)`` features in the grouped order."""
        return x if self.perm is None else x[self.perm]

    def restore(self, grad: torch.Tensor) -> torch.Tensor:
        """A gradient with respect to the grouped features, in the dataset's own order."""
        return grad if self.perm is None else torch.empty_like(grad).index_copy_(0, self.perm, grad)


def _normal_pdf_of_quantile(levels: torch.Tensor) -> torch.Tensor:
    r""":math:`\varphi(\Phi^{-1}(c))`, 0 at :math:`c \in \{0, 1\}`."""
    z = torch.special.ndtri(levels.clamp(0.0, 1.0))
    out = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return torch.where(torch.isfinite(z), out, torch.zeros_like(out))


def _bracket_grouped(share: torch.Tensor, sorted_y: torch.Tensor, first: torch.Tensor, last: torch.Tensor):
    r"""The exact :math:`\tilde\sigma` weights :math:`\varphi(\Phi^{-1}(c_{r-1})) - \varphi(\Phi^{-1}(c_r))` for
    values grouped by class and sorted inside each class, given each slot's share of its class mass
    (``(..., n)``): every class's cumulative share restarts at 0 and is forced to end at 1."""
    within = share.cumsum(-1) - sorted_y.to(share)  # every class holds a total share of 1
    within = torch.where(last, torch.ones_like(within), within)
    before = torch.where(first, torch.zeros_like(within), within - share)
    return _normal_pdf_of_quantile(before) - _normal_pdf_of_quantile(within)


def _class_sum(values: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, C)`` sums over the classes of ``(B, n)`` values."""
    return values.new_zeros(values.shape[0], num_classes).index_add(1, y, values)


def _segment_sum(values: torch.Tensor, side: _Side) -> torch.Tensor:
    """``(B, C)`` class sums of ``(B, n)`` values in the side's grouped order (no graph): one ``reduceat`` over
    the class segments on the CPU (several times faster than ``index_add`` along rows), else :func:`_class_sum`."""
    if values.device.type == "cpu" and not values.requires_grad and side.starts_np is not None:
        return torch.from_numpy(np.add.reduceat(values.numpy(), side.starts_np, axis=1))
    return _class_sum(values, side.y, side.num_classes)


def _segment_argsort(t: torch.Tensor, side: _Side) -> torch.Tensor:
    """``(B, n)`` long indices that sort every class segment of each row of ``t`` (grouped order) and keep the
    segments in place. On the CPU: one numpy ``argsort`` over a ``(B, C, n_c)`` view when the classes have equal
    sizes, else one per segment written into a preallocated array."""
    if t.device.type != "cpu" or side.counts_np is None:
        return torch.cat([argsort_rows(t[:, start:stop]).to(t.device) + start for start, stop in side.segments], 1)
    values, counts = t.detach().numpy(), side.counts_np
    rows, n = values.shape
    if bool((counts == counts[0]).all()):
        size = int(counts[0])
        order = np.argsort(values.reshape(rows, len(counts), size), axis=2)
        order += (np.arange(len(counts)) * size)[None, :, None]
        return torch.from_numpy(order.reshape(rows, n))
    order = np.empty((rows, n), dtype=np.int64)
    for start, stop in side.segments:
        segment = np.argsort(values[:, start:stop], axis=1)
        segment += start
        order[:, start:stop] = segment
    return torch.from_numpy(order)


def _expand(values: torch.Tensor, side: _Side) -> torch.Tensor:
    """``(B, n)`` per-point copies of ``(B, C)`` class values in the side's grouped order (a new tensor, no
    graph): ``np.repeat`` of every class column over its segment on the CPU, else ``index_select``."""
    if values.device.type == "cpu" and not values.requires_grad and side.counts_np is not None:
        return torch.from_numpy(np.repeat(values.numpy(), side.counts_np, axis=1))
    return values.index_select(1, side.y)


def _power(t: torch.Tensor, order: torch.Tensor, big: float) -> torch.Tensor:
    r""":math:`t^{k}` in float64 for per-row integer orders ``order`` ``(B, 1)`` (``0^0 = 1``; ``big`` is
    :math:`\max|t|`).

    Integral exponents keep the sign exact. When :math:`k_{\max}\log|t|_{\max}` could overflow float64 the
    power is formed in log space, :math:`\mathrm{sgn}(t)^k \exp(k\log|t|)`, clamped at the largest float64
    (the spec's log-space rule: the factorial is applied as :math:`\exp(-\log\lambda!)` afterwards).
    """
    if big == 0 or float(order.max()) * math.log(big) < 700.0:
        return torch.pow(t, order)
    zero = t == 0
    log_abs = torch.log(torch.where(zero, torch.ones_like(t), t.abs()))
    magnitude = torch.exp((order * log_abs).clamp_max(709.0))
    signed = torch.where((t < 0) & (torch.remainder(order, 2) == 1), -magnitude, magnitude)
    return torch.where(zero, torch.where(order == 0, 1.0, 0.0), signed)


class _Features:
    """The class term :math:`b_c = \\sum_r \\psi_{r+1} h_{r,c}` of one dataset on one chunk, and its backward."""

    def __init__(self, setup: _Setup, side: _Side, x: torch.Tensor, need_grad: bool) -> None:
        self.setup, self.side, self.need_grad = setup, side, need_grad
        self.within_order: torch.Tensor | None = None  # SWB1DG: each class's points sorted by t
        self.gauss = None
        if setup.family == "swbg":
            self.gauss = _GaussianClasses(x, side, setup, need_grad)

    def forward(self, t: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, C)`` class terms from the ``(B, n)`` float64 projections; keeps what :meth:`backward` needs."""
        side, setup = self.side, self.setup
        psi = params["psi"]
        if setup.family == "sotdd":
            return self._moments(t, params)
        if setup.family == "swb1dg":
            m1 = params["m1"][:, None]
            self.mean_coef = -psi[:, 1:2] * m1
            self.sigma_coef = -psi[:, 1:2] * (torch.sqrt(1.0 - m1 * m1))  # s1 - eps
            mean = _segment_sum(t * side.over_mass, side)
            sigma, self.order, self.weights_sorted = self._sigma(t)
            self.within_order = self.order
            return self.mean_coef * mean + self.sigma_coef * (sigma - setup.eps)
        return self.gauss.forward(params)

    def _moments(self, t: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        r"""MTP class terms :math:`b = \mathrm{classmean}(t A)` with :math:`A = \sum_r \psi_{r+1}
        t^{\lambda_r - 1}/\lambda_r!`, and the slope :math:`\sum_r \psi_{r+1} t^{\lambda_r-1}/(\lambda_r-1)!`.

        The powers :math:`t^j` are built by repeated multiplication, once for all moment orders: rows come
        sorted by their largest order (:func:`_rows_by_order`), so power :math:`j` touches only the leading
        rows that need it. Falls back to log-space powers when :math:`t^j` could overflow float64.
        """
        side, lam, psi = self.side, params["lam"], params["psi"]
        self.slope = None
        if lam.shape[1] == 0:
            self.slope = t.new_zeros(t.shape) if self.need_grad else None
            return t.new_zeros(t.shape[0], side.num_classes)
        lam64 = lam.to(t.dtype)
        factor = psi[:, 1:] * torch.exp(-torch.lgamma(lam64 + 1.0))  # (B, k): psi_{r+1} / lam_r!
        top = int(lam.max()) - 1
        low, high = torch.aminmax(t)
        big = max(-float(low), float(high))
        if big > 0 and top * math.log(big) >= 700.0:
            accumulated = torch.zeros_like(t)
            self.slope = t.new_zeros(t.shape) if self.need_grad else None
            for r in range(lam.shape[1]):
                lower = _power(t, lam64[:, r : r + 1] - 1.0, big)
                accumulated.addcmul_(lower, factor[:, r : r + 1])
                if self.slope is not None:
                    self.slope.addcmul_(lower, (factor[:, r] * lam64[:, r])[:, None])
        else:
            rows = torch.arange(t.shape[0], device=t.device)
            coef = t.new_zeros(top + 1, t.shape[0])  # coef[j, b] = sum_r [lam_r - 1 = j] psi_{r+1} / lam_r!
            coef.index_put_((lam - 1, rows[:, None].expand_as(lam)), factor, accumulate=True)
            slope_coef = t.new_zeros(top + 1, t.shape[0])
            slope_coef.index_put_((lam - 1, rows[:, None].expand_as(lam)), factor * lam64, accumulate=True)
            # rows[:need[j]] are the rows whose largest order reaches j + 1 (rows sorted by their largest order)
            need = torch.bincount(lam.amax(dim=1) - 1, minlength=top + 1).flip(0).cumsum(0).flip(0).tolist()
            # j = 0 (power 1): the constant terms; j = 1: t itself; then one product per power, on the rows that
            # need it (the same float64 operations, in the same order, as accumulating from zero)
            accumulated = coef[0][:, None].expand_as(t).clone()
            if self.need_grad:
                self.slope = slope_coef[0][:, None].expand_as(t).clone()
            power = t
            for j in range(1, top + 1):
                m = need[j]
                power = t[:m] if j == 1 else power[:m].mul_(t[:m]) if j > 2 else t[:m] * t[:m]
                accumulated[:m].addcmul_(power, coef[j, :m, None])
                if self.slope is not None:
                    self.slope[:m].addcmul_(power, slope_coef[j, :m, None])
        return _segment_sum(accumulated.mul_(t).mul_(side.over_mass), side)

    def _sigma(self, t: torch.Tensor):
        """``(B, C)`` exact sigma~ from one row sort per class segment (the points are grouped by class)."""
        side = self.side
        order = _segment_argsort(t, side)
        values = t.gather(1, order)
        bracket = side.bracket
        if bracket is None:  # weights differ inside a class: the weights follow the order
            share = side.over_mass[order]
            bracket = _bracket_grouped(share, side.sorted_y, side.first, side.last)
        weights = bracket if bracket.ndim == 2 else bracket.expand_as(values)
        self.within_values = values  # t sorted inside every class (z's class runs, see _sketch)
        return _segment_sum(values * weights, side), order, weights

    def backward(self, class_grad: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` gradient with respect to ``t`` of :math:`\\sum_{b,c} G_{bc}\\, b_{bc}` (``class_grad`` = G)."""
        side, setup = self.side, self.setup
        if setup.family == "sotdd":
            return _expand(class_grad, side).mul_(side.over_mass).mul_(self.slope)
        if setup.family == "swb1dg":
            out = _expand(class_grad * self.mean_coef, side).mul_(side.over_mass)
            sorted_part = _expand(class_grad * self.sigma_coef, side).mul_(self.weights_sorted)
            return out.scatter_add_(1, self.order, sorted_part)
        self.gauss.backward(class_grad)
        return None


class _GaussianClasses:
    """SWBG's class Gaussians in the label space: computed once per call, their gradients accumulated per chunk."""

    def __init__(self, x: torch.Tensor, side: _Side, setup: _Setup, need_grad: bool) -> None:
        self.side, self.setup, self.need_grad = side, setup, need_grad
        with torch.no_grad():
            means, roots = self.statistics(x)
        self.means, self.roots = means, roots
        self.grad_means = torch.zeros_like(means)
        self.grad_roots = torch.zeros_like(roots)

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, d')`` means and ``(C, d', d')`` square roots of the biased covariances (float64)."""
        lab = _standardized(x.to(torch.float64), self.setup.affine)
        if self.setup.label_map is not None:
            lab = lab @ self.setup.label_map.to(lab).T
        side = self.side
        w = side.over_mass[:, None]
        means = lab.new_zeros(side.num_classes, lab.shape[1]).index_add(0, side.y, lab * w)
        centred = lab - means[side.y]
        covs = torch.einsum("ni,nj->nij", centred * w, centred)
        covs = lab.new_zeros(side.num_classes, lab.shape[1], lab.shape[1]).index_add(0, side.y, covs)
        return means, psd_sqrt(covs)

    def forward(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        eps, psi = self.setup.eps, params["psi"]
        means, roots = self.means, self.roots
        if self.need_grad:
            means, roots = means.clone().requires_grad_(True), roots.clone().requires_grad_(True)
        with torch.enable_grad() if self.need_grad else torch.no_grad():
            S = params["S"]
            nuclear = nuclear_norm(S[:, None] @ roots[None])  # (B, C)
            trace = torch.diagonal(S, dim1=-2, dim2=-1).sum(-1)[:, None]
            h = -params["m_dir"] @ means.T + eps * trace - math.sqrt(eps) * nuclear
            out = psi[:, 1:2] * h
        self._graph = (out, means, roots)
        return out.detach()

    def backward(self, class_grad: torch.Tensor) -> None:
        out, means, roots = self._graph
        gm, gr = torch.autograd.grad(out, (means, roots), class_grad)
        self.grad_means += gm
        self.grad_roots += gr

    def input_grad(self, x: torch.Tensor) -> torch.Tensor:
        """The accumulated gradient carried back to the features through the class statistics."""
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            means, roots = self.statistics(leaf)
            (grad,) = torch.autograd.grad(
                (means * self.grad_means).sum() + (roots * self.grad_roots).sum(), leaf, allow_unused=True
            )
        return torch.zeros_like(x) if grad is None else grad


@dataclass(frozen=True)
class _Setup:
    """What every chunk needs besides the directions: the family, ``p``, the affine map, the label map."""

    family: str
    p: float
    eps: float
    affine: _Affine
    label_map: torch.Tensor | None


def _effective_theta(params: dict[str, torch.Tensor], affine: _Affine) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Directions on the raw features (``theta / scale``) and the offset ``(theta / scale) . shift`` (float64)."""
    theta, theta64 = params["theta"], params["theta64"]
    if affine.scale is not None:
        theta = theta / affine.scale.to(theta)
        theta64 = theta64 / affine.scale.to(theta64)
    offset = None if affine.shift is None else theta64 @ affine.shift.to(theta64)
    return theta, offset


def _sketch(x: torch.Tensor, features: _Features, params: dict[str, torch.Tensor]):
    """``(sorted z (B, n), cumulative weights (B, n) or None, order, theta)`` of one dataset on one chunk."""
    theta, offset = _effective_theta(params, features.setup.affine)
    t = (theta @ x.T).to(torch.float64)  # (B, n): the matmul in the data's dtype, the rest in float64
    if offset is not None:
        t = t - offset[:, None]
    b = features.forward(t, params)
    within = features.within_order
    if within is None:
        z = torch.addcmul(_expand(b, features.side), params["psi"][:, :1], t)
        order = argsort_rows(z)
        z_sorted = z.gather(1, order)
    else:  # SWB1DG: z is monotone in t inside a class, so its class runs come sorted: a faster row sort
        grouped = torch.addcmul(_expand(b, features.side), params["psi"][:, :1], features.within_values)
        inner = argsort_rows(grouped)
        z_sorted = grouped.gather(1, inner)
        order = within.gather(1, inner)
    side = features.side
    cum = None if side.uniform else side.weights64[order].cumsum(dim=1)
    return z_sorted, cum, order, theta


def _input_grad(x: torch.Tensor, features: _Features, params, order, theta, sorted_grad) -> torch.Tensor:
    """``(n, d)`` gradient of the chunk's sum with respect to ``x``, from the gradient on the sorted ``z``."""
    g = torch.empty_like(sorted_grad).scatter_(1, order, sorted_grad)  # d/dz (order: a permutation of each row)
    class_grad = _segment_sum(g, features.side)
    extra = features.backward(class_grad)
    dt = g.mul_(params["psi"][:, :1]) if extra is None else extra.addcmul_(g, params["psi"][:, :1])
    return dt.to(x.dtype).mT @ theta


def _w1d_and_grads(u, a, v, b, p: float, need1: bool, need2: bool):
    """``(w (B,), [d sum(w) / d u, d sum(w) / d v] for the sides that need it)`` on sorted rows; in closed form
    for equal sizes with uniform weights, :math:`\\partial w/\\partial u_{(i)} = p|u_{(i)} - v_{(i)}|^{p-1}
    \\mathrm{sgn}(u_{(i)} - v_{(i)})/n`, else by autograd through :func:`wasserstein_1d_sorted`."""
    if a is None and b is None and u.shape[1] == v.shape[1]:
        diff = u - v
        if p == 2.0:
            w = diff.square().mean(dim=1)
            grad = diff.mul_(2.0 / u.shape[1])
        else:
            magnitude = diff.abs()
            w = magnitude.pow(p).mean(dim=1)
            grad = (p / u.shape[1]) * magnitude.pow(p - 1.0) * torch.sign(diff)
        return w, [g for g, need in ((grad, need1), (-grad, need2)) if need]
    with torch.enable_grad():
        u, v = u.requires_grad_(need1), v.requires_grad_(need2)
        w = wasserstein_1d_sorted(u, a, v, b, p)
        grads = list(torch.autograd.grad(w.sum(), [s for s, need in ((u, need1), (v, need2)) if need]))
    return w.detach(), grads


def _rows_by_order(params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """MTP chunks: the projections reordered by decreasing largest moment order (a projection's value does not
    depend on its row), and the permutation ``perm`` (``values_in_bank_order[perm] = values``); else as is."""
    if "lam" not in params or params["lam"].shape[1] == 0:
        return params, None
    perm = torch.argsort(params["lam"].amax(dim=1), descending=True, stable=True)
    return {key: value[perm] for key, value in params.items()}, perm


def _bank_order(values: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    return values if perm is None else torch.empty_like(values).index_copy_(0, perm.to(values.device), values)


def _chunks(n_projections: int, chunk: int):
    for start in range(0, n_projections, chunk):
        yield start, min(n_projections, start + chunk)


class _SlicedPow(torch.autograd.Function):
    """``value_pow`` with the gradient formed chunk by chunk during the forward pass (memory O(n B))."""

    @staticmethod
    def forward(ctx, runner, x1, x2):  # type: ignore[override]
        per, grads = runner.run(x1, x2, ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        ctx.save_for_backward(*grads)
        runner.per_projection = per
        return per.mean().to(x1.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        g1, g2 = ctx.saved_tensors
        return None, grad_output.to(g1.dtype) * g1, grad_output.to(g2.dtype) * g2


class _PairRunner:
    def __init__(self, bank: DirectionBank, setup: _Setup, side1: _Side, side2: _Side, chunk: int) -> None:
        self.bank, self.setup, self.side1, self.side2, self.chunk = bank, setup, side1, side2, chunk
        self.per_projection: torch.Tensor | None = None

    def run(self, x1, x2, need1: bool, need2: bool):
        bank, L, setup = self.bank, self.bank.n_projections, self.setup
        x1, x2 = self.side1.arrange(x1.detach()), self.side2.arrange(x2.detach())
        f1, f2 = _Features(setup, self.side1, x1, need1), _Features(setup, self.side2, x2, need2)
        values, g1, g2 = [], torch.zeros_like(x1), torch.zeros_like(x2)
        for start, stop in _chunks(L, self.chunk):
            params, perm = _rows_by_order(bank.chunk(start, stop, x1.dtype, x1.device))
            u, a, order1, theta = _sketch(x1, f1, params)
            v, b, order2, _ = _sketch(x2, f2, params)
            if not (need1 or need2):
                values.append(_bank_order(wasserstein_1d_sorted(u, a, v, b, setup.p), perm))
                continue
            w, grads = _w1d_and_grads(u, a, v, b, setup.p, need1, need2)
            grads = [g.div_(L) for g in grads]
            if need1:
                g1 += _input_grad(x1, f1, params, order1, theta, grads.pop(0))
            if need2:
                g2 += _input_grad(x2, f2, params, order2, theta, grads.pop(0))
            values.append(_bank_order(w.detach(), perm))
        for grad, features, x, need in ((g1, f1, x1, need1), (g2, f2, x2, need2)):
            if need and features.gauss is not None:
                grad += features.gauss.input_grad(x).to(grad.dtype)
        return torch.cat(values).to(torch.float64), (self.side1.restore(g1), self.side2.restore(g2))


# ---------------------------------------------------------------------- the public front doors
def _root(value_pow: torch.Tensor, p: float) -> torch.Tensor:
    if p == 2.0:
        return safe_sqrt(value_pow)
    positive = value_pow > 0
    return torch.where(positive, value_pow.clamp_min(torch.finfo(value_pow.dtype).tiny) ** (1.0 / p), 0.0 * value_pow)


def _default_chunk(chunk: Any, n_projections: int, points: int) -> int:
    if chunk is None:
        return max(1, min(n_projections, CHUNK_ELEMENTS // max(points, 1)))
    return _check_int("chunk", chunk, 1)


def _prepare(
    family: str,
    datasets: Sequence[LabeledDataset],
    *,
    n_projections: Any,
    n_moments: Any,
    rates: str,
    p: Any,
    seed: Any,
    eps: Any,
    label_map: Any,
    label_dim: Any,
    standardize: Any,
) -> tuple[DirectionBank, _Setup, dict[str, Any]]:
    """Validate the options and build the bank, the setup and the config shared by the pair and the matrix."""
    if family not in SLICED_FAMILIES:
        raise InvalidArgumentError(f"family must be one of {SLICED_FAMILIES}, got {family!r}.")
    n_projections = check_n_projections(n_projections)
    p = check_p(p)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgumentError(f"seed must be an int, got {seed!r}.")
    k = 0
    if family == "sotdd":
        k = _check_int("n_moments", n_moments, 0)
        if rates not in _RATES:
            raise InvalidArgumentError(f"rates must be one of {_RATES}, got {rates!r}.")
    default_eps = 0.0 if family in ("sotdd", "swb1dg") else 1.0
    eps = default_eps if eps is None else eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise InvalidArgumentError(f"eps must be a finite number >= 0, got {eps!r}.")
    affine = _fit_standardize(standardize, datasets)
    matrix, map_text, dprime = None, None, None
    if family == "swbg":
        matrix, map_text = _label_map(label_map, label_dim, datasets, affine, seed)
        dprime = datasets[0].dim if matrix is None else matrix.shape[0]
    bank = DirectionBank(
        family, seed, n_projections, datasets[0].dim, n_moments=k, rates=rates, label_dim=dprime, eps=float(eps)
    )
    config = {**bank.config(), "p": p, "feature_map": "linear", "standardize": affine.config()}
    if family == "swbg":
        config["label_map"] = map_text
    config["dtype"] = str(datasets[0].x.dtype).replace("torch.", "")
    config["device"] = str(datasets[0].x.device)
    return bank, _Setup(family, p, float(eps), affine, matrix), config


def sliced_distance(
    source: LabeledDataset,
    target: LabeledDataset,
    *,
    family: str = "sotdd",
    n_projections: int = DEFAULT_SLICED_PROJECTIONS,
    n_moments: int = 5,
    rates: str = "sotdd",
    p: float = 2,
    seed: int = 0,
    eps: float | None = None,
    label_map: Any = None,
    label_dim: int = 10,
    standardize: Any = None,
    chunk: int | None = None,
    world: Any = None,
    quantiles: int | None = None,
) -> SlicedResult:
    r"""A hybrid sliced distance between two labeled datasets (see the module docstring for the families).

    :math:`\mathrm{value\_pow} = \frac1L\sum_l W_p^p(z_{\omega_l}\#D,\, z_{\omega_l}\#D')`, each 1-D transport
    exact. Prefer the named front doors :func:`sotdd` and :func:`busemann`; the arguments are theirs
    plus ``family`` (``"sotdd"``, ``"swb1dg"``, ``"swbg"``) and ``world``: the ranks ``source`` is sharded over
    (:class:`~datasetflow.distributed.World`, :func:`~datasetflow.data.sharding.shard`; default one process).
    With several ranks the shards are all-gathered (exact mode, :func:`~datasetflow.data.sharding.gather_dataset`:
    ``n (d + 2)`` numbers per call), every rank computes the same value, and the gradient reaches this rank's
    rows only; ``target`` must be the same on every rank. ``quantiles=Q``: the scalable mode
    (:mod:`~datasetflow.distances.sliced_sketch`): nothing is gathered, the source's classes are summarised by
    mergeable ``Q``-bin quantile sketches and exact all-reduced class terms (:math:`O(C L Q)` traffic), the result
    carries ``error_bound``; the target is then detached.

    Returns:
        :class:`SlicedResult`.
    """
    from ..data.sharding import gather_dataset
    from ..distributed.comm import World, get_world

    if quantiles is not None:
        from .sliced_sketch import sketched_distance

        return sketched_distance(
            source,
            target,
            family=family,
            quantiles=quantiles,
            n_projections=n_projections,
            n_moments=n_moments,
            rates=rates,
            p=p,
            seed=seed,
            eps=eps,
            label_map=label_map,
            label_dim=label_dim,
            standardize=standardize,
            chunk=chunk,
            world=world,
        )
    world = World() if world is None else get_world(world)
    if world.distributed:
        source = gather_dataset(source, world)
    check_dataset_pair(("source", "target"), source, target)
    for name, ds in (("source", source), ("target", target)):
        _check_dataset(name, ds)
    if target.x.device != source.x.device or target.x.dtype != source.x.dtype:
        target = target.to(device=source.x.device, dtype=source.x.dtype)
    bank, setup, config = _prepare(
        family,
        (source, target),
        n_projections=n_projections,
        n_moments=n_moments,
        rates=rates,
        p=p,
        seed=seed,
        eps=eps,
        label_map=label_map,
        label_dim=label_dim,
        standardize=standardize,
    )
    chunk = _default_chunk(chunk, bank.n_projections, len(source) + len(target))
    runner = _PairRunner(bank, setup, _Side.build(source), _Side.build(target), chunk)
    value_pow = _SlicedPow.apply(runner, source.x, target.x)
    per = runner.per_projection
    L = per.numel()
    stderr_pow = float(per.std(correction=1) / math.sqrt(L)) if L > 1 else 0.0
    value = _root(value_pow, setup.p)
    root = float(value.detach())
    if stderr_pow == 0.0:
        stderr = 0.0
    else:
        stderr = stderr_pow / (setup.p * root ** (setup.p - 1)) if root > 0 else math.inf
    config.update(chunk=chunk, n_source=len(source), n_target=len(target), dim=source.dim)
    return SlicedResult(
        value=value,
        value_pow=value_pow,
        stderr_pow=stderr_pow,
        stderr=stderr,
        per_projection=per,
        config=config,
    )


def sotdd(
    source: LabeledDataset,
    target: LabeledDataset,
    *,
    n_projections: int = DEFAULT_SLICED_PROJECTIONS,
    n_moments: int = 5,
    rates: str = "sotdd",
    p: float = 2,
    seed: int = 0,
    standardize: Any = None,
    chunk: int | None = None,
    world: Any = None,
    quantiles: int | None = None,
) -> SlicedResult:
    r"""s-OTDD (Nguyen et al., ICML 2025): the sliced OTDD with the moment transform projection.

    .. math:: z_\omega(x_i) = \psi_1 t_i + \sum_{r=1}^k \psi_{r+1} \frac{1}{\lambda_r!}
              \sum_{y_j = y_i} \frac{a_j}{\alpha_{y_i}} t_j^{\lambda_r}, \qquad t = \theta^\top x,

    :math:`\mathrm{value\_pow} = \frac1L \sum_l W_p^p(z_{\omega_l}\#D, z_{\omega_l}\#D')` (spec §2).

    Args:
        source, target: :class:`LabeledDataset` s with ``n`` and ``m`` points in the same dimension ``d``; any
            labels (label sets may differ or be disjoint), any sizes and weights.
        n_projections: :math:`L \ge 1` (default 1000; the authors report distances at :math:`10^4`).
        n_moments: :math:`k \ge 0` moment orders per projection (default 5; ``0`` gives the sliced Wasserstein
            distance of the feature marginals).
        rates: ``"sotdd"`` (Poisson rates :math:`1..k`, the paper's; default) or ``"bonet"`` (:math:`0..k-1`).
        p: the order :math:`p \ge 1`.
        seed: the direction bank's seed (same seed: same directions on any device and for any ``chunk``).
        standardize: the one affine map applied to both datasets before slicing: None (default: features as
            given), ``"joint"`` (:math:`x \mapsto (x - \mu)/s` with :math:`\mu` the mean of the two datasets'
            means and :math:`s^2` the mean per-coordinate second moment about :math:`\mu`, fitted once on both;
            a scalar :math:`s` keeps the geometry isotropic) or ``(shift, scale)`` constants (numbers or
            ``(d,)`` vectors, e.g. the OTDD pixel normalisation). Never per dataset: s-OTDD is not
            scale-equivariant, the scale decides which moment orders matter (spec §2.6).
        chunk: projections per chunk (default: as many as keep ``(n + m) * chunk <= 2**22``).
        world: ranks ``source`` is sharded over (see :func:`sliced_distance`; default one process).
        quantiles: None (exact mode, default) or ``Q``: the scalable mode, :math:`O(C L Q)` traffic on shards and
            a stated ``error_bound`` (:mod:`~datasetflow.distances.sliced_sketch`).

    Returns:
        :class:`SlicedResult`; ``value_pow`` is differentiable with respect to ``source.x`` and ``target.x``
        through each point's projection and through its class's moments (the gradient is formed chunk by
        chunk during the call when a feature tensor requires grad; first order only).

    Raises:
        ShapeMismatchError: the feature dimensions differ.
        EmptyDatasetError: a class without samples.
        NonFiniteError: NaN or Inf features.
        InvalidArgumentError: ``n_projections <= 0``, a non-integer or negative ``n_moments``, ``p < 1``, an
            unknown ``rates`` or ``standardize``.
    """
    return sliced_distance(
        source,
        target,
        family="sotdd",
        n_projections=n_projections,
        n_moments=n_moments,
        rates=rates,
        p=p,
        seed=seed,
        standardize=standardize,
        chunk=chunk,
        world=world,
        quantiles=quantiles,
    )


def busemann(
    source: LabeledDataset,
    target: LabeledDataset,
    *,
    variant: str = "swb1dg",
    n_projections: int = DEFAULT_SLICED_PROJECTIONS,
    p: float = 2,
    seed: int = 0,
    eps: float | None = None,
    label_map: Any = None,
    label_dim: int = 10,
    standardize: Any = None,
    chunk: int | None = None,
    world: Any = None,
    quantiles: int | None = None,
) -> SlicedResult:
    r"""Busemann-sliced dataset distance (Bonet et al., AISTATS 2026): SWB1DG or SWBG.

    .. math:: z_\omega(x_i) = \psi_1\,\theta^\top x_i + \psi_2\, B_\omega(P_{y_i}),

    with :math:`B_\omega` the Busemann function of the class along a random geodesic ray (module docstring):

    * ``variant="swb1dg"``: of :math:`\theta\#P_c` along a 1-D Gaussian ray in :math:`W_2(\mathbb{R})`, from
      :math:`N(0, \varepsilon^2)` (default :math:`\varepsilon = 0`, a Dirac at 0, as in the authors' runs);
      differentiable through the class mean and the exact L-statistic :math:`\tilde\sigma`.
    * ``variant="swbg"``: of the class Gaussian :math:`N(m_c, \Sigma_c)` in the label space :math:`Ex`
      along a Bures ray from :math:`N(0, \varepsilon I)` (default :math:`\varepsilon = 1`);
      differentiable through the class mean and covariance (clamped-eigenvalue square roots, stable
      backward). Cost per projection :math:`O(C d'^3)`.

    Args:
        source, target: :class:`LabeledDataset` s in the same dimension; any labels, sizes and weights.
        variant: ``"swb1dg"`` (default) or ``"swbg"``.
        n_projections: :math:`L \ge 1` (default 1000).
        p: the order :math:`p \ge 1`.
        seed: the direction bank's seed.
        eps: :math:`\varepsilon \ge 0` of the ray's origin (None: 0 for swb1dg, 1 for swbg).
        label_map: swbg's fixed label space: None (identity for ``d <= 64``, else ``"pca"``), ``"identity"``,
            ``"pca"`` (the top ``label_dim`` principal axes of the two datasets pooled, at most 5000 points of
            each, fitted once; detached) or a ``(d', d)`` matrix.
        label_dim: :math:`d'` of ``label_map="pca"`` (default 10).
        standardize: as in :func:`sotdd`. Both variants are translation-equivariant and positively
            homogeneous of degree :math:`p` in the features (spec §6.5, §6.8), so a scalar standardisation only
            rescales the value.
        chunk: projections per chunk.
        world: ranks ``source`` is sharded over (see :func:`sliced_distance`; default one process).
        quantiles: None (exact mode) or ``Q``, the scalable mode (as in :func:`sotdd`).

    Returns:
        :class:`SlicedResult`.

    Raises:
        As :func:`sotdd`; InvalidArgumentError for an unknown ``variant`` or a negative ``eps``.
    """
    families = {"swb1dg": "swb1dg", "swbg": "swbg"}
    if variant not in families:
        raise InvalidArgumentError(f"variant must be one of {tuple(families)}, got {variant!r}.")
    return sliced_distance(
        source,
        target,
        family=families[variant],
        n_projections=n_projections,
        p=p,
        seed=seed,
        eps=eps,
        label_map=label_map,
        label_dim=label_dim,
        standardize=standardize,
        chunk=chunk,
        world=world,
        quantiles=quantiles,
    )


# ---------------------------------------------------------------------- many datasets
_METHOD_FAMILY = {"sotdd": "sotdd", "busemann": "swb1dg", "busemann-gaussian": "swbg"}


def _dataset_name(ds: LabeledDataset, k: int) -> str:
    return ds.name if ds.name else f"D{k}"


def distance_matrix(
    datasets: Sequence[LabeledDataset],
    *,
    method: str = "sotdd",
    names: Sequence[str] | None = None,
    n_projections: int = DEFAULT_SLICED_PROJECTIONS,
    n_moments: int = 5,
    rates: str = "sotdd",
    p: float = 2,
    seed: int = 0,
    eps: float | None = None,
    label_map: Any = None,
    label_dim: int = 10,
    standardize: Any = None,
    chunk: int | None = None,
    otdd_options: dict[str, Any] | None = None,
    world: Any = None,
) -> DistanceMatrixResult:
    r"""All pairwise distances between ``N`` labeled datasets.

    For the sliced methods every dataset is projected once per chunk of the shared direction bank (its
    sketch: sorted :math:`z` and cumulative weights), and the :math:`N(N-1)/2` pairs are compared from the
    sketches: :math:`N` projection passes instead of :math:`N^2`, memory :math:`O(\sum_i n_i\,B)`. Entry
    :math:`(i, j)` equals ``sotdd(D_i, D_j, ...).value_pow`` (or ``busemann``'s) with the same settings, except
    that ``standardize="joint"`` and ``label_map="pca"`` are fitted once on all ``N`` datasets. ``otdd`` calls
    :func:`~datasetflow.distances.otdd.otdd` per pair (``otdd_options``) and reports ``distance_squared``.

    Args:
        datasets: ``N >= 1`` :class:`LabeledDataset` s of the same dimension.
        method: ``"sotdd"``, ``"busemann"`` (SWB1DG), ``"busemann-gaussian"`` (SWBG) or ``"otdd"``.
        names: display names (default: the datasets' names, else ``D0, D1, ...``).
        n_projections, n_moments, rates, p, seed, eps, label_map, label_dim, standardize, chunk: as in
            :func:`sotdd` / :func:`busemann`.
        otdd_options: keyword arguments of ``otdd()`` for ``method="otdd"``.
        world: ranks to spread the work over (:class:`~datasetflow.distributed.World`, e.g. under
            ``torchrun``; default: one process). Every rank holds all the datasets. ``otdd`` gives rank ``r``
            the pairs ``k`` with ``k % size == r``; the sliced methods give it the chunks of directions
            ``k % size == r``. The partial sums are all-reduced (float64), so every rank returns the same
            matrix, equal to the one-process matrix up to the order of float64 additions.

    Returns:
        :class:`DistanceMatrixResult` (detached values; symmetric, zero diagonal).
    """
    from ..distributed.comm import World, all_reduce_sum, get_world

    world = World() if world is None else get_world(world)
    if method not in MATRIX_METHODS:
        raise InvalidArgumentError(f"method must be one of {MATRIX_METHODS}, got {method!r}.")
    datasets = list(datasets)
    if not datasets:
        raise InvalidArgumentError("distance_matrix needs at least one dataset.")
    for k, ds in enumerate(datasets):
        check_dataset_pair((f"datasets[{k}]", "datasets[0]"), ds, datasets[0])
        _check_dataset(f"datasets[{k}]", ds)
    first = datasets[0]
    datasets = [ds.to(device=first.x.device, dtype=first.x.dtype) for ds in datasets]
    if names is None:
        names = [_dataset_name(ds, k) for k, ds in enumerate(datasets)]
    names = tuple(str(n) for n in names)
    if len(names) != len(datasets):
        raise ShapeMismatchError(f"names has {len(names)} entries for {len(datasets)} datasets.")
    N = len(datasets)
    start_time = time.perf_counter()
    if method == "otdd":
        from .otdd import otdd

        options = dict(otdd_options or {})
        out = torch.zeros(N, N, dtype=torch.float64)
        pairs = [(i, j) for i in range(N) for j in range(i + 1, N)]
        with torch.no_grad():
            for k, (i, j) in enumerate(pairs):
                if k % world.size == world.rank:
                    out[i, j] = out[j, i] = float(otdd(datasets[i], datasets[j], **options).distance_squared)
        out = all_reduce_sum(out, world)
        config = {"method": "otdd", **{k: str(v) if not isinstance(v, (int, float)) else v for k, v in options.items()}}
        return DistanceMatrixResult(
            out, out.sqrt(), torch.zeros_like(out), names, method, time.perf_counter() - start_time, config
        )
    family = _METHOD_FAMILY[method]
    bank, setup, config = _prepare(
        family,
        datasets,
        n_projections=n_projections,
        n_moments=n_moments,
        rates=rates,
        p=p,
        seed=seed,
        eps=eps,
        label_map=label_map,
        label_dim=label_dim,
        standardize=standardize,
    )
    chunk = _default_chunk(chunk, bank.n_projections, sum(len(ds) for ds in datasets))
    sides = [_Side.build(ds) for ds in datasets]
    arranged = [side.arrange(ds.x.detach()) for side, ds in zip(sides, datasets, strict=True)]
    features = [_Features(setup, side, x, False) for side, x in zip(sides, arranged, strict=True)]
    sums = torch.zeros(N, N, dtype=torch.float64)
    squares = torch.zeros(N, N, dtype=torch.float64)
    with torch.no_grad():
        for k, (start, stop) in enumerate(_chunks(bank.n_projections, chunk)):
            if k % world.size != world.rank:
                continue
            params, perm = _rows_by_order(bank.chunk(start, stop, first.x.dtype, first.x.device))
            sketches = [_sketch(x, f, params)[:2] for x, f in zip(arranged, features, strict=True)]
            for i in range(N):
                for j in range(i + 1, N):
                    (u, a), (v, b) = sketches[i], sketches[j]
                    w = wasserstein_1d_sorted(u, a, v, b, setup.p).to(torch.float64).cpu()  # any row order
                    sums[i, j] += w.sum()
                    squares[i, j] += (w * w).sum()
    sums, squares = all_reduce_sum(sums, world), all_reduce_sum(squares, world)
    L = bank.n_projections
    mean = sums / L
    var = (squares - L * mean * mean).clamp_min(0) / max(L - 1, 1)
    stderr = var.sqrt() / math.sqrt(L) if L > 1 else torch.zeros_like(var)
    mean, stderr = mean + mean.T, stderr + stderr.T
    config.update(chunk=chunk, sizes=[len(ds) for ds in datasets], dim=first.dim, method=method)
    return DistanceMatrixResult(
        mean, _root(mean, setup.p), stderr, names, method, time.perf_counter() - start_time, config
    )
