"""Gradient leakage attacks: one gradient-matching engine, label recovery, named presets.

``Attack.from_config("dlg").reconstruct(model, observed_gradient, image_shape, batch_size)``
returns a :class:`Reconstruction`; ``reconstruct_many`` attacks several targets (and their
restarts) in one vectorised optimisation. :data:`ATTACKS` lists the presets; :data:`ADAPTIVE`
the attacks that know the defense (adaptive, noise-aware, learned).
"""

from . import learned  # noqa: F401  (registers the adaptive attack lti)
from .adaptive import ADAPTIVE, AdaptiveAttack, Observation, Prepared, adaptive_attack, register_adaptive
from .attack import Attack, Reconstruction
from .config import AttackConfig
from .labels import idlg_labels, last_linear
from .matching import DISTANCES, GradientMatcher, matching_weights, total_variation
from .presets import ATTACKS

__all__ = ["ADAPTIVE", "ATTACKS", "DISTANCES", "AdaptiveAttack", "Attack", "AttackConfig", "GradientMatcher",
           "Observation", "Prepared", "Reconstruction", "adaptive_attack", "idlg_labels", "last_linear",
           "matching_weights", "register_adaptive", "total_variation"]
