r"""Feature-label dynamics of a dataset flow (paper §6.1, Algorithms 1-3).

* ``fd-fl`` (:class:`FeatureDriven`): only the features move; class means and covariances
  are recomputed from the particles at every step. ``label_gradient=True`` ("attached")
  differentiates the label term through those statistics; False treats them as constants.
* ``jd-fl`` (:class:`JointFixedLabel`): features and per-class :math:`(m_c, F_c)`
  (:math:`\Sigma_c = F_c^\top F_c`, PSD by construction) are separate parameters, each moved
  by its own gradient; labels never change.
* ``jd-vl`` (:class:`JointVariableLabel`): every particle carries its own Gaussian
  :math:`(m_i, \Sigma_i)`, initialised from its class; every ``recluster_every`` steps the
  particles are clustered on :math:`(m_i, \Sigma_i)` (k-means with a fixed k, or DBSCAN,
  whose number of classes may change) to recover discrete labels.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import torch

from ..costs.gaussian import covariance_factors
from ..data.dataset import ClassStats, LabeledDataset
from ..errors import DatasetflowWarning, InvalidArgumentError
from ..labels.matching import assign_one_to_one
from ..utils import missing_extra
from .state import FlowState

__all__ = [
    "Dynamics",
    "FeatureDriven",
    "JointFixedLabel",
    "JointVariableLabel",
    "DYNAMICS",
    "get_dynamics",
    "match_previous_labels",
]


class Dynamics:
    """How a flow's parameters are set up, what functionals see of them and what happens after each step.

    A dynamics never changes its own settings during a flow; everything that evolves lives in the
    :class:`~datasetflow.flows.state.FlowState` (``x``, ``y``, ``classes`` and ``params``).
    """

    name = "dynamics"

    def init(self, dataset: LabeledDataset, *, seed: int = 0) -> FlowState:
        """The initial state (parameters as fresh leaves)."""
        return FlowState.from_dataset(dataset, self, seed=seed)

    def label_view(self, state: FlowState) -> tuple[LabeledDataset, ClassStats | None]:
        """The dataset and label statistics label-aware functionals see (default: the particles, with the
        statistics of their samples)."""
        return state.dataset(), None

    def parameters(self, state: FlowState) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(name, tensor, mass)`` of every tensor the optimizer moves (default: the features)."""
        return [("x", state.x, state.weights[:, None])]

    def after_step(self, state: FlowState, step: int) -> None:
        """Hook run after every optimizer step (re-clustering, ...)."""

    def config(self) -> dict:
        """JSON-friendly description."""
        return {"name": self.name}


class FeatureDriven(Dynamics):
    """fd-fl: features move; class statistics follow the particles.

    Args:
        label_gradient: differentiate the label term through the class statistics of the
            particles (default True, "attached"); False freezes them within each step.
    """

    name = "fd-fl"

    def __init__(self, *, label_gradient: bool = True) -> None:
        self.label_gradient = bool(label_gradient)

    def label_view(self, state):  # noqa: D102
        data = state.dataset()
        if self.label_gradient:
            return data, None
        with torch.no_grad():
            return data, data.with_features(state.x.detach()).class_stats()

    def config(self):  # noqa: D102
        return {"name": self.name, "label_gradient": self.label_gradient}


class JointFixedLabel(Dynamics):
    """jd-fl: features and per-class means :math:`m_c` ``(C, d)`` and covariance factors :math:`F_c`
    ``(C, r, d)`` (:math:`\\Sigma_c = F_c^\\top F_c`) are all parameters."""

    name = "jd-fl"

    def init(self, dataset, *, seed=0):  # noqa: D102
        state = super().init(dataset, seed=seed)
        stats = dataset.class_stats()
        state.params["class_means"] = stats.means.detach().clone()
        state.params["class_factors"] = covariance_factors(stats.factors.detach(), None).clone()
        return state

    def label_view(self, state):  # noqa: D102
        stats = ClassStats(
            means=state.params["class_means"],
            weights=state.class_masses(),
            counts=torch.bincount(state.y, minlength=len(state.classes)),
            classes=state.classes,
            factors=state.params["class_factors"],
        )
        return state.dataset(), stats

    def parameters(self, state):  # noqa: D102
        masses = state.class_masses()
        return [
            *super().parameters(state),
            ("class_means", state.params["class_means"], masses[:, None]),
            ("class_factors", state.params["class_factors"], masses[:, None, None]),
        ]


class JointVariableLabel(Dynamics):
    """jd-vl: one Gaussian per particle, re-clustered into discrete labels.

    Args:
        clustering: ``"kmeans"`` (fixed ``n_clusters``, default the initial number of
            classes) or ``"dbscan"`` (non-parametric; ``eps`` and ``min_samples``, the paper
            uses 5 and 4).
        recluster_every: steps between re-clusterings (and at the end of the flow).
        covariance: ``"full"`` (``(n, d, d)`` factors; small ``d`` only) or ``"diagonal"``;
            default full for ``d <= 16``.
        n_clusters, eps, min_samples: clustering parameters.
        seed: k-means seed (combined with the step); default the flow's seed.

    Parameters: per-particle means ``particle_means`` ``(n, d)`` and factors ``particle_factors``
    ``(n, r, d)`` (full) or standard deviations ``particle_stds`` ``(n, d)`` (diagonal). Functionals
    see every particle as its own class with its own Gaussian.
    """

    name = "jd-vl"

    def __init__(
        self,
        *,
        clustering: str = "kmeans",
        recluster_every: int = 10,
        covariance: str | None = None,
        n_clusters: int | None = None,
        eps: float = 5.0,
        min_samples: int = 4,
        seed: int | None = None,
    ) -> None:
        if clustering not in ("kmeans", "dbscan"):
            raise InvalidArgumentError(f"clustering must be one of ('kmeans', 'dbscan'), got {clustering!r}.")
        if covariance not in (None, "full", "diagonal"):
            raise InvalidArgumentError(f"covariance must be 'full', 'diagonal' or None, got {covariance!r}.")
        if isinstance(recluster_every, bool) or not isinstance(recluster_every, int) or recluster_every < 1:
            raise InvalidArgumentError(f"recluster_every must be a positive int, got {recluster_every!r}.")
        self.clustering, self.recluster_every, self.covariance = clustering, recluster_every, covariance
        self.n_clusters, self.eps, self.min_samples, self.seed = n_clusters, eps, min_samples, seed

    def config(self):  # noqa: D102
        return {
            "name": self.name,
            "clustering": self.clustering,
            "recluster_every": self.recluster_every,
            "covariance": self.covariance,
            "n_clusters": self.n_clusters,
            "eps": self.eps,
            "min_samples": self.min_samples,
        }

    def init(self, dataset, *, seed=0):  # noqa: D102
        state = super().init(dataset, seed=seed)
        stats = dataset.class_stats()
        state.params["particle_means"] = stats.means[dataset.y].detach().clone()
        full = self.covariance == "full" or (self.covariance is None and dataset.dim <= 16)
        if full:
            square_roots = covariance_factors(None, stats.covariance_matrices().detach())  # (C, d, d)
            state.params["particle_factors"] = square_roots[dataset.y].clone()
        else:
            stds = stats.diagonal_variances().detach().clamp_min(0).sqrt()
            state.params["particle_stds"] = stds[dataset.y].clone()
        return state

    def label_view(self, state):  # noqa: D102
        n = state.x.shape[0]
        own_classes = tuple(range(n))
        own = LabeledDataset.from_tensors(
            state.x,
            torch.arange(n, device=state.x.device),
            state.weights,
            own_classes,
            feature_shape=state.feature_shape,
            name="flow",
        )
        stds = state.params.get("particle_stds")
        stats = ClassStats(
            means=state.params["particle_means"],
            weights=state.weights,
            counts=torch.ones(n, dtype=torch.long, device=state.x.device),
            classes=own_classes,
            factors=state.params.get("particle_factors"),
            variances=None if stds is None else stds**2,
        )
        return own, stats

    def parameters(self, state):  # noqa: D102
        params = [
            *super().parameters(state),
            ("particle_means", state.params["particle_means"], state.weights[:, None]),
        ]
        if "particle_factors" in state.params:
            params.append(("particle_factors", state.params["particle_factors"], state.weights[:, None, None]))
        if "particle_stds" in state.params:
            params.append(("particle_stds", state.params["particle_stds"], state.weights[:, None]))
        return params

    def descriptors(self, state: FlowState) -> np.ndarray:
        """The per-particle vectors that are clustered: mean and covariance (flattened)."""
        with torch.no_grad():
            factors = state.params.get("particle_factors")
            if factors is not None:
                cov = factors.mT @ factors
                rows, cols = torch.triu_indices(cov.shape[-1], cov.shape[-1])
                shape_part = cov[:, rows, cols]
            else:
                shape_part = state.params["particle_stds"] ** 2
            return torch.cat([state.params["particle_means"], shape_part], 1).cpu().double().numpy()

    def after_step(self, state, step):  # noqa: D102
        if (step + 1) % self.recluster_every == 0:
            self.recluster(state, step)

    def recluster(self, state: FlowState, step: int) -> None:
        """Replace the discrete labels by clusters of the particles' Gaussians."""
        try:
            from sklearn.cluster import DBSCAN, KMeans
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise missing_extra("jd-vl re-clustering", "scikit-learn", "cluster") from exc
        points = self.descriptors(state)
        if self.clustering == "kmeans":
            seed = state.seed if self.seed is None else self.seed
            n_clusters = self.n_clusters or state.initial_num_classes
            labels = KMeans(n_clusters, n_init=4, random_state=seed + step).fit_predict(points)
        else:
            labels = DBSCAN(eps=self.eps, min_samples=self.min_samples).fit_predict(points)
            core = labels >= 0
            if not core.any():
                warnings.warn(
                    f"DBSCAN (eps={self.eps}, min_samples={self.min_samples}) found no cluster at step {step}; "
                    "labels are kept.",
                    DatasetflowWarning,
                    stacklevel=2,
                )
                return
            if not core.all():  # noise points join the nearest clustered point's cluster
                dist = ((points[~core, None, :] - points[None, core, :]) ** 2).sum(-1)
                labels[~core] = labels[core][dist.argmin(1)]
        _, codes = np.unique(labels, return_inverse=True)
        codes = match_previous_labels(codes, state.y.cpu().numpy())
        new_y = torch.as_tensor(codes, dtype=torch.long, device=state.x.device)
        if not torch.equal(new_y, state.y):
            state.y = new_y
            state.classes = tuple(range(int(codes.max()) + 1))


def match_previous_labels(codes: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Renumber clusters so that each keeps the id of the previous label it overlaps most
    (one-to-one assignment on the overlap counts); clusters left unmatched get fresh ids."""
    num_new, num_old = int(codes.max()) + 1, int(previous.max()) + 1
    overlap = np.zeros((num_new, num_old), dtype=np.int64)
    np.add.at(overlap, (codes, previous), 1)
    mapping = assign_one_to_one(torch.as_tensor(overlap, dtype=torch.float64), maximize=True).numpy()
    unmatched = np.flatnonzero(mapping < 0)
    mapping[unmatched] = num_old + np.arange(unmatched.size)
    used = np.unique(mapping[codes])  # keep ids contiguous: 0..K-1
    return np.searchsorted(used, mapping[codes])


DYNAMICS = {"fd-fl": FeatureDriven, "jd-fl": JointFixedLabel, "jd-vl": JointVariableLabel}


def get_dynamics(dynamics: str | Dynamics, **options) -> Dynamics:
    """A dynamics object from its name (``"fd-fl"``, ``"jd-fl"``, ``"jd-vl"``) or an instance."""
    if isinstance(dynamics, Dynamics):
        if options:
            raise InvalidArgumentError("dynamics options apply to a dynamics name, not to an instance.")
        return dynamics
    if dynamics not in DYNAMICS:
        raise InvalidArgumentError(f"dynamics must be one of {tuple(DYNAMICS)}, got {dynamics!r}.")
    cls = DYNAMICS[dynamics]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InvalidArgumentError(
            f"unknown dynamics_options {unknown} for {dynamics!r}; valid options: {valid or 'none'}."
        )
    return cls(**options)
