"""Exceptions and warnings raised by datasetflow.

Every error derives from :class:`DatasetflowError`; the subclasses also derive
from the matching builtin (``ValueError``, ``TypeError``, ...) so that generic
``except ValueError`` handlers keep working. Messages name the offending
argument, its shape and the valid options.
"""

from __future__ import annotations

__all__ = [
    "DatasetflowError",
    "InvalidArgumentError",
    "ShapeMismatchError",
    "EmptyDatasetError",
    "NonFiniteError",
    "RegularizationError",
    "DivergenceError",
    "DataFormatError",
    "DatasetflowWarning",
    "DegenerateClassWarning",
    "ConvergenceWarning",
]


class DatasetflowError(Exception):
    """Base class of every exception raised by datasetflow."""


class InvalidArgumentError(DatasetflowError, ValueError):
    """An argument has an invalid value (a negative ``reg``, an unknown method name, ...)."""


class ShapeMismatchError(DatasetflowError, ValueError):
    """Tensors whose shapes must agree do not (e.g. feature dimensions of two datasets)."""


class EmptyDatasetError(DatasetflowError, ValueError):
    """A dataset, or a class that must hold samples, is empty."""


class NonFiniteError(DatasetflowError, ValueError):
    """An input holds NaN or Inf values."""


class RegularizationError(InvalidArgumentError):
    """An entropic regularisation is too small (underflows) or too large (loses the value) for the cost scale
    in the working precision."""


class DivergenceError(DatasetflowError, FloatingPointError):
    """An iterative process (a flow) is diverging: its values grew without bound or became NaN/Inf."""


class DataFormatError(DatasetflowError, ValueError):
    """A file or object cannot be read as a labeled dataset (missing keys, wrong dtype, ...)."""


class DatasetflowWarning(UserWarning):
    """Base class of every warning issued by datasetflow."""


class DegenerateClassWarning(DatasetflowWarning):
    """A class has too few samples for an unbiased covariance; it is regularised."""


class ConvergenceWarning(DatasetflowWarning):
    """An iterative solver stopped at ``max_iter`` before reaching ``tol``."""
