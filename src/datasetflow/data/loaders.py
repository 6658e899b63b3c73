"""Reading labeled datasets from ``.npz`` files, IDX files, image folders, a data directory and
the embedded subsets.

File formats
------------
A dataset file is a NumPy archive (``np.savez`` / ``np.savez_compressed``) read with
``allow_pickle=False``. It holds

* ``x``: features, ``(n, d)``, ``(n, H, W)`` (grayscale images), or ``(n, H, W, C)`` /
  ``(n, C, H, W)`` (colour images, ``C <= 4``), any numeric dtype;
* ``y``: ``(n,)`` labels;
* ``classes`` (optional): ``(K,)`` class names; ``y`` then holds integer indices into it,
  ``classes[y[i]]`` being the label of sample ``i``;
* ``weights`` (optional): ``(n,)`` non-negative sample weights.

Other keys are ignored.

:func:`load_idx` reads the raw IDX files in which MNIST, Fashion-MNIST, KMNIST and EMNIST
are distributed, gzipped (``.gz``) or not: an images file (magic number ``0x00000803``,
``uint8`` pixels of shape ``(n, H, W)``) and a labels file (magic number ``0x00000801``,
``(n,)`` ``uint8`` labels). The big-endian header is parsed with ``np.frombuffer``; nothing
is unpickled.

:func:`load_image_folder` reads a folder holding one sub-folder per class (the class name is
the sub-folder's name) of ``.png``, ``.jpg``, ``.jpeg``, ``.bmp`` or ``.gif`` images, with
Pillow (the ``images`` extra: ``pip install pillow``).

Pixel scale
-----------
``scale="auto"`` (the default) maps ``uint8`` features to floats in ``[0, 1]`` by dividing
by 255 and leaves every other dtype (floats included) unchanged. ``scale=None`` keeps the
raw values (``uint8`` pixels become floats in ``[0, 255]``). A positive number multiplies
the features. Distances computed on ``[0, 1]`` and on ``[0, 255]`` pixels differ by a
factor ``255**2`` in squared distance, so compare datasets loaded with the same scale.
IDX files and image folders hold ``uint8`` pixels, so ``"auto"`` gives ``[0, 1]``.

Built-in names
--------------
``load_dataset`` also accepts names (see :func:`list_builtin_datasets`):

* ``mnist``, ``fashion-mnist``, ``kmnist``, ``emnist``, ``usps``, ``cifar10``: full splits,
  read from a data directory (the ``data_dir`` argument, else ``$DATASETFLOW_DATA_DIR``,
  else ``../shared/data`` relative to the current working directory). A split is read
  from ``<name>_<split>.npz`` (``fashion_mnist_test.npz``, ``usps_train.npz``,
  ``cifar10_test.npz``, ...). For ``mnist``, ``fashion-mnist``, ``kmnist`` and ``emnist``
  the original IDX files are used when the ``.npz`` file is missing: the files
  ``t10k-images-idx3-ubyte.gz`` / ``t10k-labels-idx1-ubyte.gz`` (test) and
  ``train-images-idx3-ubyte.gz`` / ``train-labels-idx1-ubyte.gz`` (train) in the
  sub-folder ``mnist/``, ``fashion-mnist/`` or ``kmnist/`` of the data directory, and
  ``emnist/emnist-balanced-test-images-idx3-ubyte.gz`` (and ``-labels-idx1-ubyte.gz``,
  ``-train-...``) for EMNIST, gzipped or not.
* ``emnist`` is the *balanced* split of EMNIST (47 classes: the digits, the upper-case
  letters and the 11 lower-case letters ``a b d e f g h n q r t`` that differ from their
  capitals; class names are those characters). EMNIST IDX files store every image
  transposed; they are transposed back on reading so that the characters stand upright
  (an ``emnist_<split>.npz`` file is expected to hold upright images already).
* ``kmnist`` (Kuzushiji-MNIST) has 10 classes of cursive hiragana, named by their
  romanisation ``o ki su tsu na ha ma ya re wo``.
* ``mnist-mini``, ``fashion-mnist-mini``, ``usps-mini``: 50 images per class drawn from the
  test splits, shipped inside the package (see ``embedded/PROVENANCE.md``); they need no
  data directory.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from ..utils import check_memory
from .dataset import LabeledDataset

__all__ = [
    "DATA_DIR_ENV",
    "BuiltinDataset",
    "load_npz",
    "load_idx",
    "load_image_folder",
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

#: IDX magic numbers: two zero bytes, the data type (0x08: uint8) and the number of dimensions.
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_IDX_TYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
#: IDX images file names: ``<stem>-images-idx3-ubyte[.gz]`` (also ``<stem>-images.idx3-ubyte``).
_IDX_IMAGES_NAME = re.compile(r"^(?P<stem>.+)-images(?P<sep>[-.])idx3-ubyte(?P<gz>\.gz)?$", re.IGNORECASE)

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


# ---------------------------------------------------------------------- built-in registry
@dataclass(frozen=True)
class _Entry:
    splits: dict[str, str]  # split -> .npz file name
    embedded: bool
    description: str
    idx: dict[str, str] = field(default_factory=dict)  # split -> IDX images file, used when the .npz is missing
    classes: tuple[str, ...] | None = None  # names of the IDX labels 0..K-1
    transposed: bool = False  # the IDX images are stored transposed (EMNIST)


def _idx_splits(folder: str, test: str, train: str) -> dict[str, str]:
    """IDX images files of the test and train splits, relative to the data directory."""
    return {"test": f"{folder}/{test}-images-idx3-ubyte.gz", "train": f"{folder}/{train}-images-idx3-ubyte.gz"}


def _npz_splits(stem: str) -> dict[str, str]:
    return {"test": f"{stem}_test.npz", "train": f"{stem}_train.npz"}


_DIGITS = tuple("0123456789")
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_KMNIST = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")  # the hiragana, romanised
_EMNIST_BALANCED = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt")

_REGISTRY: dict[str, _Entry] = {
    "mnist": _Entry(
        _npz_splits("mnist"),
        False,
        "MNIST digits, 28x28 grayscale, 10 classes",
        _idx_splits("mnist", "t10k", "train"),
        _DIGITS,
    ),
    "fashion-mnist": _Entry(
        _npz_splits("fashion_mnist"),
        False,
        "Fashion-MNIST garments, 28x28 grayscale, 10 classes",
        _idx_splits("fashion-mnist", "t10k", "train"),
        _FASHION,
    ),
    "kmnist": _Entry(
        _npz_splits("kmnist"),
        False,
        "Kuzushiji-MNIST cursive hiragana, 28x28 grayscale, 10 classes",
        _idx_splits("kmnist", "t10k", "train"),
        _KMNIST,
    ),
    "emnist": _Entry(
        _npz_splits("emnist"),
        False,
        "EMNIST balanced digits and letters, 28x28 grayscale, 47 classes",
        _idx_splits("emnist", "emnist-balanced-test", "emnist-balanced-train"),
        _EMNIST_BALANCED,
        transposed=True,
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

_ALIASES = {
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "fmnist-mini": "fashion-mnist-mini",
    "kuzushiji-mnist": "kmnist",
    "emnist-balanced": "emnist",
}


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
        path: the file's location if it was found, else ``None``: the ``.npz`` file, or,
            when it is missing, the IDX images file used in its place (its labels file
            found next to it).
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
        The full datasets (``mnist``, ``fashion-mnist``, ``kmnist``, ``emnist``, ``usps``,
        ``cifar10``, read from a data directory as ``.npz`` or IDX files), followed by the
        embedded subsets (``mnist-mini``, ``fashion-mnist-mini``, ``usps-mini``, always
        available).
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
        :func:`list_builtin_datasets`. A split counts as available when its ``.npz``
        file, or its pair of IDX images and labels files, is found.
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
                if not path.is_file():
                    path = None
            else:
                found = _find_builtin(root, entry, split) if root is not None else None
                path = found[0] if found is not None else None
            rows.append(BuiltinDataset(name, split, filename, entry.embedded, entry.description, path))
    return rows


def _builtin_files(entry: _Entry, split: str) -> list[tuple[str, str | None]]:
    """The files that can hold a split, in order of preference, relative to the data directory:
    ``(npz, None)``, then ``(idx_images, idx_labels)`` gzipped and plain."""
    files: list[tuple[str, str | None]] = [(entry.splits[split], None)]
    images = entry.idx.get(split)
    if images is not None:
        for name in (images, images.removesuffix(".gz")):
            files.append((name, _idx_label_names(name)[0]))
    return files


def _find_builtin(root: Path, entry: _Entry, split: str) -> tuple[Path, Path | None] | None:
    """The first complete set of files of :func:`_builtin_files` present in ``root``."""
    for first, second in _builtin_files(entry, split):
        if (root / first).is_file() and (second is None or (root / second).is_file()):
            return root / first, (root / second if second is not None else None)
    return None


def _idx_label_names(images_name: str) -> list[str]:
    """Names of the labels file that goes with an IDX images file (same compression first)."""
    match = _IDX_IMAGES_NAME.match(images_name)
    if match is None:
        return []
    base = f"{match['stem']}-labels{match['sep']}idx1-ubyte"
    return [base + ".gz", base] if match["gz"] else [base, base + ".gz"]


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


def _check_options(scale: Any, resize: Any, dtype: Any) -> tuple[int, int] | None:
    """Validate the options shared by the loaders; return the parsed ``resize``."""
    _check_scale(scale)
    size = parse_size(resize) if resize is not None else None
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InvalidArgumentError(f"dtype must be a floating torch dtype such as torch.float32, got {dtype!r}.")
    return size


def _existing_file(path: str | PathLike[str], kind: str) -> Path:
    """``path`` as a :class:`Path`, checked to be a file (``kind`` names the expected format)."""
    shown = os.fspath(path)
    file = Path(shown)
    if not file.exists():
        raise DataFormatError(f"file not found: {shown!r}.")
    if file.is_dir():
        raise DataFormatError(f"{shown!r} is a directory, not {kind}.")
    return file


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


# ---------------------------------------------------------------------- the common tail
def _features(x_np: np.ndarray, *, scale: Any, size: tuple[int, int] | None, dtype: torch.dtype | None) -> torch.Tensor:
    """Float features from a numeric array: dtype conversion, optional resize, pixel scale.

    The dtype is ``dtype``, else the array's float dtype, else the default dtype. ``scale``
    is ``"auto"`` (``uint8`` divided by 255), ``None`` or a factor.
    """
    if x_np.dtype.kind == "f":
        source_dtype = torch.from_numpy(np.empty(0, dtype=x_np.dtype)).dtype
    else:
        source_dtype = None
    target = dtype or source_dtype or torch.get_default_dtype()
    itemsize = torch.finfo(target).bits // 8
    if size is not None and x_np.ndim >= 3:
        pixels = int(np.prod(x_np.shape[1:]))
        channels = 1 if x_np.ndim == 3 else (x_np.shape[-1] if x_np.shape[-1] <= 4 else x_np.shape[1])
        resized = size[0] * size[1] * channels
        # the float copy, the interpolated images and the scaled copy live at once
        check_memory(
            x_np.shape[0] * (pixels + 2 * resized) * itemsize,
            f"resizing {x_np.shape[0]} images of shape {tuple(x_np.shape[1:])} to {size[0]}x{size[1]}",
            "choose a smaller size.",
        )
    features = torch.from_numpy(np.ascontiguousarray(x_np)).to(dtype=target)
    if size is not None:
        features = _resize_images(features, size)
    factor = (1.0 / 255.0 if x_np.dtype == np.uint8 else None) if scale == "auto" else scale
    if factor is not None:
        features = features * float(factor)
    return features


def _to_dataset(
    features: torch.Tensor,
    labels: Any,
    *,
    shown: str,
    name: str,
    device: torch.device | str | None,
    classes: Sequence[Any] | None = None,
    weights: Any = None,
) -> LabeledDataset:
    """The :class:`LabeledDataset`, with errors prefixed by the file they come from."""
    try:
        return LabeledDataset(
            features, labels, weights=weights, classes=classes, dtype=features.dtype, device=device, name=name
        )
    except DatasetflowError as exc:
        raise type(exc)(f"{shown}: {exc}") from None


def _index_classes(y_np: np.ndarray, names: np.ndarray, shown: str, y_key: str) -> tuple[np.ndarray, list[Any]]:
    """Labels ``names[y]`` and the classes that have samples, for integer ``y`` indexing ``names``.

    Classes without samples are dropped with a :class:`DatasetflowWarning`.
    """
    if names.ndim != 1:
        raise DataFormatError(f"{shown}: 'classes' must have shape (K,), got {names.shape}.")
    if not np.issubdtype(y_np.dtype, np.integer):
        raise DataFormatError(
            f"{shown}: with 'classes' present, {y_key} must hold integer indices into it, got dtype {y_np.dtype}."
        )
    if y_np.size and (int(y_np.min()) < 0 or int(y_np.max()) >= len(names)):
        raise DataFormatError(
            f"{shown}: {y_key} must index 'classes' (values in 0..{len(names) - 1}), "
            f"got values in {int(y_np.min())}..{int(y_np.max())}."
        )
    used = np.bincount(y_np.astype(np.int64), minlength=len(names)) > 0
    if not used.all():
        warnings.warn(
            f"{shown}: classes {names[~used].tolist()} have no samples and are dropped.",
            DatasetflowWarning,
            stacklevel=3,
        )
    return names[y_np], names[used].tolist()  # names matched by value: no ambiguity when classes are ints


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
    size = _check_options(scale, resize, dtype)
    shown = os.fspath(path)
    file = _existing_file(path, "an .npz file")
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
        labels, classes = _index_classes(y_np, arrays["classes"], shown, "'y'")
    return _to_dataset(
        _features(x_np, scale=scale, size=size, dtype=dtype),
        labels,
        shown=shown,
        name=name if name is not None else file.stem,
        device=device,
        classes=classes,
        weights=arrays.get("weights"),
    )


# ---------------------------------------------------------------------- IDX files
def _describe_magic(magic: int) -> str:
    kind = _IDX_TYPES.get((magic >> 8) & 0xFF)
    if magic >> 16 == 0 and kind is not None:
        return f"IDX {kind} data with {magic & 0xFF} dimension(s)"
    return "not an IDX header"


def _read_idx(path: str | PathLike[str], magic: int, what: str) -> np.ndarray:
    """The ``uint8`` array of an IDX file (gzipped or not) whose magic number must be ``magic``.

    ``what`` names the expected content (``"images"`` or ``"labels"``) in error messages.
    """
    shown = os.fspath(path)
    file = _existing_file(path, f"an IDX {what} file")
    try:
        data = file.read_bytes()
        if data[:2] == b"\x1f\x8b":  # the gzip magic number
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(f"{shown}: cannot be read as a (gzipped) IDX {what} file ({exc}).") from None
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(data) < 4:
        raise DataFormatError(f"{shown}: truncated IDX {what} file: {len(data)} bytes, no 4-byte magic number.")
    found = int(np.frombuffer(data, dtype=">u4", count=1)[0])
    if found != magic:
        raise DataFormatError(
            f"{shown}: wrong magic number 0x{found:08X} ({_describe_magic(found)}); an IDX {what} file starts "
            f"with 0x{magic:08X} ({_describe_magic(magic)})."
        )
    if len(data) < header:
        raise DataFormatError(
            f"{shown}: truncated IDX {what} file: {len(data)} bytes, shorter than its {header}-byte header."
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if any(d == 0 for d in dims[1:]):
        raise DataFormatError(f"{shown}: IDX {what} file of shape {dims}: every dimension after the first must be > 0.")
    size = math.prod(dims)
    if len(data) - header != size:
        problem = "truncated" if len(data) - header < size else "corrupt"
        raise DataFormatError(
            f"{shown}: {problem} IDX {what} file: its header announces shape {dims}, that is {size} bytes of data, "
            f"but {len(data) - header} bytes follow the header."
        )
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=header).reshape(dims).copy()


def load_idx(
    images_path: str | PathLike[str],
    labels_path: str | PathLike[str],
    *,
    scale: str | float | None = "auto",
    resize: Any = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    name: str | None = None,
    classes: Sequence[Any] | None = None,
    transpose: bool | None = None,
) -> LabeledDataset:
    """Load a labeled image dataset from a pair of IDX files (the MNIST file format).

    The images file starts with the big-endian magic number ``0x00000803`` (``uint8``
    data, 3 dimensions) and the sizes ``n, H, W``, followed by ``n * H * W`` pixels; the
    labels file starts with ``0x00000801`` and ``n``, followed by ``n`` ``uint8`` labels.
    Either file may be gzipped (recognised by its content, whatever its name). The header
    is parsed with ``np.frombuffer``; nothing is unpickled.

    Args:
        images_path: the images file, e.g. ``t10k-images-idx3-ubyte.gz``.
        labels_path: the labels file, e.g. ``t10k-labels-idx1-ubyte.gz``.
        scale: ``"auto"`` (default: pixels divided by 255, in ``[0, 1]``), ``None`` (raw
            ``[0, 255]``) or a positive factor; see :func:`load_npz`.
        resize: optional image size ``(H, W)``, ``S`` or ``"HxW"``; see :func:`load_npz`.
        dtype: floating dtype of the features (default ``torch.get_default_dtype()``).
        device: torch device (default CPU).
        name: display name (default: the images file name up to ``-images``, e.g.
            ``"t10k"``).
        classes: optional ``(K,)`` class names; the labels ``0..K-1`` index into it (as
            ``y`` and ``classes`` of an ``.npz`` file). Default: the label values.
        transpose: swap the height and width of every image. EMNIST stores its images
            transposed; the default ``None`` transposes files whose name starts with
            ``emnist`` so that their characters stand upright.

    Returns:
        A :class:`LabeledDataset` of ``(H, W)`` (or resized) images.

    Raises:
        DataFormatError: naming the file, if it is missing, cannot be decompressed, has
            the wrong magic number, is truncated (or longer than its header says), if the
            image and label counts differ, or if the labels do not index ``classes``.
        InvalidArgumentError: for a bad ``scale``, ``resize`` or ``dtype``.
    """
    size = _check_options(scale, resize, dtype)
    x_np = _read_idx(images_path, _IDX_IMAGES_MAGIC, "images")
    y_np = _read_idx(labels_path, _IDX_LABELS_MAGIC, "labels")
    shown, shown_labels = os.fspath(images_path), os.fspath(labels_path)
    if len(x_np) != len(y_np):
        raise DataFormatError(
            f"{shown} holds {len(x_np)} images but {shown_labels} holds {len(y_np)} labels; "
            "the counts must match (are they from the same split?)."
        )
    file = Path(shown)
    if transpose is None:
        transpose = file.name.lower().startswith("emnist")
    if transpose:
        x_np = x_np.transpose(0, 2, 1)
    labels: Any = y_np
    if classes is not None:
        labels, classes = _index_classes(y_np, np.asarray(classes), shown_labels, "the labels")
    if name is None:
        match = _IDX_IMAGES_NAME.match(file.name)
        name = match["stem"] if match is not None else file.name.removesuffix(".gz")
    return _to_dataset(
        _features(x_np, scale=scale, size=size, dtype=dtype),
        labels,
        shown=shown,
        name=name,
        device=device,
        classes=classes,
    )


def _idx_labels_next_to(images: Path) -> Path:
    """The labels file next to an IDX images file (``-images-idx3`` becoming ``-labels-idx1``)."""
    names = _idx_label_names(images.name)
    for candidate in names:
        if (images.parent / candidate).is_file():
            return images.parent / candidate
    raise DataFormatError(
        f"{os.fspath(images)}: no IDX labels file next to it; tried {names} in {str(images.parent)!r}. "
        "Call load_idx(images_path, labels_path) to name it."
    )


# ---------------------------------------------------------------------- image folders
def _read_image(image_module: Any, path: Path, grayscale: bool | None) -> np.ndarray:
    """One image as ``uint8``: ``(H, W)`` when read as grayscale, else ``(H, W, 3)`` RGB."""
    try:
        with image_module.open(path) as image:
            if grayscale or (grayscale is None and image.mode in ("1", "L", "LA", "I", "I;16", "F")):
                return np.asarray(image.convert("L"), dtype=np.uint8)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise DataFormatError(f"{os.fspath(path)}: cannot be read as an image ({exc}).") from None


def load_image_folder(
    root: str | PathLike[str],
    *,
    resize: Any = None,
    grayscale: bool | None = None,
    scale: str | float | None = "auto",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    name: str | None = None,
) -> LabeledDataset:
    """Load a labeled image dataset from a folder holding one sub-folder per class.

    Layout: ``root/<class name>/<image>``; the class names are the sub-folder names, in
    sorted order. Image files (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``, any
    case) are collected from each class sub-folder and its sub-folders, in sorted path
    order; other files and hidden entries (names starting with ``.``) are ignored. Images
    are read with Pillow as 8-bit pixels (the first frame of an animation; alpha is
    dropped).

    Args:
        root: the folder.
        resize: image size ``(H, W)``, ``S`` or ``"HxW"``; needed when the images differ
            in size (each is resized bilinearly, antialiased when shrinking).
        grayscale: ``True`` reads every image as grayscale ``(H, W)``, ``False`` as RGB
            ``(H, W, 3)``; ``None`` (default) gives grayscale when every image is gray (a
            grayscale mode, or colour channels that are all equal), else RGB.
        scale: ``"auto"`` (default: pixels in ``[0, 1]``), ``None`` or a factor; see
            :func:`load_npz`.
        dtype: floating dtype of the features (default ``torch.get_default_dtype()``).
        device: torch device (default CPU).
        name: display name (default: the folder's name).

    Returns:
        A :class:`LabeledDataset` of ``(H, W)`` or ``(H, W, 3)`` images (channels last).
        Sub-folders without images are skipped with a :class:`DatasetflowWarning`.

    Raises:
        DataFormatError: if ``root`` is not a directory, holds no class sub-folders or no
            images, if an image cannot be read, or if Pillow is not installed.
        ShapeMismatchError: if the images differ in size and ``resize`` is not given.
        InvalidArgumentError: for a bad ``grayscale``, ``scale``, ``resize`` or ``dtype``.
    """
    size = _check_options(scale, resize, dtype)
    if grayscale is not None and not isinstance(grayscale, bool):
        raise InvalidArgumentError(f"grayscale must be True, False or None, got {grayscale!r}.")
    shown = os.fspath(root)
    folder = Path(shown)
    if not folder.is_dir():
        raise DataFormatError(f"{shown!r} is not a directory" + (": file not found." if not folder.exists() else "."))
    try:
        from PIL import Image
    except ImportError:
        raise DataFormatError(
            "reading image folders needs Pillow, which is not installed: pip install pillow "
            "(or pip install 'datasetflow[images]')."
        ) from None

    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[str] = []
    empty = []
    for class_dir in class_dirs:
        found = sorted(
            p
            for p in class_dir.rglob("*")
            if p.suffix.lower() in _IMAGE_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
        )
        if not found:
            empty.append(class_dir.name)
        files.extend(found)
        labels.extend([class_dir.name] * len(found))
    if not files:
        raise DataFormatError(
            f"{shown}: no images found; expected one sub-folder per class holding {', '.join(_IMAGE_SUFFIXES)} "
            f"files, found {len(class_dirs)} sub-folder(s){f' {[p.name for p in class_dirs]}' if class_dirs else ''}."
        )
    if empty:
        warnings.warn(f"{shown}: sub-folders {empty} hold no images and are skipped.", DatasetflowWarning, stacklevel=2)

    images = [_read_image(Image, path, grayscale) for path in files]
    if grayscale is None and any(a.ndim == 3 for a in images):
        if all(
            a.ndim == 2 or (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]))
            for a in images
        ):
            images = [a if a.ndim == 2 else np.ascontiguousarray(a[..., 0]) for a in images]
        else:
            images = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in images]

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    if len(groups) > 1 and size is None:
        examples = ", ".join(f"{s[0]}x{s[1]} ({os.fspath(files[idx[0]])})" for s, idx in list(groups.items())[:4])
        raise ShapeMismatchError(
            f"{shown}: the images differ in size ({len(groups)} sizes, e.g. {examples}); pass resize=(H, W) "
            "(CLI: --resize HxW) to bring them to one size."
        )
    batches = [np.stack([images[i] for i in idx]) for idx in groups.values()]
    parts = [_features(batch, scale=scale, size=size, dtype=dtype) for batch in batches]
    order = np.argsort(np.fromiter((i for idx in groups.values() for i in idx), dtype=np.int64))
    features = torch.cat(parts)[torch.from_numpy(order)] if len(parts) > 1 else parts[0]
    return _to_dataset(
        features,
        labels,
        shown=shown,
        name=name if name is not None else folder.resolve().name,
        device=device,
        classes=sorted(set(labels)),
    )


def _split_name(name: str, split: str) -> tuple[str, str]:
    key = name.strip().lower().replace("_", "-")
    if ":" in key:
        key, split = key.split(":", 1)
    return _ALIASES.get(key, key), split


def _is_path(name_or_path: Any) -> bool:
    """Paths: PathLike objects, strings ending in .npz, naming an IDX images file or holding a
    separator, and existing files or directories whose name is not a built-in dataset name."""
    if isinstance(name_or_path, PathLike):
        return True
    if not isinstance(name_or_path, str):
        return False
    text = name_or_path
    if text.lower().endswith(".npz") or _IDX_IMAGES_NAME.match(text) or os.sep in text or "/" in text:
        return True
    return _split_name(text, "test")[0] not in _REGISTRY and os.path.exists(text)


def _load_path(path: str | PathLike[str], **options: Any) -> LabeledDataset:
    """A directory with :func:`load_image_folder`, an IDX images file with :func:`load_idx`
    (its labels file found next to it), anything else with :func:`load_npz`."""
    file = Path(os.fspath(path))
    if file.is_dir():
        return load_image_folder(file, **options)
    if _IDX_IMAGES_NAME.match(file.name):
        labels = _idx_labels_next_to(_existing_file(path, "an IDX images file"))
        return load_idx(path, labels, **options)
    return load_npz(path, **options)


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
    """Load a dataset by built-in name or from a path (``.npz`` file, IDX file or image folder).

    Names (case-insensitive, see :func:`list_builtin_datasets`): ``mnist``,
    ``fashion-mnist``, ``kmnist``, ``emnist`` (its balanced split), ``usps``, ``cifar10``
    are read from the data directory (the ``data_dir`` argument, else
    ``$DATASETFLOW_DATA_DIR``, else ``../shared/data`` relative to the working directory)
    as ``<name>_<split>.npz`` (e.g. ``fashion_mnist_test.npz``); when that file is missing,
    ``mnist``, ``fashion-mnist``, ``kmnist`` and ``emnist`` are read from their original IDX
    files in a sub-folder of the data directory (e.g. ``kmnist/t10k-images-idx3-ubyte.gz``
    and ``kmnist/t10k-labels-idx1-ubyte.gz``; see the module documentation). ``mnist-mini``,
    ``fashion-mnist-mini`` and ``usps-mini`` ship with the package and need no data
    directory. A split may also be given in the name, as ``"usps:train"``.

    Paths (anything ending in ``.npz``, naming an IDX images file or containing a path
    separator, and existing files or directories that are not built-in names):

    * a directory is read with :func:`load_image_folder` (one sub-folder per class);
    * ``<stem>-images-idx3-ubyte`` (``.gz`` or not) is read with :func:`load_idx`, with
      the labels file ``<stem>-labels-idx1-ubyte[.gz]`` next to it;
    * anything else is read with :func:`load_npz`.

    Args:
        name_or_path: a built-in name or a path.
        data_dir: directory holding the full datasets.
        split: ``"test"`` (default) or ``"train"`` (not for ``cifar10`` and the embedded
            subsets).
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
        DataFormatError: if the data directory or the files cannot be found (the message
            lists every file name tried) or read.
    """
    options: dict[str, Any] = {"scale": scale, "resize": resize, "dtype": dtype, "device": device, "name": name}
    if _is_path(name_or_path):
        return _load_path(name_or_path, **options)
    if not isinstance(name_or_path, str):
        raise InvalidArgumentError(
            f"name_or_path must be a built-in name or a path to an .npz file, IDX file or image folder, "
            f"got {type(name_or_path).__name__}."
        )
    key, split = _split_name(name_or_path, split)
    if key not in _REGISTRY:
        raise InvalidArgumentError(
            f"unknown dataset {name_or_path!r}; valid names are {list(_REGISTRY)}, or give a path to an .npz file, "
            "an IDX images file or an image folder."
        )
    entry = _REGISTRY[key]
    if split not in entry.splits:
        raise InvalidArgumentError(f"dataset {key!r} has no split {split!r}; valid splits are {list(entry.splits)}.")
    filename = entry.splits[split]
    options["name"] = name if name is not None else (key if split == "test" else f"{key}:{split}")
    if entry.embedded:
        path = _embedded_path(filename)
        if not path.is_file():
            raise DataFormatError(
                f"the embedded dataset file {filename!r} is missing from the installed package; reinstall datasetflow."
            )
        return load_npz(path, **options)
    root = resolve_data_dir(data_dir)
    embedded = [n for n, e in _REGISTRY.items() if e.embedded]
    files = _builtin_files(entry, split)
    wanted = ", or ".join(repr(a) if b is None else f"{a!r} with {b!r}" for a, b in files)
    if root is None:
        raise DataFormatError(
            f"dataset {key!r} needs a data directory holding {wanted}, and none was found: pass "
            f"data_dir (CLI: --data-dir), set the environment variable {DATA_DIR_ENV}, or use an embedded "
            f"dataset that needs no files: {embedded}."
        )
    found = _find_builtin(root, entry, split)
    if found is None:
        raise DataFormatError(
            f"dataset {key!r} (split {split!r}) expects {wanted} in the data directory {str(root)!r}, which "
            f"{'does not hold it' if len(files) == 1 else 'holds none of them'}; pass data_dir (CLI: --data-dir) "
            f"or set {DATA_DIR_ENV} to a directory that does, or use an embedded dataset: {embedded}."
        )
    path, labels = found
    if labels is None:
        return load_npz(path, **options)
    return load_idx(path, labels, classes=entry.classes, transpose=entry.transposed, **options)
