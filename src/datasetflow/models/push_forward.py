r"""The learned push-forward map :math:`\hat h \approx h_\text{flow}: x_0 \mapsto x_T` (paper §6.3, §7.2, App. C).

"The action of the flow :math:`h_\text{flow}: x_0 \mapsto x_T` can be parametrized (e.g. with a
neural network) and learnt by fitting :math:`\{x^i\}_{i\in\mathcal L}` to :math:`\{x^i_T\}_{i\in\mathcal L}`.
This learnt mapping :math:`\hat h` can then be used to flow the unlabeled samples." (§6.3)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.dataset import LabeledDataset, features_of
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..flows.result import FlowResult
from ..utils import batched, check_choice, check_positive_float, check_positive_int, seeded
from ._utils import (
    from_images,
    image_layout,
    make_optimizer,
    resolve_device,
    to_images,
    train_epochs,
)

__all__ = ["PushForwardMap", "ARCHITECTURES"]

ARCHITECTURES = ("mlp", "conv")


class _ConvAutoencoder(nn.Module):
    """Images through 2 stride-2 convolutions, a fully-connected bottleneck and the mirrored decoder."""

    def __init__(self, feature_shape: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.chw, self.channels_last = image_layout(feature_shape)
        channels, height, width = self.chw
        half = (-(-height // 2), -(-width // 2))
        quarter = (-(-half[0] // 2), -(-half[1] // 2))
        flat = 32 * quarter[0] * quarter[1]
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
        )
        self.decoder = nn.Sequential(
            nn.SiLU(),
            nn.Linear(hidden, flat),
            nn.SiLU(),
            nn.Unflatten(1, (32, *quarter)),
            nn.Upsample(size=half),
            nn.Conv2d(32, 16, 3, padding=1),
            nn.SiLU(),
            nn.Upsample(size=(height, width)),
            nn.Conv2d(16, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        images = to_images(x, self.chw, self.channels_last)
        return from_images(self.decoder(self.encoder(images)), self.channels_last)


def _mlp(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim)
    )


def _as_pair(x0: Any, xT: Any) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """``(x0, xT, feature_shape)`` from two datasets / tensors, a pair, or a recorded FlowResult."""
    if xT is None:
        if isinstance(x0, FlowResult):
            trajectory = x0.trajectory
            if trajectory is None or not trajectory.steps or trajectory.steps[0] != 0:
                raise InvalidArgumentError(
                    "a FlowResult gives x0 only if its trajectory recorded step 0; "
                    "call fit(initial_dataset, result.final) instead."
                )
            x0, xT = trajectory.record(0)[0].to(x0.final.x.device), x0.final
        elif isinstance(x0, (tuple, list)) and len(x0) == 2:
            x0, xT = x0
        else:
            raise InvalidArgumentError(
                "fit needs (x0, xT): two (n, d) tensors or LabeledDatasets, a pair of them, or a FlowResult "
                f"with a recorded trajectory; got x0 of type {type(x0).__name__} and no xT."
            )
    start, shape0 = features_of(x0, "x0")
    end, shape1 = features_of(xT, "xT")
    if start.shape != end.shape:
        raise ShapeMismatchError(
            f"x0 and xT must have the same shape (particle i of x0 flows to particle i of xT), "
            f"got {tuple(start.shape)} and {tuple(end.shape)}."
        )
    feature_shape = shape0 if isinstance(x0, LabeledDataset) or not isinstance(xT, LabeledDataset) else shape1
    return start.detach(), end.detach().to(start.device), feature_shape


class PushForwardMap:
    r"""A neural network :math:`\hat h` fitted to a flow's action :math:`x_0 \mapsto x_T` by least squares.

    .. math:: \min_\theta\ \frac1n \sum_{i=1}^n \big\| \hat h_\theta(x_0^i) - x_T^i \big\|^2,
              \qquad \hat h_\theta(x) = x + \mu_\text{out}
              + s_\text{out}\, g_\theta\big((x - \mu_\text{in}) / s_\text{in}\big)

    (residual form; without ``residual`` the leading ``x`` is dropped). With ``standardize`` the
    network sees inputs centred by their mean :math:`\mu_\text{in}` ``(d,)`` and divided by their
    overall standard deviation :math:`s_\text{in}`, and predicts the (residual) targets likewise
    normalised; otherwise :math:`\mu = 0, s = 1`. Trained with Adam on minibatches.

    Follows scikit-learn's conventions: ``__init__`` stores the settings, :meth:`fit` validates
    them and returns ``self``; fitted attributes end in ``_``.

    Args:
        architecture: ``"mlp"`` (``d → hidden → hidden → d``, SiLU; default), ``"conv"`` (images:
            2 stride-2 convolutions, a ``hidden``-wide fully-connected bottleneck and the mirrored
            decoder, after App. C's autoencoder) or an ``nn.Module`` mapping ``(b, d)`` to ``(b, d)``
            (trained in place).
        hidden: width of the hidden / bottleneck layers.
        residual: learn :math:`x_T - x_0` (the displacement) rather than :math:`x_T` (default True).
        epochs, lr, batch_size, weight_decay: Adam training (App. C: 20 epochs, lr 1e-3 for images).
        standardize: normalise inputs and targets (default True).
        seed: seeds the initialisation and the batch order.
        device: where to train and evaluate; default the device of ``x0``.
        progress: show a ``tqdm`` bar over epochs (needs tqdm).

    Attributes:
        module_: the trained network :math:`g_\theta`.
        history_: mean (normalised) squared error of every epoch.
        dim_, feature_shape_: the feature dimension and sample shape seen in :meth:`fit`.
    """

    def __init__(
        self,
        architecture: str | nn.Module = "mlp",
        *,
        hidden: int = 256,
        residual: bool = True,
        epochs: int = 200,
        lr: float = 1e-3,
        batch_size: int = 128,
        weight_decay: float = 0.0,
        standardize: bool = True,
        seed: int = 0,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> None:
        self.architecture = architecture
        self.hidden = hidden
        self.residual = residual
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.standardize = standardize
        self.seed = seed
        self.device = device
        self.progress = progress

    def __repr__(self) -> str:
        arch = self.architecture if isinstance(self.architecture, str) else type(self.architecture).__name__
        return f"PushForwardMap({arch!r}, hidden={self.hidden}, residual={self.residual}, epochs={self.epochs})"

    def _build(self, feature_shape: tuple[int, ...], dim: int) -> nn.Module:
        if isinstance(self.architecture, nn.Module):
            return self.architecture
        check_choice("architecture", self.architecture, ARCHITECTURES)
        check_positive_int("hidden", self.hidden)
        if self.architecture == "conv":
            return _ConvAutoencoder(feature_shape, self.hidden)
        return _mlp(dim, self.hidden)

    def fit(self, x0: Any, xT: Any = None) -> PushForwardMap:
        """Fit :math:`\\hat h(x_0^i) \\approx x_T^i`.

        Args:
            x0: ``(n, d)`` initial particles (tensor or :class:`LabeledDataset`; images use its
                ``feature_shape``), or a pair ``(initial, final)``, or a
                :class:`~datasetflow.flows.FlowResult` whose trajectory recorded step 0.
            xT: ``(n, d)`` final particles in the same order (``result.final`` of the flow).

        Returns:
            ``self``.
        """
        start, end, feature_shape = _as_pair(x0, xT)
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive_float("lr", self.lr)
        device = resolve_device(self.device, start)
        dtype = start.dtype if start.is_floating_point() else torch.get_default_dtype()
        start, end = start.to(device=device, dtype=dtype), end.to(device=device, dtype=dtype)
        target = end - start if self.residual else end
        self.input_mean_, self.input_scale_ = self._moments(start)
        self.output_mean_, self.output_scale_ = self._moments(target)
        inputs = (start - self.input_mean_) / self.input_scale_
        outputs = (target - self.output_mean_) / self.output_scale_
        with seeded(self.seed, device):
            module = self._build(feature_shape, start.shape[1]).to(device=device, dtype=dtype)
        optimizer = make_optimizer("adam", module.parameters(), self.lr, self.weight_decay)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            return nn.functional.mse_loss(module(inputs[idx]), outputs[idx])

        self.history_ = train_epochs(
            module,
            optimizer,
            batch_loss,
            start.shape[0],
            epochs=self.epochs,
            batch_size=self.batch_size,
            generator=torch.Generator().manual_seed(self.seed),
            device=device,
            progress=self.progress,
            desc="PushForwardMap.fit",
        )
        self.module_ = module
        self.dim_ = start.shape[1]
        self.feature_shape_ = feature_shape
        return self

    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (d,), overall std)`` of ``x``, or ``(0, 1)`` without standardisation."""
        if not self.standardize:
            return torch.zeros_like(x[0]), torch.ones((), dtype=x.dtype, device=x.device)
        mean = x.mean(0)
        scale = (x - mean).pow(2).mean().sqrt()
        return mean, torch.where(scale > 0, scale, torch.ones_like(scale))

    def transform(self, x: torch.Tensor | LabeledDataset, batch_size: int = 1024) -> torch.Tensor:
        r"""The mapped particles :math:`\hat h(x)`, ``(m, d)``, on the input's device and dtype, without gradients.

        Args:
            x: ``(m, d)`` features (or ``(m, *feature_shape)``) or a :class:`LabeledDataset`; use
                ``dataset.with_features(h.transform(dataset))`` to keep its labels.
            batch_size: rows per forward pass.
        """
        if not hasattr(self, "module_"):
            raise InvalidArgumentError("this PushForwardMap is not fitted yet: call fit(x0, xT) first.")
        points, _ = features_of(x)
        if points.shape[1] != self.dim_:
            raise ShapeMismatchError(
                f"x has shape {tuple(points.shape)} but the map was fitted on dimension {self.dim_}."
            )
        param = self.input_mean_

        def apply(block: torch.Tensor) -> torch.Tensor:
            block = block.to(device=param.device, dtype=param.dtype)
            moved = self.module_((block - self.input_mean_) / self.input_scale_)
            moved = moved * self.output_scale_ + self.output_mean_
            return block + moved if self.residual else moved

        self.module_.eval()
        dtype = points.dtype if points.is_floating_point() else param.dtype
        return batched(apply, points.detach(), batch_size).to(device=points.device, dtype=dtype)

    def __call__(self, x: torch.Tensor | LabeledDataset) -> torch.Tensor:
        """Same as :meth:`transform`."""
        return self.transform(x)
