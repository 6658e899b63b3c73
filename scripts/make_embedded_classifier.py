"""Train the MNIST LeNet-5 shipped with the package (``src/datasetflow/models/weights``).

The classifier is the frozen model of the image experiments (``experiments/_images.py``): LeNet-5
trained on the stratified half of the MNIST *test* split that excludes the embedded ``mnist-mini``
images (seeded; Adam, lr 2e-3, weight decay 1e-4, 30 epochs, random 2-pixel translations). The
weights are written as a state dict (read back with ``torch.load(..., weights_only=True)``), and
``PROVENANCE.md`` beside them records the data, the settings and the held-out accuracy.

Usage, from the repository root::

    python scripts/make_embedded_classifier.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments"))

from _images import (  # noqa: E402
    CLASSIFIER_EPOCHS,
    CLASSIFIER_LR,
    CLASSIFIER_WEIGHT_DECAY,
    mnist_classifier,
    mnist_split,
)

OUT = REPO / "src" / "datasetflow" / "models" / "weights"


def main() -> int:
    """Train (or reuse the experiments' cached) classifier and copy its weights into the package."""
    torch.set_num_threads(2)
    frozen, info = mnist_classifier()
    train, held = mnist_split()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "mnist_lenet5.pt"
    state = {k: v.detach().cpu().float().contiguous() for k, v in frozen.model.state_dict().items()}
    torch.save(state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (OUT / "PROVENANCE.md").write_text(
        "# Embedded classifier — provenance\n\n"
        "`mnist_lenet5.pt`: the state dict of `datasetflow.models.LeNet5(num_classes=10)` (float32), loaded by\n"
        "`datasetflow.models.pretrained_mnist_lenet5()` with `torch.load(..., weights_only=True)`. Output `j` is\n"
        'the MNIST class `"j"`; inputs are 28x28 grayscale images in [0, 1], flattened to 784 features.\n\n'
        f"- Training data: {len(train)} images, the stratified half of the MNIST test split (`mnist_test.npz`,\n"
        "  see `../../data/embedded/PROVENANCE.md` for its source and licence) drawn with\n"
        "  `numpy.random.default_rng(1)`; it excludes the 500 images of the embedded `mnist-mini` subset.\n"
        f"- Settings: Adam, lr {CLASSIFIER_LR:g}, weight decay {CLASSIFIER_WEIGHT_DECAY:g}, batch 64, "
        f"{CLASSIFIER_EPOCHS} epochs, random 2-pixel\n"
        "  translations, seed 0 (`experiments/_images.py: mnist_classifier`).\n"
        f"- Accuracy on the other half ({len(held)} images): {100 * info['heldout_accuracy']:.2f}%.\n"
        f"- sha256 of `mnist_lenet5.pt`: `{digest}`.\n\n"
        "Regenerate with `python scripts/make_embedded_classifier.py` (needs `../shared/data`).\n"
    )
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size / 1024:.0f} KB), held-out accuracy "
          f"{100 * info['heldout_accuracy']:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
