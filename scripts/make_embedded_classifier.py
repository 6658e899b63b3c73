"""Train the MNIST classifier shipped with the package (``src/datasetflow/models/weights``).

The classifier is the frozen model of every image experiment (``experiments/_images.py``) and of the
``datasetflow repurpose`` command: an ensemble of ``MEMBERS`` LeNet-5s, each trained with its own seed
on the stratified half of the MNIST *test* split that excludes the embedded ``mnist-mini`` images
(``mnist_split()[0]``, 4,999 images), with random affine augmentation (rotation up to 10 degrees,
scale 0.9-1.1, shear 0.15, translation 10 %), a one-cycle learning-rate schedule and ``EPOCHS``
epochs. The ensemble averages the members' probabilities (``datasetflow.models.Ensemble``).

Writes, in ``src/datasetflow/models/weights``:

* ``mnist_lenet5_ensemble.pt``: one state dict (keys ``members.<r>.<LeNet5 key>``, float32), read back
  with ``torch.load(..., weights_only=True)``;
* ``provenance.json`` and ``PROVENANCE.md``: seeds, data split, settings, the held-out accuracy of every
  member and of the ensemble on the other half (5,001 images), the training time and the file's sha256.

Usage, from the repository root (about 2 minutes per member on one thread)::

    nice -n 5 python scripts/make_embedded_classifier.py
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments"))

from _images import mnist_split  # noqa: E402

from datasetflow.models import Ensemble, FrozenClassifier, LeNet5, accuracy, train_classifier  # noqa: E402
from datasetflow.models.lenet import PROVENANCE_FILE, WEIGHTS_FILE  # noqa: E402
from datasetflow.utils import seeded  # noqa: E402

OUT = REPO / "src" / "datasetflow" / "models" / "weights"
SEEDS = (0, 1, 2)
EPOCHS, LR, WEIGHT_DECAY, BATCH = 60, 3e-3, 5e-4, 64
THREADS = 1


def main() -> int:
    """Train the members, write the ensemble's weights and its provenance."""
    torch.set_num_threads(THREADS)
    train, held = mnist_split()
    members, member_accuracy, seconds = [], [], []
    for seed in SEEDS:
        start = time.perf_counter()
        with seeded(seed, torch.device("cpu")):
            model = LeNet5(num_classes=10)
        model, _ = train_classifier(
            train,
            model=model,
            epochs=EPOCHS,
            batch_size=BATCH,
            lr=LR,
            weight_decay=WEIGHT_DECAY,
            seed=seed,
            augment="affine",
            schedule="onecycle",
        )
        seconds.append(time.perf_counter() - start)
        member_accuracy.append(accuracy(FrozenClassifier(model), held))
        members.append(model)
        print(f"member seed {seed}: held-out accuracy {100 * member_accuracy[-1]:.2f}% ({seconds[-1]:.0f} s)")
    ensemble = FrozenClassifier(Ensemble(members))
    ensemble_accuracy = accuracy(ensemble, held)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / WEIGHTS_FILE
    state = {k: v.detach().cpu().float().contiguous() for k, v in ensemble.model.state_dict().items()}
    torch.save(state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    provenance = {
        "file": WEIGHTS_FILE,
        "sha256": digest,
        "size_bytes": path.stat().st_size,
        "architecture": f"Ensemble of {len(SEEDS)} LeNet-5 (mean of the members' probabilities)",
        "seeds": list(SEEDS),
        "train_set": f"MNIST test split, stratified half ({len(train)} images)",
        "split": "mnist_test.npz halved per class with numpy.random.default_rng(1), excluding the 500 embedded "
        "mnist-mini images (experiments/_images.py: mnist_split)",
        "heldout_set": f"the other half ({len(held)} images)",
        "settings": {
            "optimizer": "adam",
            "lr_max": LR,
            "weight_decay": WEIGHT_DECAY,
            "batch_size": BATCH,
            "epochs": EPOCHS,
            "schedule": "onecycle (OneCycleLR, 30 % warm-up, cosine annealing)",
            "augment": "affine (rotation <= 10 deg, scale 0.9-1.1, shear <= 0.15, translation <= 10 %)",
            "threads": THREADS,
        },
        "member_heldout_accuracy": member_accuracy,
        "heldout_accuracy": ensemble_accuracy,
        "train_seconds": seconds,
        "torch": torch.__version__,
    }
    (OUT / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    members_text = ", ".join(f"{100 * a:.2f}%" for a in member_accuracy)
    (OUT / "PROVENANCE.md").write_text(
        "# Embedded classifier — provenance\n\n"
        f"`{WEIGHTS_FILE}`: the state dict of `datasetflow.models.Ensemble` of {len(SEEDS)}\n"
        "`datasetflow.models.LeNet5(num_classes=10)` (float32, keys `members.<r>.<LeNet5 key>`), loaded by\n"
        "`datasetflow.models.pretrained_mnist_lenet5()` with `torch.load(..., weights_only=True)`. Output `j` is\n"
        'the MNIST class `"j"` (log of the mean of the members\' probabilities); inputs are 28x28 grayscale\n'
        "images in [0, 1], flattened to 784 features. `provenance.json` holds the same facts.\n\n"
        f"- Training data: {len(train)} images, the stratified half of the MNIST test split (`mnist_test.npz`,\n"
        "  see `../../data/embedded/PROVENANCE.md` for its source and licence) drawn with\n"
        "  `numpy.random.default_rng(1)`; it excludes the 500 images of the embedded `mnist-mini` subset.\n"
        f"- Settings: Adam, one-cycle schedule peaking at lr {LR:g}, weight decay {WEIGHT_DECAY:g}, batch {BATCH},\n"
        f"  {EPOCHS} epochs, random affine augmentation (rotation up to 10 degrees, scale 0.9-1.1, shear 0.15,\n"
        f"  translation 10 %), member seeds {list(SEEDS)} (`scripts/make_embedded_classifier.py`).\n"
        f"- Accuracy on the other half ({len(held)} images): ensemble {100 * ensemble_accuracy:.2f}%; members\n"
        f"  {members_text}.\n"
        f"- sha256 of `{WEIGHTS_FILE}`: `{digest}`.\n\n"
        "Regenerate with `python scripts/make_embedded_classifier.py` (needs `../shared/data`).\n"
    )
    print(
        f"wrote {path.relative_to(REPO)} ({path.stat().st_size / 1024:.0f} KB), ensemble held-out accuracy "
        f"{100 * ensemble_accuracy:.2f}% (members {members_text})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
