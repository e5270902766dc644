"""Adaptive attacks: attackers that know the defense (DESIGN.md section 3, issue 8).

An adaptive attack turns what the attacker observed of one target into a gradient to invert
and, optionally, a mask of gradient elements to leave out of the matching; the gradient
matching itself is the plain engine (:class:`~gradguard.attacks.Attack`). Four attackers:

- ``oracle-mute``: knows the secret noisy elements and mutes them. An upper bound: it assumes
  a leak the design forbids.
- ``detect-mute``: estimates the slices from public information (the defense's public
  configuration and slicing code, run on the attacker's own data), scores each slice by its
  mean square against the sigma^2 that noise alone adds, mutes the k highest (k is public).
- ``compensate-invert``: runs the server's compensator on the single client's gradient.
- ``multi-round``: several observations of the same client, data and model (a replayed or
  stalled global model): per element, a value seen in two observations is taken as clean
  (noise never repeats); elsewhere the mean of the observations.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..grads import flatten, unflatten

Gradient = list[Tensor]


@dataclass(frozen=True)
class Observation:
    """What the attacker saw of one target: the defended gradient of each observed round.

    ``secret_mask`` (bool over the flat gradient, True = noisy) is the client's secret; only
    the oracle reads it, and the evaluation uses it to score detection.
    """

    gradients: list[Gradient]
    secret_mask: Tensor | None = None


@dataclass(frozen=True)
class Prepared:
    """The gradient the matching engine inverts, and the elements it leaves out (True = muted)."""

    gradient: Gradient
    mute_mask: Tensor | None = None
    detection: dict[str, float] = field(default_factory=dict)


class AdaptiveAttack(ABC):
    """Prepares an observation for the matching engine; ``rounds`` observations are needed."""

    name: ClassVar[str]
    rounds: int = 1

    @abstractmethod
    def prepare(self, model: nn.Module, observation: Observation, defense, public_data: tuple[Tensor, Tensor]) -> Prepared:
        """``defense`` is the client's defense object, used only for its public configuration
        and code; ``public_data`` is data the attacker owns (never the target)."""


def detection_scores(predicted: Tensor, truth: Tensor | None) -> dict[str, float]:
    """Element-level precision and recall of a predicted noisy mask against the secret one."""
    if truth is None:
        return {}
    hits = float((predicted & truth).sum())
    return {"precision": hits / max(1.0, float(predicted.sum())), "recall": hits / max(1.0, float(truth.sum())),
            "noisy_fraction": float(truth.float().mean())}


class OracleMute(AdaptiveAttack):
    name = "oracle-mute"

    def prepare(self, model, observation, defense, public_data):
        if observation.secret_mask is None:
            raise ConfigError(f"{self.name}: this defense reports no noisy elements to an oracle")
        mask = observation.secret_mask
        return Prepared(observation.gradients[0], mask if bool(mask.any()) else None)


class DetectMute(AdaptiveAttack):
    """Mute the k slices whose mean square most exceeds what the clean gradient would give."""

    name = "detect-mute"

    def prepare(self, model, observation, defense, public_data):
        config = getattr(defense, "config", None)
        if not all(hasattr(config, f) for f in ("sigma", "slices", "chosen")) or not hasattr(defense, "slice_bounds"):
            raise ConfigError(f"{self.name}: needs a slice defense (sigma, slices, chosen); got {defense!r}")
        gradient = observation.gradients[0]
        bounds = defense.slice_bounds(gradient, model, public_data)
        flat = flatten(gradient)
        sizes = (bounds[1:] - bounds[:-1]).tolist()
        energy = torch.stack([part.square().mean() for part in flat.split(sizes)])
        count = defense.chosen_count(len(sizes))
        muted_slices = energy.topk(count).indices
        mask = torch.zeros_like(flat, dtype=torch.bool)
        for j in muted_slices.tolist():
            mask[bounds[j]:bounds[j + 1]] = True
        return Prepared(gradient, mask, detection_scores(mask, observation.secret_mask))


class CompensateInvert(AdaptiveAttack):
    """Denoise one client's gradient (weight 1) with the server's compensator or, when the
    server runs none, with spectral shrinkage at the defense's public noise level."""

    name = "compensate-invert"

    def prepare(self, model, observation, defense, public_data):
        from ..defenses.compensation import SpectralShrinkage

        compensator = defense.compensator()
        config = getattr(defense, "config", None)
        sigma = getattr(config, "sigma", None) or math.sqrt(2) * getattr(config, "scale", 0.0) or None
        if compensator is None and sigma is not None:
            compensator = SpectralShrinkage(sigma, getattr(defense, "noisy_fraction", 1.0))
        if compensator is None:
            raise ConfigError(f"{self.name}: {defense!r} has no public noise level to denoise against")
        gradient = observation.gradients[0]
        return Prepared(compensator.compensate(gradient, torch.ones(1, dtype=torch.float64)))


class MultiRound(AdaptiveAttack):
    """Combine several noisy observations of one gradient: agreeing values, else the mean."""

    name = "multi-round"

    def __init__(self, rounds: int = 4, tolerance: float = 1e-7):
        if rounds < 2:
            raise ConfigError(f"{self.name}: rounds must be >= 2, got {rounds}")
        self.rounds, self.tolerance = rounds, tolerance

    def prepare(self, model, observation, defense, public_data):
        if len(observation.gradients) < 2:
            raise ConfigError(f"{self.name}: needs at least 2 observations, got {len(observation.gradients)}")
        stacked = torch.stack([flatten(g) for g in observation.gradients])
        return Prepared(unflatten(combine_observations(stacked, self.tolerance), observation.gradients[0]))


def combine_observations(stacked: Tensor, tolerance: float = 1e-7) -> Tensor:
    """Per element (column), a value that two observations share (noise never repeats, so it is
    the clean one); where none repeats, the mean of all observations."""
    ordered = stacked.sort(dim=0).values
    gaps = (ordered[1:] - ordered[:-1]).abs()
    scale = ordered[1:].abs().clamp_min(1.0)
    agree = gaps <= tolerance * scale
    first = agree.float().argmax(dim=0)  # first agreeing pair per element
    shared = ordered.gather(0, first.unsqueeze(0)).squeeze(0)
    return torch.where(agree.any(dim=0), shared, stacked.mean(dim=0))


ADAPTIVE: dict[str, type[AdaptiveAttack]] = {
    cls.name: cls for cls in (OracleMute, DetectMute, CompensateInvert, MultiRound)
}


def adaptive_attack(name: str, **options) -> AdaptiveAttack:
    if name not in ADAPTIVE:
        raise ConfigError(f"adaptive attack: unknown name {name!r}; choose one of {sorted(ADAPTIVE)}")
    return ADAPTIVE[name](**options)
