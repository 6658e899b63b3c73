"""Labeled datasets, their class statistics, and loaders for files and built-in datasets.

``load_dataset("mnist-mini")`` works anywhere (the subset ships with the package);
``load_dataset("mnist")`` reads ``mnist_test.npz`` (else the IDX files in ``mnist/``) from the
data directory (argument ``data_dir``, else ``$DATASETFLOW_DATA_DIR``, else
``../shared/data``). ``load_dataset`` also reads paths: ``.npz`` files (:func:`load_npz`),
IDX files (:func:`load_idx`) and folders of images, one sub-folder per class
(:func:`load_image_folder`).
"""

from .dataset import ClassStats, LabeledDataset
from .loaders import (
    DATA_DIR_ENV,
    BuiltinDataset,
    describe_builtin_datasets,
    list_builtin_datasets,
    load_dataset,
    load_idx,
    load_image_folder,
    load_npz,
    parse_size,
    resolve_data_dir,
)
from .synthetic import gaussian_mixture, swiss_roll

__all__ = [
    "LabeledDataset",
    "ClassStats",
    "load_npz",
    "load_idx",
    "load_image_folder",
    "load_dataset",
    "list_builtin_datasets",
    "describe_builtin_datasets",
    "resolve_data_dir",
    "parse_size",
    "BuiltinDataset",
    "DATA_DIR_ENV",
    "gaussian_mixture",
    "swiss_roll",
]
