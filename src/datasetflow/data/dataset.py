"""Labeled datasets and their per-class statistics.

A :class:`LabeledDataset` is the empirical measure
:math:`\\rho = \\sum_i w_i \\delta_{(x_i, y_i)}` over feature-label pairs. Features are
stored flattened as an ``(n, d)`` tensor; image shapes are kept in ``feature_shape``.
Labels may be any hashable values; they are mapped to contiguous indices
``0..C-1`` (``ds.y``) whose names are ``ds.classes``.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import (
    DataFormatError,
    DegenerateClassWarning,
    EmptyDatasetError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeMismatchError,
)

__all__ = ["LabeledDataset", "ClassStats", "json_name", "check_dataset_pair", "features_of"]


def _to_python_scalar(value: Any) -> Hashable:
    """Turn numpy / torch scalars into plain Python values (hashable, JSON-friendly)."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _encode_labels(y: Any, classes: Sequence[Hashable] | None) -> tuple[torch.Tensor, tuple[Hashable, ...]]:
    """Map arbitrary labels to contiguous indices.

    Returns ``(indices, classes)`` with ``classes[indices[i]] == y[i]``.
    If ``classes`` is given and every label is one of its elements, labels are matched
    by value; otherwise integer labels in ``0..len(classes)-1`` are read as indices into
    ``classes`` (the convention of ``.npz`` files with keys ``x``, ``y``, ``classes``).
    """
    if isinstance(y, torch.Tensor):
        values = [_to_python_scalar(v) for v in y.detach().cpu().reshape(-1).tolist()]
    else:
        arr = np.asarray(y)
        if arr.ndim != 1:
            raise ShapeMismatchError(f"y must be one-dimensional (n,), got shape {arr.shape}.")
        values = [_to_python_scalar(v) for v in arr.tolist()]
    try:
        hash(tuple(values))
    except TypeError as exc:
        raise InvalidArgumentError(f"labels y must be hashable values; {exc}") from None

    if classes is not None:
        classes = tuple(_to_python_scalar(c) for c in classes)
        if len(set(classes)) != len(classes):
            raise InvalidArgumentError(f"classes must be distinct, got {classes!r}.")
        index = {c: k for k, c in enumerate(classes)}
        if all(v in index for v in values):
            codes = [index[v] for v in values]
        elif all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(classes) for v in values):
            codes = values
        else:
            bad = next(v for v in values if v not in index)
            raise InvalidArgumentError(f"label {bad!r} is neither one of classes={classes!r} nor an index into it.")
        return torch.as_tensor(codes, dtype=torch.long), classes

    uniques = list(dict.fromkeys(values))
    try:
        uniques = sorted(uniques)
    except TypeError:
        pass  # unorderable mix of types: keep order of first appearance
    index = {c: k for k, c in enumerate(uniques)}
    return torch.as_tensor([index[v] for v in values], dtype=torch.long), tuple(uniques)


@dataclass(frozen=True)
class ClassStats:
    r"""Per-class Gaussian statistics of a labeled dataset.

    Class ``c`` is summarised by its mass ``weights[c]`` (sum of its sample weights),
    its mean ``means[c]`` and its covariance, held in one of two forms:

    * ``factors``: a ``(C, r, d)`` tensor ``F`` with :math:`\Sigma_c = F_c^\top F_c`
      (for classes built from samples, ``F_c`` holds the centred samples scaled by
      :math:`\sqrt{w_i / (W_c - \sum w_i^2 / W_c)}`, zero-padded to ``r`` rows), or
    * ``covariances``: a ``(C, d, d)`` tensor of symmetric PSD matrices, or
    * ``variances``: a ``(C, d)`` tensor of diagonal covariances.

    Any of the tensors may require gradients: the Gaussian label cost is
    differentiable with respect to all of them (used by the joint-driven flows).

    Attributes:
        means: ``(C, d)`` class means.
        weights: ``(C,)`` class masses, summing to the dataset's total mass.
        counts: ``(C,)`` number of samples per class (``long``).
        factors / covariances / variances: covariance representations (see above).
        classes: the class names, in order.
    """

    means: torch.Tensor
    weights: torch.Tensor
    counts: torch.Tensor
    classes: tuple[Hashable, ...]
    factors: torch.Tensor | None = None
    covariances: torch.Tensor | None = None
    variances: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.means.ndim != 2:
            raise ShapeMismatchError(f"means must have shape (C, d), got {tuple(self.means.shape)}.")
        num_classes, dim = self.means.shape
        for name, expected in (
            ("factors", (num_classes, None, dim)),
            ("covariances", (num_classes, dim, dim)),
            ("variances", (num_classes, dim)),
        ):
            value = getattr(self, name)
            if value is None:
                continue
            shape = tuple(value.shape)
            mismatch = any(e is not None and e != s for e, s in zip(expected, shape, strict=False))
            if len(shape) != len(expected) or mismatch:
                pretty = tuple("r" if e is None else e for e in expected)
                raise ShapeMismatchError(
                    f"{name} must have shape {pretty} to match means of shape {(num_classes, dim)}, got {shape}."
                )

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return self.means.shape[1]

    def covariance_matrices(self) -> torch.Tensor:
        """The ``(C, d, d)`` covariance matrices, whatever form they are stored in."""
        if self.covariances is not None:
            return self.covariances
        if self.factors is not None:
            return self.factors.mT @ self.factors
        if self.variances is not None:
            return torch.diag_embed(self.variances)
        raise InvalidArgumentError("ClassStats holds no covariance (factors, covariances or variances).")

    def diagonal_variances(self) -> torch.Tensor:
        """The ``(C, d)`` per-coordinate variances (diagonal of the covariances)."""
        if self.variances is not None:
            return self.variances
        if self.factors is not None:
            return (self.factors * self.factors).sum(dim=1)
        if self.covariances is not None:
            return torch.diagonal(self.covariances, dim1=-2, dim2=-1)
        raise InvalidArgumentError("ClassStats holds no covariance (factors, covariances or variances).")


def json_name(name: Hashable) -> Any:
    """A class name as a JSON value: ints, floats, strings, booleans and None as they are, else ``str``."""
    return name if isinstance(name, (int, float, str, bool)) or name is None else str(name)


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(
            f"{name} of shape {tuple(tensor.shape)} holds {bad} NaN or Inf value(s); clean or impute them first."
        )


class LabeledDataset:
    r"""A weighted, labeled point cloud :math:`\rho = \sum_i w_i\, \delta_{(x_i, y_i)}`.

    Args:
        x: features, an array or tensor of shape ``(n, d)`` or ``(n, *feature_shape)``
            (images are flattened to ``(n, prod(feature_shape))``; the shape is kept in
            :attr:`feature_shape`). Integer arrays (e.g. ``uint8`` pixels) are converted to
            floating point *without* rescaling; use :meth:`scaled` for that.
        y: labels, a length-``n`` sequence of hashable values (ints, strings, ...).
            Non-contiguous integers such as ``{3, 7}`` are fine.
        weights: optional non-negative sample weights ``(n,)``; normalised to sum 1.
            Uniform by default.
        classes: optional ordered class list. If every label is an element of it,
            labels are matched by value; otherwise integer labels are read as indices
            into it (the ``.npz`` convention). Classes without samples are rejected.
        dtype: floating dtype of the features (default: ``torch.get_default_dtype()``
            for non-float input, else the input's float dtype).
        device: torch device for the tensors (default: the input tensor's device, or CPU).
        name: optional display name.

    Attributes:
        x: ``(n, d)`` float tensor of features.
        y: ``(n,)`` long tensor of class indices; ``classes[y[i]]`` is the original label.
        weights: ``(n,)`` sample weights summing to 1.
        classes: tuple of the ``C`` class names.
        feature_shape: shape of one sample before flattening.

    Raises:
        EmptyDatasetError: for ``n = 0``.
        NonFiniteError: if ``x`` holds NaN or Inf.
        ShapeMismatchError: if ``x``, ``y`` and ``weights`` disagree in length.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        weights: Any | None = None,
        classes: Sequence[Hashable] | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        name: str | None = None,
    ) -> None:
        features = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if features.is_complex():
            raise InvalidArgumentError(
                f"x is complex ({features.dtype}, shape {tuple(features.shape)}); datasetflow works with real "
                "features. Pass x.real, x.abs() or stack the real and imaginary parts as features."
            )
        if dtype is None:
            dtype = features.dtype if features.is_floating_point() else torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise InvalidArgumentError(f"dtype must be a floating dtype, got {dtype}.")
        if device is None:
            device = features.device
        if features.ndim == 0:
            raise ShapeMismatchError("x must have shape (n, d) or (n, *feature_shape), got a scalar.")
        n = features.shape[0]
        if n == 0:
            raise EmptyDatasetError(f"x holds no samples (shape {tuple(features.shape)}); a dataset needs n >= 1.")
        self.feature_shape: tuple[int, ...] = tuple(features.shape[1:]) or (1,)
        self.x: torch.Tensor = features.reshape(n, -1).to(device=device, dtype=dtype)
        _check_finite("x", self.x)

        codes, self.classes = _encode_labels(y, classes)
        if codes.shape[0] != n:
            raise ShapeMismatchError(
                f"x has {n} samples (shape {tuple(features.shape)}) but y has {codes.shape[0]} labels."
            )
        self.y: torch.Tensor = codes.to(device)
        counts = torch.bincount(self.y, minlength=len(self.classes))
        if bool((counts == 0).any()):
            empty = [self.classes[k] for k in torch.nonzero(counts == 0).flatten().tolist()]
            raise EmptyDatasetError(f"classes {empty!r} have no samples; drop them from classes.")

        if weights is None:
            self.weights: torch.Tensor = torch.full((n,), 1.0 / n, dtype=dtype, device=device)
        else:
            w = torch.as_tensor(np.asarray(weights) if not isinstance(weights, torch.Tensor) else weights)
            w = w.to(device=device, dtype=dtype).reshape(-1)
            if w.shape[0] != n:
                raise ShapeMismatchError(f"weights has shape {tuple(w.shape)} but x has {n} samples.")
            _check_finite("weights", w)
            if bool((w < 0).any()) or float(w.sum()) <= 0:
                raise InvalidArgumentError("weights must be non-negative with a positive sum.")
            self.weights = w / w.sum()
        self.name = name

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_tensors(
        cls,
        x: torch.Tensor,
        y: torch.Tensor,
        weights: torch.Tensor,
        classes: Sequence[Hashable],
        *,
        feature_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> LabeledDataset:
        """A dataset from tensors already in the library's form, used as they are (no copy, no label encoding).

        Args:
            x: ``(n, d)`` floating features (gradients flow through them).
            y: ``(n,)`` long class indices into ``classes``.
            weights: ``(n,)`` masses summing to 1.
            classes: the class names.
            feature_shape: shape of one sample (default ``(d,)``).
            name: optional display name.

        Only shapes are checked: this is the fast path for code that builds datasets from validated
        tensors (flows, minibatches). Use the constructor for user data.
        """
        if x.ndim != 2 or y.shape != (x.shape[0],) or weights.shape != (x.shape[0],):
            raise ShapeMismatchError(
                f"from_tensors needs x (n, d), y (n,) and weights (n,); got {tuple(x.shape)}, {tuple(y.shape)} "
                f"and {tuple(weights.shape)}."
            )
        shape = tuple(feature_shape) if feature_shape is not None else (x.shape[1],)
        return cls._build(x=x, y=y, weights=weights, classes=tuple(classes), feature_shape=shape, name=name)

    @classmethod
    def _build(cls, **fields: Any) -> LabeledDataset:
        """An instance with the given attributes (every attribute of ``__init__`` must be given)."""
        out = object.__new__(cls)
        out.__dict__.update(fields)
        return out

    def _replace(self, **changes: Any) -> LabeledDataset:
        """A shallow copy with some attributes replaced."""
        return self._build(**{**self.__dict__, **changes})

    @classmethod
    def from_torch_dataset(cls, dataset: Any, **kwargs: Any) -> LabeledDataset:
        """Build from a map-style ``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs."""
        try:
            size = len(dataset)
        except TypeError as exc:
            raise DataFormatError(f"dataset must be a map-style torch Dataset with __len__; {exc}") from None
        if size == 0:
            raise EmptyDatasetError("the torch Dataset is empty; a dataset needs n >= 1.")
        xs, ys = [], []
        for i in range(size):
            item = dataset[i]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise DataFormatError(f"dataset[{i}] must be an (x, y) pair, got {type(item).__name__}.")
            xs.append(torch.as_tensor(np.asarray(item[0]) if not isinstance(item[0], torch.Tensor) else item[0]))
            ys.append(_to_python_scalar(item[1]))
        return cls(torch.stack(xs), ys, **kwargs)

    # ------------------------------------------------------------------ basic info
    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name else ""
        return (
            f"LabeledDataset({name}n={len(self)}, d={self.dim}, classes={self.num_classes}, "
            f"feature_shape={self.feature_shape}, dtype={self.x.dtype}, device={self.x.device})"
        )

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return self.x.shape[1]

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return len(self.classes)

    @property
    def labels(self) -> list[Hashable]:
        """The original labels, one per sample."""
        return [self.classes[k] for k in self.y.tolist()]

    def class_counts(self) -> torch.Tensor:
        """``(C,)`` number of samples per class."""
        return torch.bincount(self.y, minlength=self.num_classes)

    def class_weights(self) -> torch.Tensor:
        """``(C,)`` mass of each class (sum of its sample weights)."""
        out = torch.zeros(self.num_classes, dtype=self.weights.dtype, device=self.weights.device)
        return out.index_add(0, self.y, self.weights)

    # ------------------------------------------------------------------ transforms
    def with_features(self, x: torch.Tensor) -> LabeledDataset:
        """A copy with new ``(n, d)`` features (e.g. moved particles) and the same labels and weights.

        ``x`` is used as is, so gradients flow through it.
        """
        if x.shape != self.x.shape:
            raise ShapeMismatchError(f"x must have shape {tuple(self.x.shape)}, got {tuple(x.shape)}.")
        _check_finite("x", x.detach())
        return self._replace(x=x)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LabeledDataset:
        """A copy on another device and/or with another floating dtype."""
        return self._replace(
            x=self.x.to(device=device, dtype=dtype),
            weights=self.weights.to(device=device, dtype=dtype),
            y=self.y.to(device=device),
        )

    def with_class_weights(self, class_weights: Any = "uniform") -> LabeledDataset:
        r"""A copy whose sample weights are :math:`w_i = p_{y_i} / n_{y_i}`: uniform inside each class,
        with class masses :math:`p_c`.

        Args:
            class_weights: ``"uniform"`` (:math:`p_c = 1/C`), ``"proportional"`` (:math:`p_c = n_c / n`)
                or a ``(C,)`` array of non-negative masses (normalised to sum 1), in the order of
                :attr:`classes`.

        This is the weighting of the class-mixture (WoW) view of a dataset, where each class is
        the uniform cloud of its samples.
        """
        counts = self.class_counts().to(self.weights.dtype)
        if isinstance(class_weights, str):
            if class_weights not in ("uniform", "proportional"):
                raise InvalidArgumentError(
                    f"class_weights must be 'uniform', 'proportional' or a ({self.num_classes},) array, "
                    f"got {class_weights!r}."
                )
            masses = torch.ones_like(counts) if class_weights == "uniform" else counts.clone()
        else:
            masses = (
                torch.as_tensor(
                    np.asarray(class_weights) if not isinstance(class_weights, torch.Tensor) else class_weights
                )
                .to(self.weights)
                .reshape(-1)
            )
            if masses.shape[0] != self.num_classes:
                raise ShapeMismatchError(
                    f"class_weights has shape {tuple(masses.shape)} but the dataset has {self.num_classes} classes."
                )
            if not bool(torch.isfinite(masses).all()) or bool((masses < 0).any()) or float(masses.sum()) <= 0:
                raise InvalidArgumentError("class_weights must be finite and non-negative with a positive sum.")
        masses = masses / masses.sum()
        return self._replace(weights=(masses / counts)[self.y])

    def scaled(self, factor: float) -> LabeledDataset:
        """A copy with features multiplied by ``factor`` (e.g. ``1/255`` for ``uint8`` pixels)."""
        return self.with_features(self.x * factor)

    def take(self, index: torch.Tensor, weights: torch.Tensor | None = None) -> LabeledDataset:
        """The samples ``index`` (a long tensor) with the same classes and renormalised weights
        (``weights``, shape ``(len(index),)``, instead of the selected ones if given).

        Unlike :meth:`subset`, classes are kept as they are, so every class must keep a sample.
        """
        y = self.y[index]
        if bool((torch.bincount(y, minlength=self.num_classes) == 0).any()):
            raise EmptyDatasetError("take() would leave a class without samples; use subset() to drop classes.")
        w = self.weights[index] if weights is None else weights.to(self.weights)
        return self._replace(x=self.x[index], y=y, weights=w / w.sum())

    def subset(self, index: Any) -> LabeledDataset:
        """The samples selected by ``index`` (a slice, boolean mask or index array).

        Weights are renormalised; classes left without samples are dropped.
        """
        idx = torch.arange(len(self), device=self.x.device)[index]
        if idx.numel() == 0:
            raise EmptyDatasetError("subset selects no samples.")
        labels = [self.classes[k] for k in self.y[idx].tolist()]
        kept = [c for c in self.classes if c in set(labels)]
        return LabeledDataset(
            self.x[idx].reshape(idx.numel(), *self.feature_shape),
            labels,
            weights=self.weights[idx],
            classes=kept,
            name=self.name,
        )

    # ------------------------------------------------------------------ statistics
    def thin_factor_layout(self, *, unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Where each sample sits in the thin covariance factors of :meth:`class_stats`.

        Returns ``(position, scale)``, both ``(n,)``: sample ``i`` of class ``c = y_i`` is row ``position[i]`` of
        ``factors[c]``, which holds ``scale[i] * (x_i - m_c)`` with :math:`\text{scale}_i = \sqrt{w_i / N_c}`
        (``N_c`` the covariance normaliser; 0 for single-sample classes). Only meaningful for classes with
        ``n_c <= d`` samples (the others are factored from their covariance).
        """
        y, w = self.y, self.weights
        counts = torch.bincount(y, minlength=self.num_classes)
        normaliser, single = _normaliser(y, w, self.num_classes, unbiased)
        return _thin_layout(y, w, counts, torch.argsort(y, stable=True), normaliser, single)

    def class_stats(self, *, unbiased: bool = True, diagonal: bool = False) -> ClassStats:
        r"""Per-class means and covariances, in one streaming float64 pass over the samples.

        The mean of class :math:`c` is :math:`m_c = \sum_{i \in c} w_i x_i / W_c` with
        :math:`W_c = \sum_{i \in c} w_i`. The covariance is the *unbiased* estimator by
        default, as ``torch.cov`` with ``aweights``:

        .. math:: \Sigma_c = \frac{\sum_{i\in c} w_i (x_i - m_c)(x_i - m_c)^\top}{W_c - \sum_{i\in c} w_i^2 / W_c},

        which is the usual :math:`1/(n_c - 1)` normalisation for uniform weights
        (``unbiased=False`` divides by :math:`W_c`, i.e. :math:`1/n_c`).

        Means are accumulated in float64 over row blocks (:func:`~datasetflow.data.moments.class_moments`).
        The covariance is returned as a factor ``F_c`` (``(C, r, d)``, :math:`\Sigma_c = F_c^\top F_c`,
        zero-padded rows), never as a ``d x d`` matrix unless asked for:

        * a class with ``n_c <= d`` samples keeps its thin factor, the centred samples scaled by
          :math:`\sqrt{w_i / N_c}` (``n_c`` rows);
        * a class with ``n_c > d`` samples has its ``d x d`` covariance accumulated in float64 row blocks
          (memory :math:`O(d^2)` per class, no copy of its samples) and factored once,
          :math:`F_c = \Lambda^{1/2} V^\top` from a float64 eigendecomposition, with the eigenvalue floor
          :math:`d\,\varepsilon_{64}\,\lambda_{\max}` (:func:`~datasetflow.data.moments.covariance_factor`;
          ``r_c`` rows, the numerical rank).

        Factors are cast to the dtype of ``x``. Everything is differentiable with respect to ``x``
        (large classes through the blockwise backward passes of the two functions above).

        A class with a single sample has no unbiased covariance; it is given a zero
        covariance (a Dirac) and a :class:`DegenerateClassWarning` is issued.

        Args:
            unbiased: use the unbiased normaliser (default) or the maximum-likelihood one.
            diagonal: only the per-class variances (the diagonals of :math:`\Sigma_c`, ``O(C d)``: no
                ``d x d`` work), returned as ``variances`` instead of ``factors``.

        Returns:
            A :class:`ClassStats` with ``means``, ``factors`` (or ``variances``), ``weights`` and ``counts``.
        """
        from .moments import class_moments, covariance_factor

        x, y, w = self.x, self.y, self.weights
        num_classes, dim = self.num_classes, self.dim
        counts = torch.bincount(y, minlength=num_classes)
        class_mass = torch.zeros(num_classes, dtype=w.dtype, device=w.device).index_add(0, y, w)
        normaliser, single = _normaliser(y, w, num_classes, unbiased)
        if bool(single.any()):
            names = [self.classes[k] for k in torch.nonzero(single).flatten().tolist()]
            warnings.warn(
                f"classes {names!r} have a single sample: their covariance is undefined and is set to 0 "
                "(a Dirac). Add samples or a ridge in the label cost to regularise it.",
                DegenerateClassWarning,
                stacklevel=2,
            )

        if diagonal:
            means = torch.zeros(num_classes, dim, dtype=x.dtype, device=x.device).index_add(
                0, y, w[:, None] * x
            ) / class_mass[:, None].to(x.dtype)
            centred = x - means.index_select(0, y)
            second = torch.zeros_like(means).index_add(0, y, w[:, None] * centred * centred)
            variances = torch.where(single[:, None], torch.zeros_like(second), second / normaliser[:, None].to(x.dtype))
            return ClassStats(means=means, weights=class_mass, counts=counts, classes=self.classes, variances=variances)
        order = torch.argsort(y, stable=True)
        members = list(torch.split(order, counts.tolist()))
        large = (counts > dim) & ~single
        dense = torch.nonzero(large).flatten().tolist()
        means64, covariances64 = class_moments(x, members, w, class_mass, normaliser, dense)
        means = means64.to(x.dtype)

        thin = ~large[y]
        thin_rows = int(counts[~large].max()) if bool((~large).any()) else 0
        dense_factors = covariance_factor(covariances64).to(x.dtype) if dense else None
        rows = max(thin_rows, dense_factors.shape[1] if dense_factors is not None else 0, 1)
        factors = x.new_zeros(num_classes, rows, dim)
        if thin_rows:
            position, scale = _thin_layout(y, w, counts, order, normaliser, single)
            index = torch.nonzero(thin).flatten()
            # index_select, not x[index]: its backward is a plain index_add (advanced indexing's accumulating
            # index_put is several times slower on the CPU)
            values = scale[index, None] * (x.index_select(0, index) - means.index_select(0, y[index]))
            factors = factors.index_put((y[index], position[index]), values)
        if dense_factors is not None:
            padded = torch.nn.functional.pad(dense_factors, (0, 0, 0, rows - dense_factors.shape[1]))
            factors = factors.index_copy(0, torch.tensor(dense, device=x.device), padded)
        return ClassStats(means=means, weights=class_mass, counts=counts, classes=self.classes, factors=factors)


def _normaliser(
    y: torch.Tensor, w: torch.Tensor, num_classes: int, unbiased: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class covariance normalisers ``(C,)`` (1 where undefined) and the single-sample mask ``(C,)``."""
    class_mass = torch.zeros(num_classes, dtype=w.dtype, device=w.device).index_add(0, y, w)
    if unbiased:
        sq_mass = torch.zeros_like(class_mass).index_add(0, y, w * w)
        normaliser = class_mass - sq_mass / class_mass
    else:
        normaliser = class_mass.clone()
    single = normaliser <= class_mass * 1e-12
    return torch.where(single, torch.ones_like(normaliser), normaliser), single


def _thin_layout(y, w, counts, order, normaliser, single) -> tuple[torch.Tensor, torch.Tensor]:
    """Row of each sample inside its class's padded ``(r, d)`` factor, and its scale ``sqrt(w_i / N_c)``."""
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(y)
    position[order] = torch.arange(len(y), device=y.device) - starts[y[order]]
    scale = torch.sqrt(w / normaliser[y])
    return position, torch.where(single[y], torch.zeros_like(scale), scale)


def check_dataset_pair(names: tuple[str, str], first: Any, second: Any, *, same_dim: bool = True) -> None:
    """Both arguments are :class:`LabeledDataset` s (in the same feature dimension), else an error naming them."""
    for argument, value in zip(names, (first, second), strict=True):
        if not isinstance(value, LabeledDataset):
            raise InvalidArgumentError(f"{argument} must be a LabeledDataset, got {type(value).__name__}.")
    if same_dim and first.dim != second.dim:
        raise ShapeMismatchError(
            f"{names[0]} features have shape {tuple(first.x.shape)} and {names[1]} features "
            f"{tuple(second.x.shape)}: the feature dimensions {first.dim} and {second.dim} differ."
        )


def features_of(data: Any, argument: str = "x") -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(x, feature_shape)`` of a :class:`LabeledDataset` or of an ``(n, d)`` / ``(n, *shape)`` tensor.

    A tensor of shape ``(n, *shape)`` with more than one feature axis is flattened to ``(n, d)``.
    """
    if isinstance(data, LabeledDataset):
        return data.x, data.feature_shape
    if not isinstance(data, torch.Tensor):
        raise InvalidArgumentError(
            f"{argument} must be a LabeledDataset or a tensor of shape (n, d), got {type(data).__name__}."
        )
    if data.ndim < 2 or data.shape[0] == 0:
        raise ShapeMismatchError(f"{argument} must have shape (n, d) with n >= 1, got {tuple(data.shape)}.")
    return data.reshape(data.shape[0], -1), tuple(data.shape[1:])
