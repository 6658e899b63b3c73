"""Write the two small 2-D labeled datasets used by ``examples/flow_2d.yaml``.

Usage (from the repository root)::

    python examples/make_2d_example.py            # writes examples/data/blobs_{source,target}.npz
    python examples/make_2d_example.py OUT_DIR    # writes them to OUT_DIR instead

Source: two Gaussian classes ``a`` and ``b`` (40 points each) side by side on the x-axis.
Target: three classes ``0``, ``1`` and ``2`` (30 points each) on a circle of radius 3 above
them, with different spreads. The files follow the ``.npz`` convention of
:func:`datasetflow.data.load_npz`: ``x`` (n, 2), ``y`` integer indices into ``classes``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def make(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``blobs_source.npz`` and ``blobs_target.npz`` into ``out_dir``; returns their paths."""
    rng = np.random.default_rng(seed)
    source_x = np.concatenate(
        [
            rng.normal([-2.0, -1.0], [0.5, 0.8], size=(40, 2)),
            rng.normal([2.0, -1.0], [0.8, 0.5], size=(40, 2)),
        ]
    )
    source_y = np.repeat([0, 1], 40)
    angles = np.deg2rad([150.0, 90.0, 30.0])
    centers = 3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    spreads = [0.3, 0.6, 0.4]
    target_x = np.concatenate([rng.normal(c, s, size=(30, 2)) for c, s in zip(centers, spreads, strict=True)])
    target_y = np.repeat([0, 1, 2], 30)
    out_dir.mkdir(parents=True, exist_ok=True)
    source, target = out_dir / "blobs_source.npz", out_dir / "blobs_target.npz"
    np.savez(source, x=source_x.astype(np.float32), y=source_y, classes=np.array(["a", "b"]))
    np.savez(target, x=target_x.astype(np.float32), y=target_y, classes=np.array(["0", "1", "2"]))
    return source, target


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "data"
    for path in make(out):
        print(f"wrote {path}")
