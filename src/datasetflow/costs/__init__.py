"""Ground costs (dense, implicit OTDD cost) and Gaussian (Bures-Wasserstein) closed forms."""

from .gaussian import bures_wasserstein_squared, covariance_factors, sqeuclidean
from .ground import CostOperator, DenseCost, OTDDCost
from .linalg import nuclear_norm, psd_sqrt

__all__ = [
    "CostOperator",
    "DenseCost",
    "OTDDCost",
    "bures_wasserstein_squared",
    "covariance_factors",
    "sqeuclidean",
    "psd_sqrt",
    "nuclear_norm",
]
