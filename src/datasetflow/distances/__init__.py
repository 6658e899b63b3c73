"""Dataset distances built on the labels layer and the solvers: OTDD, WoW and MMD between class mixtures."""

from .mmd import class_masses, mmd_from_summaries, mmd_sw
from .otdd import OTDDResult, otdd
from .wow import WoWResult, wow

__all__ = ["otdd", "OTDDResult", "mmd_sw", "mmd_from_summaries", "class_masses", "wow", "WoWResult"]
