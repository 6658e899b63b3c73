"""Functionals of labeled datasets that flows minimise; they add and scale."""

from .base import DatasetParticles, Functional, Particles, ScaledFunctional, SumFunctional, as_particles
from .config import TERM_TYPES, TermType, from_config, normalize_terms, register_term, target_terms
from .energies import (
    Entropy,
    Interaction,
    Potential,
    ball_constraint,
    class_repulsion,
    collapse,
    entropy,
    hyperplane_margin,
    interaction,
    norm_potential,
    potential,
    quadratic_repulsion,
)
from .mmd_sw import MMDSWToTarget, mmd_sw_to
from .otdd_target import OTDDToTarget, otdd_to

__all__ = [
    "Functional",
    "Particles",
    "DatasetParticles",
    "as_particles",
    "from_config",
    "normalize_terms",
    "register_term",
    "target_terms",
    "TERM_TYPES",
    "TermType",
    "SumFunctional",
    "ScaledFunctional",
    "OTDDToTarget",
    "otdd_to",
    "MMDSWToTarget",
    "mmd_sw_to",
    "Potential",
    "Interaction",
    "Entropy",
    "potential",
    "interaction",
    "entropy",
    "norm_potential",
    "hyperplane_margin",
    "ball_constraint",
    "collapse",
    "class_repulsion",
    "quadratic_repulsion",
]
