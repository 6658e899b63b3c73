r"""Pseudo-labels for unlabeled data (paper §6.3, §7.3 and Appendix C).

"If no labels are available at all, we propose to generate pseudo-labels for the flow [...] by
clustering the initial data and using the identities of the clusters as imputed labels."
:func:`pseudo_labels` clusters features (optionally in an embedding: PCA, HOG, an autoencoder
trained on the samples, UMAP, chains of them such as ``"hog+umap"``, or a network's features) with
k-means or a Gaussian mixture;
:func:`align_pseudo_labels` renames the clusters after the classes of a reference dataset by a
minimum-cost matching, "so as to allow accuracy computation" (App. C).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..data.dataset import LabeledDataset, check_dataset_pair, features_of
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..utils import batched, check_choice, check_matrix, check_positive_int, missing_extra, module_placement, seeded
from .costs import LabelCost
from .embeddings import autoencoder_codes, hog_features, umap_embedding
from .matching import label_distance_matrix, match_classes

__all__ = [
    "pseudo_labels",
    "consensus_labels",
    "align_pseudo_labels",
    "embed",
    "CLUSTERING_METHODS",
    "EMBEDDINGS",
    "ALIGN_COSTS",
]

CLUSTERING_METHODS = ("kmeans", "gmm")
EMBEDDINGS = ("pca", "hog", "autoencoder", "umap")
ALIGN_COSTS = ("otdd", "means")


def embed(
    x: torch.Tensor,
    embedding: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    n_components: int = 50,
    seed: int = 0,
    batch_size: int = 1024,
    feature_shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    r"""Features ``(n, d)`` mapped to the space they are clustered in, ``(n, e)``.

    * ``None``: the features themselves (``e = d``).
    * ``"pca"``: the centred features projected on their top :math:`q = \min(n_\text{components}, n, d)`
      principal directions, :math:`(x - \bar x) V_{:, :q}` (``torch.pca_lowrank``, seeded).
    * ``"hog"``: HOG descriptors of grayscale images (:func:`~datasetflow.labels.embeddings.hog_features`;
      needs ``feature_shape`` ``(H, W)``).
    * ``"autoencoder"``: the 32-d codes of a small convolutional autoencoder trained on ``x`` itself
      (:func:`~datasetflow.labels.embeddings.autoencoder_codes`, seeded; needs ``feature_shape``).
    * ``"umap"``: a 10-d UMAP (:func:`~datasetflow.labels.embeddings.umap_embedding`, seeded).
    * stage names joined by ``"+"`` apply in order, e.g. ``"hog+umap"`` or ``"autoencoder+umap"``.
    * a callable ``(b, d) -> (b, e)``, e.g. ``LeNet5(...).features``: applied in batches without gradients
      (on the device and dtype of its module when it is a bound method of one).
    """
    if embedding is None:
        return x
    if isinstance(embedding, str):
        stages = embedding.split("+")
        for stage in stages:
            check_choice("embedding", stage, EMBEDDINGS)
        check_positive_int("n_components", n_components)
        out = x
        for k, stage in enumerate(stages):
            if stage in ("hog", "autoencoder") and k > 0:
                raise InvalidArgumentError(
                    f"embedding stage {stage!r} needs images; it can only come first in {embedding!r}."
                )
            out = _stage(out, stage, n_components, seed, feature_shape)
        return out
    if not callable(embedding):
        raise InvalidArgumentError(
            f"embedding must be None, one of {EMBEDDINGS} (or '+'-joined stages) or a callable (b, d) -> (b, e), "
            f"got {type(embedding).__name__}."
        )
    device, dtype = module_placement(getattr(embedding, "__self__", embedding), x)
    out = batched(lambda b: embedding(b.to(device=device, dtype=dtype)), x, batch_size)
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ShapeMismatchError(
            f"embedding must map (b, d) features to (b, e); it returned shape {tuple(out.shape)} "
            f"for input of shape {tuple(x.shape)}."
        )
    return out


def _stage(x: torch.Tensor, stage: str, n_components: int, seed: int, feature_shape) -> torch.Tensor:
    """One named embedding stage of :func:`embed`."""
    if stage == "pca":
        q = min(n_components, *x.shape)
        with seeded(seed, x.device), torch.no_grad():
            mean = x.mean(0, keepdim=True)
            _, _, v = torch.pca_lowrank(x - mean, q=q, center=False)
            return (x - mean) @ v[:, :q]
    if stage == "umap":
        return umap_embedding(x, seed=seed)
    if feature_shape is None:
        raise InvalidArgumentError(
            f"embedding {stage!r} needs the images' feature_shape (H, W); pass a LabeledDataset."
        )
    if stage == "hog":
        return hog_features(x, feature_shape)
    return autoencoder_codes(x, feature_shape, seed=seed)


def pseudo_labels(
    dataset_or_x: LabeledDataset | torch.Tensor,
    n_clusters: int,
    *,
    embedding: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_components: int = 50,
    seed: int = 0,
    method: str = "kmeans",
    consensus: int = 1,
) -> LabeledDataset:
    r"""Label unlabeled samples by the identity of their cluster (paper §6.3).

    ``"kmeans"``:

    .. math:: \min_{c_1..c_K} \sum_i w_i \min_k \|e(x_i) - c_k\|^2, \qquad \tilde y_i = \arg\min_k \|e(x_i) - c_k\|^2

    with :math:`e` the ``embedding`` (see :func:`embed`) and :math:`w` the sample weights.
    ``"gmm"``: a ``K``-component Gaussian mixture with full covariances fitted by EM on :math:`e(x_i)`
    (unweighted; 5 restarts), :math:`\tilde y_i` the most probable component.
    Needs scikit-learn (``pip install 'datasetflow[cluster]'``).

    ``consensus = R > 1`` (evidence accumulation, Fred & Jain 2005): the embedding and the clustering
    are run with the seeds ``seed, ..., seed + R - 1`` (a seeded embedding such as UMAP differs per
    seed), giving partitions :math:`\tilde y^{(1)}, \dots, \tilde y^{(R)}`; with the co-association

    .. math:: C_{ij} = \frac1R \sum_{r=1}^R \mathbf 1[\tilde y^{(r)}_i = \tilde y^{(r)}_j],

    the labels are the ``K`` clusters of average-linkage agglomerative clustering of the distances
    :math:`1 - C`. It uses no labels: it keeps what the runs agree on and removes the seed-to-seed
    variance of a single run.

    Args:
        dataset_or_x: ``(n, d)`` features (or ``(n, *feature_shape)``), or a :class:`LabeledDataset`
            whose labels are ignored (its weights and ``feature_shape`` are kept).
        n_clusters: ``K >= 1``, at most ``n``.
        embedding: ``None`` (raw features), a stage of ``EMBEDDINGS`` or ``"+"``-joined stages
            (``"hog+umap"``, ``"autoencoder+umap"``), or a callable ``(b, d) -> (b, e)``.
        n_components: PCA dimension for ``embedding="pca"``.
        seed: seeds k-means (10 restarts) or the mixture, the randomised PCA, the autoencoder and UMAP.
        method: ``"kmeans"`` or ``"gmm"``.
        consensus: number ``R >= 1`` of seeded runs combined by co-association (1: a single run).

    Returns:
        A :class:`LabeledDataset` with the original features (not the embedding), labels the cluster
        ids ``0..K-1`` (clusters left empty are dropped) and the input's weights, dtype and device.
    """
    check_choice("method", method, CLUSTERING_METHODS)
    x, feature_shape = features_of(dataset_or_x, "dataset_or_x")
    x = x.detach()
    weights = dataset_or_x.weights if isinstance(dataset_or_x, LabeledDataset) else None
    n = x.shape[0]
    check_positive_int("n_clusters", n_clusters)
    check_positive_int("consensus", consensus)
    if n_clusters > n:
        raise InvalidArgumentError(f"n_clusters={n_clusters} exceeds the number of samples n={n}.")
    try:
        from sklearn.cluster import KMeans
        from sklearn.mixture import GaussianMixture
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_extra("pseudo_labels", "scikit-learn", "cluster") from exc

    def one_run(run_seed: int) -> np.ndarray:
        points = embed(x, embedding, n_components=n_components, seed=run_seed, feature_shape=feature_shape)
        points = points.cpu().double().numpy()
        if method == "kmeans":
            sample_weight = None if weights is None else weights.detach().cpu().double().numpy() * n
            return KMeans(n_clusters, n_init=10, random_state=run_seed).fit_predict(points, sample_weight=sample_weight)
        mixture = GaussianMixture(n_clusters, covariance_type="full", n_init=5, reg_covar=1e-4, random_state=run_seed)
        return mixture.fit(points).predict(points)

    if consensus == 1:
        codes = one_run(seed)
    else:
        codes = consensus_labels(np.stack([one_run(seed + r) for r in range(consensus)]), n_clusters)
    _, codes = np.unique(codes, return_inverse=True)
    name = dataset_or_x.name if isinstance(dataset_or_x, LabeledDataset) else None
    return LabeledDataset(x.reshape(n, *feature_shape), codes.reshape(-1), weights=weights, name=name)


def consensus_labels(partitions: np.ndarray | torch.Tensor, n_clusters: int) -> np.ndarray:
    r"""Consensus of ``R`` partitions ``(R, n)`` of the same samples (evidence accumulation).

    With the co-association :math:`C_{ij} = \frac1R \sum_r \mathbf 1[y^{(r)}_i = y^{(r)}_j]`, the
    result is the ``n_clusters`` clusters of average-linkage agglomerative clustering of :math:`1 - C`
    (cluster ids ``0..K-1``). Uses no labels; :func:`pseudo_labels` with ``consensus > 1`` calls it.
    """
    runs = np.asarray(partitions)
    if runs.ndim != 2 or runs.shape[0] < 1:
        raise ShapeMismatchError(f"partitions must have shape (R, n) with R >= 1, got {tuple(runs.shape)}.")
    check_positive_int("n_clusters", n_clusters)
    if n_clusters > runs.shape[1]:
        raise InvalidArgumentError(f"n_clusters={n_clusters} exceeds the number of samples n={runs.shape[1]}.")
    try:
        from sklearn.cluster import AgglomerativeClustering
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_extra("consensus_labels", "scikit-learn", "cluster") from exc
    co = np.zeros((runs.shape[1], runs.shape[1]))
    for run in runs:
        co += run[:, None] == run[None, :]
    distance = 1.0 - co / runs.shape[0]
    codes = AgglomerativeClustering(n_clusters, metric="precomputed", linkage="average").fit_predict(distance)
    return np.unique(codes, return_inverse=True)[1]


def _class_means(dataset: LabeledDataset) -> torch.Tensor:
    """``(C, d)`` weighted class means."""
    x, w = dataset.x.detach(), dataset.weights
    sums = torch.zeros(dataset.num_classes, dataset.dim, dtype=x.dtype, device=x.device)
    return sums.index_add(0, dataset.y, w[:, None] * x) / dataset.class_weights()[:, None]


def align_pseudo_labels(
    pseudo: LabeledDataset,
    reference: LabeledDataset,
    *,
    cost: str | torch.Tensor = "otdd",
    inner: str | LabelCost = "gaussian",
) -> LabeledDataset:
    r"""Rename the clusters of ``pseudo`` after the classes of ``reference`` by a minimum-cost matching.

    With :math:`D_{kc}` a cost between cluster ``k`` and reference class ``c``, cluster ``k`` is
    renamed ``reference.classes[σ(k)]`` where :math:`\sigma` = :func:`~datasetflow.labels.matching.match_classes`
    (a one-to-one assignment minimising :math:`\sum_k D_{k\sigma(k)}`; with more clusters than classes
    the clusters left over take their cheapest class).

    Args:
        pseudo: dataset with ``K`` clusters, e.g. from :func:`pseudo_labels`.
        reference: dataset with ``C`` named classes in the same feature dimension (the same samples
            with their true labels for evaluation, or the dataset the flow goes to).
        cost: ``"otdd"`` (default; OTDD label distances :math:`W_2^2(\alpha_k, \beta_c)`, as
            ``otdd(pseudo, reference).label_distances``), ``"means"`` (squared distances between class
            means, :math:`\|m_k - m'_c\|^2`) or a precomputed ``(K, C)`` matrix.
        inner: label cost for ``cost="otdd"``.

    Returns:
        A copy of ``pseudo`` whose labels are names from ``reference.classes`` (its ``classes`` are
        those used, in the reference's order); features, weights and ``feature_shape`` unchanged.
    """
    check_dataset_pair(("pseudo", "reference"), pseudo, reference)
    shape = (pseudo.num_classes, reference.num_classes)
    if isinstance(cost, str):
        check_choice("cost", cost, ALIGN_COSTS)
        if cost == "otdd":
            matrix = label_distance_matrix(pseudo, reference, inner=inner)
        else:
            other = _class_means(reference).to(device=pseudo.x.device, dtype=pseudo.x.dtype)
            matrix = torch.cdist(_class_means(pseudo), other) ** 2
    else:
        matrix = check_matrix("cost", cost, shape)
    matched = match_classes(matrix).tolist()
    labels = [reference.classes[matched[k]] for k in pseudo.y.tolist()]
    used = set(matched)
    kept = [c for j, c in enumerate(reference.classes) if j in used]
    x = pseudo.x.detach().reshape(len(pseudo), *pseudo.feature_shape)
    return LabeledDataset(x, labels, weights=pseudo.weights, classes=kept, name=pseudo.name)
