"""Labeled datasets, their class statistics, and loaders for files and built-in datasets.

``load_dataset("mnist-mini")`` works anywhere (the subset ships with the package);
``load_dataset("mnist")`` reads ``mnist_test.npz`` (else the IDX files in ``mnist/``) from the
data directory (argument ``data_dir``, else ``$DATASETFLOW_DATA_DIR``, else
``../shared/data``). ``load_dataset`` also reads paths: ``.npz`` files (:func:`load_npz`),
IDX files (:func:`load_idx`) and folders of images, one sub-folder per class
(:func:`load_image_folder`).
"""

from . import dataset, loaders, sharding, synthetic
from .dataset import *  # noqa: F403
from .loaders import *  # noqa: F403
from .sharding import *  # noqa: F403
from .synthetic import *  # noqa: F403

__all__ = [*dataset.__all__, *loaders.__all__, *sharding.__all__, *synthetic.__all__]
