"""OT solvers: exact (POT network simplex) and log-domain Sinkhorn, behind :func:`solve`."""

from .api import solve
from .result import OTResult

__all__ = ["solve", "OTResult"]
