"""Reading labeled datasets from ``.npz`` files, a data directory and the embedded subsets.

File format
-----------
A dataset file is a NumPy archive (``np.savez`` / ``np.savez_compressed``) read with
``allow_pickle=False``. It holds

* ``x``: features, ``(n, d)``, ``(n, H, W)`` (grayscale images), or ``(n, H, W, C)`` /
  ``(n, C, H, W)`` (colour images, ``C <= 4``), any numeric dtype;
* ``y``: ``(n,)`` labels;
* ``classes`` (optional): ``(K,)`` class names; ``y`` then holds integer indices into it,
  ``classes[y[i]]`` being the label of sample ``i``;
* ``weights`` (optional): ``(n,)`` non-negative sample weights.

Other keys are ignored.

Pixel scale
-----------
``scale="auto"`` (the default) maps ``uint8`` features to floats in ``[0, 1]`` by dividing
by 255 and leaves every other dtype (floats included) unchanged. ``scale=None`` keeps the
raw values (``uint8`` pixels become floats in ``[0, 255]``). A positive number multiplies
the features. Distances computed on ``[0, 1]`` and on ``[0, 255]`` pixels differ by a
factor ``255**2`` in squared distance, so compare datasets loaded with the same scale.

Built-in names
--------------
``load_dataset`` also accepts names (see :func:`list_builtin_datasets`):

* ``mnist``, ``fashion-mnist``, ``usps``, ``cifar10``: full splits, read from a data
  directory (the ``data_dir`` argument, else ``$DATASETFLOW_DATA_DIR``, else
  ``../shared/data`` relative to the current working directory). The directory holds
  ``mnist_test.npz``, ``fashion_mnist_test.npz``, ``usps_test.npz``, ``usps_train.npz``
  and ``cifar10_test.npz``.
* ``mnist-mini``, ``fashion-mnist-mini``, ``usps-mini``: 50 images per class drawn from the
  test splits, shipped inside the package (see ``embedded/PROVENANCE.md``); they need no
  data directory.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import (
    DataFormatError,
    DatasetflowError,
    DatasetflowWarning,
    InvalidArgumentError,
    ShapeMismatchError,
)
from .dataset import LabeledDataset

__all__ = [
    "DATA_DIR_ENV",
    "BuiltinDataset",
    "load_npz",
    "load_dataset",
    "list_builtin_datasets",
    "describe_builtin_datasets",
    "resolve_data_dir",
    "parse_size",
]

#: Environment variable naming the directory that holds the full ``.npz`` datasets.
DATA_DIR_ENV = "DATASETFLOW_DATA_DIR"

#: Fallback data directory, relative to the current working directory.
_DEFAULT_DATA_DIR = Path("..") / "shared" / "data"

_REQUIRED_KEYS = ("x", "y")
_OPTIONAL_KEYS = ("classes", "weights")


# ---------------------------------------------------------------------- built-in registry
@dataclass(frozen=True)
class _Entry:
    splits: dict[str, str]  # split -> file name
    embedded: bool
    description: str


_REGISTRY: dict[str, _Entry] = {
    "mnist": _Entry({"test": "mnist_test.npz"}, False, "MNIST digits, 28x28 grayscale, 10 classes"),
    "fashion-mnist": _Entry(
        {"test": "fashion_mnist_test.npz"}, False, "Fashion-MNIST garments, 28x28 grayscale, 10 classes"
    ),
    "usps": _Entry(
        {"test": "usps_test.npz", "train": "usps_train.npz"}, False, "USPS digits, 16x16 grayscale, 10 classes"
    ),
    "cifar10": _Entry({"test": "cifar10_test.npz"}, False, "CIFAR-10 (JPEG re-encoded), 32x32x3 RGB, 10 classes"),
    "mnist-mini": _Entry({"test": "mnist_mini.npz"}, True, "500 MNIST test images (50 per class), embedded"),
    "fashion-mnist-mini": _Entry(
        {"test": "fashion_mnist_mini.npz"}, True, "500 Fashion-MNIST test images (50 per class), embedded"
    ),
    "usps-mini": _Entry({"test": "usps_mini.npz"}, True, "500 USPS test images (50 per class, 16x16), embedded"),
}

_ALIASES = {"fmnist": "fashion-mnist", "cifar-10": "cifar10", "fmnist-mini": "fashion-mnist-mini"}


@dataclass(frozen=True)
class BuiltinDataset:
    """One built-in dataset split and where it was found.

    Attributes:
        name: the name accepted by :func:`load_dataset` (e.g. ``"usps"``).
        split: the split (``"test"`` or ``"train"``).
        filename: the ``.npz`` file name in the data directory (or in the package for
            embedded subsets).
        embedded: whether the file ships inside the package.
        description: a one-line description.
        path: the file's location if it was found, else ``None``.
    """

    name: str
    split: str
    filename: str
    embedded: bool
    description: str
    path: Path | None

    @property
    def available(self) -> bool:
        """Whether the file was found."""
        return self.path is not None


def list_builtin_datasets() -> tuple[str, ...]:
    """The names :func:`load_dataset` resolves without a path.

    Returns:
        The full datasets (``mnist``, ``fashion-mnist``, ``usps``, ``cifar10``, read from a
        data directory), followed by the embedded subsets (``mnist-mini``,
        ``fashion-mnist-mini``, ``usps-mini``, always available).
    """
    return tuple(_REGISTRY)


def describe_builtin_datasets(data_dir: str | PathLike[str] | None = None) -> list[BuiltinDataset]:
    """Every built-in dataset split, with whether and where its file was found.

    Args:
        data_dir: the data directory to look in; default as in :func:`resolve_data_dir`.
            A directory that does not exist makes the full datasets unavailable rather
            than raising.

    Returns:
        One :class:`BuiltinDataset` per (name, split), in the order of
        :func:`list_builtin_datasets`.
    """
    try:
        root = resolve_data_dir(data_dir)
    except DataFormatError:
        root = None
    rows = []
    for name, entry in _REGISTRY.items():
        for split, filename in entry.splits.items():
            if entry.embedded:
                path: Path | None = _embedded_path(filename)
            else:
                path = root / filename if root is not None else None
            if path is not None and not path.is_file():
                path = None
            rows.append(BuiltinDataset(name, split, filename, entry.embedded, entry.description, path))
    return rows


def resolve_data_dir(data_dir: str | PathLike[str] | None = None) -> Path | None:
    """The directory holding the full datasets.

    Looked up in order: the ``data_dir`` argument, the environment variable
    ``DATASETFLOW_DATA_DIR``, and ``../shared/data`` relative to the current working
    directory (used only if it exists).

    Args:
        data_dir: an explicit directory; it must exist.

    Returns:
        The directory, or ``None`` when no argument or environment variable is given and
        the fallback does not exist.

    Raises:
        DataFormatError: if ``data_dir`` or ``$DATASETFLOW_DATA_DIR`` names a path that is
            not a directory.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataFormatError(f"data_dir={str(data_dir)!r} is not a directory.")
        return path
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataFormatError(f"the environment variable {DATA_DIR_ENV}={env!r} does not name a directory.")
        return path
    if _DEFAULT_DATA_DIR.is_dir():
        return _DEFAULT_DATA_DIR.resolve()
    return None


def _embedded_path(filename: str) -> Path:
    return Path(str(resources.files(__package__).joinpath("embedded", filename)))


# ---------------------------------------------------------------------- argument parsing
def parse_size(size: Any, *, argument: str = "resize") -> tuple[int, int]:
    """Read an image size given as ``28``, ``(28, 28)`` or ``"28x28"``.

    Args:
        size: an int (square), a pair of ints ``(H, W)`` or a string ``"HxW"`` / ``"S"``.
        argument: the argument's name, used in error messages.

    Returns:
        ``(H, W)`` with both entries positive.

    Raises:
        InvalidArgumentError: for anything else.
    """
    hint = f"{argument} must be a positive int S, a pair (H, W) or a string 'HxW' such as '28x28'; got {size!r}."
    if isinstance(size, str):
        parts = size.lower().replace("*", "x").split("x")
        try:
            values = [int(p.strip()) for p in parts]
        except ValueError:
            raise InvalidArgumentError(hint) from None
    elif isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        values = [int(size)]
    elif isinstance(size, Sequence) and not isinstance(size, (bytes, bytearray)):
        values = list(size)
    else:
        raise InvalidArgumentError(hint)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise InvalidArgumentError(hint)
    return int(values[0]), int(values[1])


def _check_scale(scale: Any) -> None:
    if scale is None or (isinstance(scale, str) and scale == "auto"):
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"scale must be 'auto', None or a positive number, got {scale!r}.")
    if not math.isfinite(float(scale)) or float(scale) <= 0:
        raise InvalidArgumentError(f"scale must be 'auto', None or a positive finite number, got {scale!r}.")


# ---------------------------------------------------------------------- image resizing
def _resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a batch of images, keeping its layout.

    ``x`` is ``(n, H, W)``, ``(n, H, W, C)`` (channels-last, ``C <= 4``) or
    ``(n, C, H, W)`` (channels-first, ``C <= 4``). Downsampling uses antialiasing.
    """
    if x.ndim == 3:
        images, layout = x[:, None], "nhw"
    elif x.ndim == 4 and x.shape[-1] <= 4:
        images, layout = x.permute(0, 3, 1, 2), "nhwc"
    elif x.ndim == 4 and x.shape[1] <= 4:
        images, layout = x, "nchw"
    else:
        raise ShapeMismatchError(
            f"resize needs images of shape (n, H, W), (n, H, W, C) or (n, C, H, W) with C <= 4; "
            f"got x of shape {tuple(x.shape)}."
        )
    if tuple(images.shape[-2:]) == size:
        return x
    downsampling = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    out = torch.nn.functional.interpolate(
        images, size=size, mode="bilinear", align_corners=False, antialias=downsampling
    )
    if layout == "nhw":
        return out[:, 0]
    if layout == "nhwc":
        return out.permute(0, 2, 3, 1).contiguous()
    return out


# ---------------------------------------------------------------------- .npz files
def _read_key(data: Any, key: str, path: str) -> np.ndarray:
    try:
        return data[key]
    except ValueError as exc:  # object arrays need pickle
        raise DataFormatError(
            f"{path}: key {key!r} holds an object array, which needs pickle; datasetflow reads .npz files "
            f"with allow_pickle=False. Save numeric features/labels and a unicode string array for classes "
            f"(e.g. np.asarray(names, dtype=str)). ({exc})"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataFormatError(f"{path}: key {key!r} cannot be read: {exc}") from None


def load_npz(
    path: str | PathLike[str],
    *,
    scale: str | float | None = "auto",
    resize: Any = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    name: str | None = None,
) -> LabeledDataset:
    """Load a labeled dataset from an ``.npz`` file.

    The archive is read with ``np.load(path, allow_pickle=False)``. Required keys: ``x``
    (features, ``(n, ...)``) and ``y`` (``(n,)`` labels). Optional keys: ``classes``
    (``(K,)`` names, with ``y`` holding integer indices ``0..K-1`` into it) and
    ``weights`` (``(n,)`` non-negative sample weights). Other keys are ignored.

    Pixel-scale convention: ``scale="auto"`` divides ``uint8`` features by 255 (floats in
    ``[0, 1]``) and leaves all other dtypes, floats included, unchanged; ``scale=None``
    keeps raw values; a positive number multiplies the features.

    Args:
        path: the ``.npz`` file.
        scale: ``"auto"`` (default), ``None`` or a positive factor, as above.
        resize: optional image size ``(H, W)`` (or ``S`` for ``(S, S)``, or ``"HxW"``).
            Images (``x`` of shape ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)``)
            are resized bilinearly (antialiased when shrinking), e.g. USPS 16x16 to 28x28
            to compare with MNIST. Labels and weights are unchanged.
        dtype: floating dtype of the features (default: the file's float dtype, or
            ``torch.get_default_dtype()`` for integer data).
        device: torch device (default CPU).
        name: display name (default: the file's stem).

    Returns:
        A :class:`LabeledDataset` whose ``feature_shape`` is the (resized) image shape.

    Raises:
        DataFormatError: if the file is missing or is not an ``.npz`` archive, if ``x``
            or ``y`` is missing (the message lists the keys found), if an array needs
            pickle (object dtype), or if ``y`` does not index ``classes``.
        InvalidArgumentError: for a bad ``scale`` or ``resize``.
        ShapeMismatchError: if ``resize`` is asked for non-image ``x``, or if ``x``, ``y``
            and ``weights`` disagree in length.
    """
    _check_scale(scale)
    size = parse_size(resize) if resize is not None else None
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InvalidArgumentError(f"dtype must be a floating torch dtype such as torch.float32, got {dtype!r}.")
    shown = os.fspath(path)
    file = Path(shown)
    if not file.exists():
        raise DataFormatError(f"file not found: {shown!r}.")
    if file.is_dir():
        raise DataFormatError(f"{shown!r} is a directory, not an .npz file.")
    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataFormatError(f"{shown}: cannot be read as an .npz archive ({exc}).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataFormatError(
            f"{shown}: holds a single array (.npy format), not an .npz archive with keys 'x' and 'y'. "
            "Save with np.savez(path, x=features, y=labels)."
        )
    with archive:
        found = list(archive.files)
        missing = [k for k in _REQUIRED_KEYS if k not in found]
        if missing:
            raise DataFormatError(
                f"{shown}: missing key(s) {missing}; found keys {found}; expected keys 'x' and 'y' "
                f"(required) and optionally {list(_OPTIONAL_KEYS)}."
            )
        arrays = {k: _read_key(archive, k, shown) for k in (*_REQUIRED_KEYS, *_OPTIONAL_KEYS) if k in found}

    x_np, y_np = arrays["x"], arrays["y"]
    if not (np.issubdtype(x_np.dtype, np.number) or x_np.dtype == np.bool_):
        raise DataFormatError(f"{shown}: 'x' must be numeric, got dtype {x_np.dtype} with shape {x_np.shape}.")
    if x_np.ndim == 0:
        raise DataFormatError(f"{shown}: 'x' must have shape (n, ...), got a scalar.")
    if y_np.ndim != 1:
        raise DataFormatError(f"{shown}: 'y' must have shape (n,), got {y_np.shape}.")
    labels: Any = y_np
    classes = None
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1:
            raise DataFormatError(f"{shown}: 'classes' must have shape (K,), got {names.shape}.")
        if not np.issubdtype(y_np.dtype, np.integer):
            raise DataFormatError(
                f"{shown}: with 'classes' present, 'y' must hold integer indices into it, got dtype {y_np.dtype}."
            )
        if y_np.size and (int(y_np.min()) < 0 or int(y_np.max()) >= len(names)):
            raise DataFormatError(
                f"{shown}: 'y' must index 'classes' (values in 0..{len(names) - 1}), "
                f"got values in {int(y_np.min())}..{int(y_np.max())}."
            )
        used = np.bincount(y_np.astype(np.int64), minlength=len(names)) > 0
        if not used.all():
            warnings.warn(
                f"{shown}: classes {names[~used].tolist()} have no samples and are dropped.",
                DatasetflowWarning,
                stacklevel=2,
            )
        classes = names[used].tolist()
        labels = names[y_np]  # names matched by value: no ambiguity when classes are ints

    if x_np.dtype.kind == "f":
        source_dtype = torch.from_numpy(np.empty(0, dtype=x_np.dtype)).dtype
    else:
        source_dtype = None
    target = dtype or source_dtype or torch.get_default_dtype()
    features = torch.from_numpy(np.ascontiguousarray(x_np)).to(dtype=target)
    if size is not None:
        features = _resize_images(features, size)
    factor = (1.0 / 255.0 if x_np.dtype == np.uint8 else None) if scale == "auto" else scale
    if factor is not None:
        features = features * float(factor)
    try:
        return LabeledDataset(
            features,
            labels,
            weights=arrays.get("weights"),
            classes=classes,
            dtype=target,
            device=device,
            name=name if name is not None else file.stem,
        )
    except DatasetflowError as exc:
        raise type(exc)(f"{shown}: {exc}") from None


def _split_name(name: str, split: str) -> tuple[str, str]:
    key = name.strip().lower().replace("_", "-")
    if ":" in key:
        key, split = key.split(":", 1)
    return _ALIASES.get(key, key), split


def _is_path(name_or_path: Any) -> bool:
    """Paths: PathLike objects, strings ending in .npz or holding a separator, and existing
    files whose name is not a built-in dataset name."""
    if isinstance(name_or_path, PathLike):
        return True
    if not isinstance(name_or_path, str):
        return False
    text = name_or_path
    if text.lower().endswith(".npz") or os.sep in text or "/" in text:
        return True
    return _split_name(text, "test")[0] not in _REGISTRY and os.path.isfile(text)


def load_dataset(
    name_or_path: str | PathLike[str],
    *,
    data_dir: str | PathLike[str] | None = None,
    split: str = "test",
    resize: Any = None,
    scale: str | float | None = "auto",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    name: str | None = None,
) -> LabeledDataset:
    """Load a dataset by built-in name or from an ``.npz`` path.

    Names (case-insensitive, see :func:`list_builtin_datasets`): ``mnist``,
    ``fashion-mnist``, ``usps``, ``cifar10`` are read from the data directory (the
    ``data_dir`` argument, else ``$DATASETFLOW_DATA_DIR``, else ``../shared/data``
    relative to the working directory) as ``<name>_<split>.npz`` (e.g.
    ``fashion_mnist_test.npz``); ``mnist-mini``, ``fashion-mnist-mini`` and
    ``usps-mini`` ship with the package and need no data directory. A split may also be
    given in the name, as ``"usps:train"``.

    Anything ending in ``.npz`` or containing a path separator is read as a file with
    :func:`load_npz`.

    Args:
        name_or_path: a built-in name or a path to an ``.npz`` file.
        data_dir: directory holding the full datasets.
        split: ``"test"`` (default) or ``"train"`` (USPS only).
        resize: optional image size ``(H, W)``, ``S`` or ``"HxW"``; see :func:`load_npz`.
        scale: pixel scale, ``"auto"`` (``uint8`` to ``[0, 1]``), ``None`` or a factor.
        dtype: floating dtype of the features.
        device: torch device.
        name: display name (default: the built-in name, with ``:split`` for non-test
            splits, or the file's stem).

    Returns:
        A :class:`LabeledDataset`.

    Raises:
        InvalidArgumentError: for an unknown name or split (the message lists the valid
            ones).
        DataFormatError: if the data directory or the file cannot be found or read.
    """
    if _is_path(name_or_path):
        return load_npz(name_or_path, scale=scale, resize=resize, dtype=dtype, device=device, name=name)
    if not isinstance(name_or_path, str):
        raise InvalidArgumentError(
            f"name_or_path must be a built-in name or a path to an .npz file, got {type(name_or_path).__name__}."
        )
    key, split = _split_name(name_or_path, split)
    if key not in _REGISTRY:
        raise InvalidArgumentError(
            f"unknown dataset {name_or_path!r}; valid names are {list(_REGISTRY)}, or give a path to an .npz file."
        )
    entry = _REGISTRY[key]
    if split not in entry.splits:
        raise InvalidArgumentError(f"dataset {key!r} has no split {split!r}; valid splits are {list(entry.splits)}.")
    filename = entry.splits[split]
    display = name if name is not None else (key if split == "test" else f"{key}:{split}")
    if entry.embedded:
        path = _embedded_path(filename)
        if not path.is_file():
            raise DataFormatError(
                f"the embedded dataset file {filename!r} is missing from the installed package; reinstall datasetflow."
            )
    else:
        root = resolve_data_dir(data_dir)
        embedded = [n for n, e in _REGISTRY.items() if e.embedded]
        if root is None:
            raise DataFormatError(
                f"dataset {key!r} needs a data directory holding {filename!r}, and none was found: pass "
                f"data_dir (CLI: --data-dir), set the environment variable {DATA_DIR_ENV}, or use an embedded "
                f"dataset that needs no files: {embedded}."
            )
        path = root / filename
        if not path.is_file():
            raise DataFormatError(
                f"dataset {key!r} (split {split!r}) expects the file {filename!r} in the data directory "
                f"{str(root)!r}, which does not hold it; pass data_dir (CLI: --data-dir) or set {DATA_DIR_ENV} to "
                f"a directory that does, or use an embedded dataset: {embedded}."
            )
    return load_npz(path, scale=scale, resize=resize, dtype=dtype, device=device, name=display)
