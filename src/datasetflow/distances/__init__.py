"""Dataset distances built on the labels layer and the solvers: OTDD, WoW, MMD between class mixtures and the
sliced distances (s-OTDD, Busemann SWB1DG / SWBG)."""

from .mmd import class_masses, mmd_from_summaries, mmd_sw
from .otdd import OTDDResult, otdd
from .sliced import DistanceMatrixResult, SlicedResult, busemann, distance_matrix, sliced_distance, sotdd
from .wow import WoWResult, wow

__all__ = [
    "otdd",
    "OTDDResult",
    "mmd_sw",
    "mmd_from_summaries",
    "class_masses",
    "wow",
    "WoWResult",
    "sotdd",
    "busemann",
    "sliced_distance",
    "distance_matrix",
    "SlicedResult",
    "DistanceMatrixResult",
]
