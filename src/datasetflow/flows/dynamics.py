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
from ..data.dataset import LabeledDataset
from ..errors import DatasetflowWarning, InvalidArgumentError
from ..functionals.state import FlowState

__all__ = ["Dynamics", "FeatureDriven", "JointFixedLabel", "JointVariableLabel", "DYNAMICS", "get_dynamics"]


class Dynamics:
    """How a flow's parameters are set up and what happens after each optimizer step."""

    name = "dynamics"

    def init(self, dataset: LabeledDataset) -> FlowState:
        """The initial state (parameters as fresh leaves)."""
        return FlowState.from_dataset(dataset)

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

    def init(self, dataset):  # noqa: D102
        state = super().init(dataset)
        state.label_gradient = self.label_gradient
        return state

    def config(self):  # noqa: D102
        return {"name": self.name, "label_gradient": self.label_gradient}


class JointFixedLabel(Dynamics):
    """jd-fl: features and per-class means and covariance factors are all parameters."""

    name = "jd-fl"

    def init(self, dataset):  # noqa: D102
        state = super().init(dataset)
        stats = dataset.class_stats()
        state.class_means = stats.means.detach().clone()
        state.class_factors = covariance_factors(stats.factors.detach(), None).clone()
        return state


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
        seed: k-means seed (combined with the step for determinism).
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
        seed: int = 0,
    ) -> None:
        if clustering not in ("kmeans", "dbscan"):
            raise InvalidArgumentError(f"clustering must be one of ('kmeans', 'dbscan'), got {clustering!r}.")
        if covariance not in (None, "full", "diagonal"):
            raise InvalidArgumentError(f"covariance must be 'full', 'diagonal' or None, got {covariance!r}.")
        if not isinstance(recluster_every, int) or recluster_every < 1:
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

    def init(self, dataset):  # noqa: D102
        state = super().init(dataset)
        stats = dataset.class_stats()
        state.particle_means = stats.means[dataset.y].detach().clone()
        full = self.covariance == "full" or (self.covariance is None and dataset.dim <= 16)
        if full:
            square_roots = covariance_factors(None, stats.covariance_matrices().detach())  # (C, d, d)
            state.particle_factors = square_roots[dataset.y].clone()
        else:
            state.particle_stds = stats.diagonal_variances().detach().clamp_min(0).sqrt()[dataset.y].clone()
        if self.n_clusters is None:
            self.n_clusters = dataset.num_classes
        return state

    def descriptors(self, state: FlowState) -> np.ndarray:
        """The per-particle vectors that are clustered: mean and covariance (flattened)."""
        with torch.no_grad():
            if state.particle_factors is not None:
                cov = state.particle_factors.mT @ state.particle_factors
                rows, cols = torch.triu_indices(cov.shape[-1], cov.shape[-1])
                shape_part = cov[:, rows, cols]
            else:
                shape_part = state.particle_stds**2
            return torch.cat([state.particle_means, shape_part], 1).cpu().double().numpy()

    def after_step(self, state, step):  # noqa: D102
        if (step + 1) % self.recluster_every == 0:
            self.recluster(state, step)

    def recluster(self, state: FlowState, step: int) -> None:
        """Replace the discrete labels by clusters of the particles' Gaussians."""
        try:
            from sklearn.cluster import DBSCAN, KMeans
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise InvalidArgumentError(
                "jd-vl re-clustering needs scikit-learn: pip install 'datasetflow[cluster]'"
            ) from exc
        points = self.descriptors(state)
        if self.clustering == "kmeans":
            labels = KMeans(self.n_clusters, n_init=4, random_state=self.seed + step).fit_predict(points)
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
        codes = _match_previous(codes, state.y.cpu().numpy())
        new_y = torch.as_tensor(codes, dtype=torch.long, device=state.x.device)
        if not torch.equal(new_y, state.y):
            state.y = new_y
            state.classes = tuple(range(int(codes.max()) + 1))


def _match_previous(codes: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Renumber clusters so that each keeps the id of the previous label it overlaps most
    (Hungarian assignment on the overlap counts); clusters left unmatched get fresh ids."""
    from scipy.optimize import linear_sum_assignment

    num_new, num_old = int(codes.max()) + 1, int(previous.max()) + 1
    overlap = np.zeros((num_new, num_old), dtype=np.int64)
    np.add.at(overlap, (codes, previous), 1)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    mapping = np.full(num_new, -1, dtype=np.int64)
    mapping[rows] = cols
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
