"""Defenses: one interface (:class:`Defense`), a registry (:data:`DEFENSES`), one module each.

Importing this package registers every defense: ``none``, ``graddefense`` (hardened default),
``graddefense-paper``, ``gc``, ``dp-gaussian``, ``dp-laplace``, ``soteria``, ``dpsgd``.
"""

from . import compression, dpsgd, graddefense, noise, soteria  # noqa: F401  (each import registers)
from .base import DEFENSES, Compensator, Defense, DefenseConfig, DefenseContext, NoDefense, register
from .compensation import MarchenkoPastur, SpectralShrinkage, aggregate_noise_variance
from .dpsgd import DPSGD
from .graddefense import GradDefense, GradDefensePaper

__all__ = ["DEFENSES", "DPSGD", "Compensator", "Defense", "DefenseConfig", "DefenseContext", "GradDefense",
           "GradDefensePaper", "MarchenkoPastur", "NoDefense", "SpectralShrinkage", "aggregate_noise_variance",
           "register"]
