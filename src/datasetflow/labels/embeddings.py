r"""Embeddings that unlabeled images are clustered in (pseudo-labels, paper §6.3 and App. C).

Each stage maps ``(n, d)`` features to ``(n, e)``; :func:`~datasetflow.labels.pseudo.embed` chains them
(``"hog+umap"``). None of them downloads anything: HOG is a fixed descriptor, the autoencoder is
trained on the unlabeled samples themselves, UMAP and PCA are fitted on them.

* :func:`hog_features`: histograms of oriented gradients (Dalal & Triggs 2005), ``scikit-image``
  (``pip install 'datasetflow[hog]'``).
* :func:`autoencoder_codes`: the bottleneck of a small convolutional autoencoder trained on the
  samples by mean squared reconstruction error (seeded).
* :func:`umap_embedding`: UMAP (McInnes et al. 2018), ``umap-learn`` (``pip install 'datasetflow[umap]'``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ShapeMismatchError
from ..utils import check_positive_int, missing_extra, seeded

__all__ = ["hog_features", "autoencoder_codes", "umap_embedding"]


def _images(x: torch.Tensor, feature_shape: Sequence[int]) -> torch.Tensor:
    """``(n, d)`` features as ``(n, 1, H, W)`` grayscale images."""
    shape = tuple(int(s) for s in feature_shape)
    if len(shape) != 2 or shape[0] * shape[1] != x.shape[1]:
        raise ShapeMismatchError(
            f"this embedding needs grayscale images: feature_shape (H, W) with H*W = d, got feature_shape {shape} "
            f"for features of shape {tuple(x.shape)}."
        )
    return x.reshape(-1, 1, *shape)


def hog_features(
    x: torch.Tensor,
    feature_shape: Sequence[int],
    *,
    orientations: int = 9,
    cell: int = 4,
    block: int = 2,
) -> torch.Tensor:
    r"""HOG descriptors of grayscale images: ``(n, H*W)`` → ``(n, e)``.

    ``skimage.feature.hog`` with ``orientations`` unsigned gradient bins per ``cell x cell`` cell and
    L2-Hys normalisation over ``block x block`` cells; for 28x28 images and the defaults,
    :math:`e = 6 \cdot 6 \cdot 2 \cdot 2 \cdot 9 = 1296`. Returned on ``x``'s device and dtype.
    """
    images = _images(x, feature_shape)
    try:
        from skimage.feature import hog
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_extra("embedding='hog'", "scikit-image", "hog") from exc
    pixels = images[:, 0].detach().cpu().double().numpy()
    out = np.stack(
        [
            hog(image, orientations=orientations, pixels_per_cell=(cell, cell), cells_per_block=(block, block))
            for image in pixels
        ]
    )
    return torch.as_tensor(out, dtype=x.dtype, device=x.device)


class _AutoEncoder(nn.Module):
    """conv(16, stride 2) → conv(32, stride 2) → linear(code) and the mirror decoder (sigmoid output)."""

    def __init__(self, height: int, width: int, code: int) -> None:
        super().__init__()
        self.side = (-(-height // 4), -(-width // 4))
        flat = 32 * self.side[0] * self.side[1]
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, code),
        )
        self.decoder = nn.Sequential(
            nn.Linear(code, flat),
            nn.ReLU(),
            nn.Unflatten(1, (32, *self.side)),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1),
        )
        self.shape = (height, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = self.decoder(self.encoder(images))
        return torch.sigmoid(out[:, :, : self.shape[0], : self.shape[1]])


def autoencoder_codes(
    x: torch.Tensor,
    feature_shape: Sequence[int],
    *,
    code: int = 32,
    epochs: int = 40,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> torch.Tensor:
    r"""Codes ``(n, code)`` of a convolutional autoencoder trained on the images ``x`` themselves.

    .. math:: \min_{\phi,\psi} \frac1n \sum_i \|\psi(\phi(x_i)) - x_i\|^2, \qquad e(x) = \phi(x)

    Adam with a one-cycle schedule peaking at ``lr``, ``epochs`` passes over the ``n`` samples in
    seeded random order; initialisation and order come from ``seed``. Trained on ``x``'s device in
    float32; codes are returned detached in ``x``'s dtype. Pixels are expected in ``[0, 1]``.
    """
    check_positive_int("code", code)
    check_positive_int("epochs", epochs)
    images = _images(x, feature_shape).detach().float()
    generator = torch.Generator().manual_seed(seed)
    with seeded(seed, images.device):
        model = _AutoEncoder(*images.shape[2:], code).to(images.device)
    n = images.shape[0]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = -(-n // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(images.device)
        for start in range(0, n, batch_size):
            batch = images[order[start : start + batch_size]]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(batch), batch)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        return model.encoder(images).to(x.dtype)


def umap_embedding(
    x: torch.Tensor, *, n_components: int = 10, n_neighbors: int = 15, min_dist: float = 0.0, seed: int = 0
) -> torch.Tensor:
    r"""UMAP of ``(n, d)`` features to ``(n, n_components)`` (``umap.UMAP``, seeded, hence single-threaded).

    ``min_dist=0`` packs neighbours tightly, the setting recommended for clustering.
    """
    check_positive_int("n_components", n_components)
    try:
        import umap
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_extra("embedding='umap'", "umap-learn", "umap") from exc
    points = x.detach().cpu().double().numpy()
    reducer = umap.UMAP(
        n_components=min(n_components, max(1, x.shape[0] - 2)),
        n_neighbors=min(n_neighbors, x.shape[0] - 1),
        min_dist=min_dist,
        random_state=seed,
    )
    return torch.as_tensor(reducer.fit_transform(points), dtype=x.dtype, device=x.device)
