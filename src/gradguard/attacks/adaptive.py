"""Adaptive attacks: attackers that know the defense (docs/security.md, docs/design.md section 3).

An adaptive attack turns what the attacker observed of one target into a gradient to invert
and, optionally, a mask of gradient elements to leave out of the matching; the gradient
matching itself is the plain engine (:class:`~gradguard.attacks.Attack`). An attacker knows a
defense only through its public description: its configuration, :meth:`Defense.noise_model`,
:meth:`Defense.perturbed_parameters`, :meth:`Defense.public_slices` and its compensator. Each
attack says which defenses it applies to (:meth:`AdaptiveAttack.applies_to`), so the harness
runs it against every registered defense that fits.

- ``oracle-mute``: knows the secret noisy elements and mutes them. An upper bound: it assumes
  a leak the design forbids.
- ``detect-mute``: estimates the slices from public information (the defense's public
  configuration and slicing code, run on the attacker's own data), scores each slice by its
  mean square, mutes as many as the public noisy fraction says get noise.
- ``compensate-invert``: runs the server's compensator on the single client's gradient (or
  spectral shrinkage at the public noise level when the server runs none).
- ``multi-round``: several observations of the same client, data and model (a replayed or
  stalled global model): per element, a value seen in two observations is taken as clean
  (noise never repeats); elsewhere the mean of the observations.
- ``mute-perturbed``: leaves out the parameters a defense perturbs in a fixed pattern (Soteria's
  last linear layer): the muted attack that breaks Soteria.
- ``noise-aware``: matches with the likelihood of the defense's known noise (after Balunovic et
  al., "Bayesian Framework for Gradient Leakage", ICLR 2022): Gaussian noise, the squared error
  over 2 sigma^2; Laplace noise, the absolute error over b; a defense that zeroes entries
  (pruning, Soteria), only the entries it kept; plus the base attack's image prior (total
  variation), whose weight relative to the likelihood thus grows with sigma^2. Without noise
  or zeroed entries it is the base attack unchanged.
- ``lti`` (``gradguard.attacks.learned``): an inversion network trained on the attacker's own
  data passed through the defense.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..grads import Gradient, flatten, param_names, unflatten
from ..rng import make_generator

if TYPE_CHECKING:
    from ..defenses.base import Defense


@dataclass(frozen=True)
class Observation:
    """What the attacker saw of one target: the defended gradient of each observed round.

    ``secret_mask`` (bool over the flat gradient, True = noisy) is the client's secret; only
    the oracle reads it, and the evaluation uses it to score detection.
    """

    gradients: list[Gradient]
    secret_mask: Tensor | None = None
    batch_size: int = 1


@dataclass(frozen=True)
class Prepared:
    """The gradient the matching engine inverts, the elements it leaves out (True = muted) and
    changes to the engine's configuration (``overrides``, e.g. a likelihood as the distance).
    An attack that reconstructs by itself returns ``images`` (and ``labels``) instead."""

    gradient: Gradient
    mute_mask: Tensor | None = None
    detection: dict[str, float] = field(default_factory=dict)
    overrides: dict[str, object] = field(default_factory=dict)
    images: Tensor | None = None
    labels: Tensor | None = None


class AdaptiveAttack(ABC):
    """Prepares an observation for the matching engine; ``rounds`` observations are needed."""

    name: ClassVar[str]
    #: knows the client's secret: an upper bound for evaluation, never counted in a verdict
    oracle: ClassVar[bool] = False
    #: returns images itself (:attr:`Prepared.images`) instead of a gradient for the engine
    reconstructs: ClassVar[bool] = False
    #: the largest batch it can attack (None: any)
    max_batch_size: ClassVar[int | None] = None
    rounds: int = 1

    @classmethod
    @abstractmethod
    def applies_to(cls, defense: Defense) -> bool:
        """Whether this attack makes sense against ``defense`` (read from its public description)."""

    @abstractmethod
    def prepare(self, model: nn.Module, observation: Observation, defense: Defense,
                public_data: tuple[Tensor, Tensor]) -> Prepared:
        """``defense`` is the client's defense object, used only for its public description;
        ``public_data`` is data the attacker owns (never the target)."""

    def options(self) -> dict[str, object]:
        """The options this attacker was built with (part of a cell's configuration)."""
        return {}


ADAPTIVE: dict[str, type[AdaptiveAttack]] = {}


def register_adaptive(cls: type[AdaptiveAttack]) -> type[AdaptiveAttack]:
    """Class decorator: make an adaptive attack available by its ``name``."""
    ADAPTIVE[cls.name] = cls
    return cls


def detection_scores(predicted: Tensor, truth: Tensor | None) -> dict[str, float]:
    """Element-level precision and recall of a predicted noisy mask against the secret one."""
    if truth is None:
        return {}
    hits = float((predicted & truth).sum())
    return {"precision": hits / max(1.0, float(predicted.sum())), "recall": hits / max(1.0, float(truth.sum())),
            "noisy_fraction": float(truth.float().mean())}


def _leaves_clean_elements(defense: Defense) -> bool:
    noise = defense.noise_model()
    return noise is not None and noise.fraction < 1


@register_adaptive
class OracleMute(AdaptiveAttack):
    name = "oracle-mute"
    oracle = True

    @classmethod
    def applies_to(cls, defense):
        return _leaves_clean_elements(defense)

    def prepare(self, model, observation, defense, public_data):
        if observation.secret_mask is None:
            raise ConfigError(f"{self.name}: this defense reports no noisy elements to an oracle")
        mask = observation.secret_mask
        return Prepared(observation.gradients[0], mask if bool(mask.any()) else None)


@register_adaptive
class DetectMute(AdaptiveAttack):
    """Mute the slices whose mean square is highest: as many as the public noisy fraction says
    get noise."""

    name = "detect-mute"

    @classmethod
    def applies_to(cls, defense):
        return defense.sliced and _leaves_clean_elements(defense)

    def prepare(self, model, observation, defense, public_data):
        noise = defense.noise_model()
        if not defense.sliced or noise is None:
            raise ConfigError(f"{self.name}: needs a defense that puts noise on slices; got {defense!r}")
        gradient = observation.gradients[0]
        # the attacker's own probes for the public risk estimate: seeded, so the attack is a
        # function of its inputs (OS entropy made two runs of one cell differ by ~1e-3 dB)
        bounds = defense.public_slices(gradient, model, public_data, make_generator(0, "detect-mute", "slices"))
        flat = flatten(gradient)
        sizes = (bounds[1:] - bounds[:-1]).tolist()
        energy = torch.stack([part.square().mean() for part in flat.split(sizes)])
        count = max(1, min(len(sizes), round(noise.fraction * len(sizes))))
        muted_slices = energy.topk(count).indices
        mask = torch.zeros_like(flat, dtype=torch.bool)
        for j in muted_slices.tolist():
            mask[bounds[j]:bounds[j + 1]] = True
        return Prepared(gradient, mask, detection_scores(mask, observation.secret_mask))


@register_adaptive
class CompensateInvert(AdaptiveAttack):
    """Denoise one client's gradient (weight 1) with the server's compensator or, when the
    server runs none, with spectral shrinkage at the defense's public noise level."""

    name = "compensate-invert"

    @classmethod
    def applies_to(cls, defense):
        return defense.noise_model() is not None

    def prepare(self, model, observation, defense, public_data):
        from ..defenses.compensation import SpectralShrinkage

        compensator = defense.compensator()
        noise = defense.noise_model()
        if compensator is None and noise is not None and noise.std > 0:
            compensator = SpectralShrinkage(noise.std, noise.fraction)
        if compensator is None:
            raise ConfigError(f"{self.name}: {defense!r} has no public noise level to denoise against")
        gradient = observation.gradients[0]
        return Prepared(compensator.compensate(gradient, torch.ones(1, dtype=torch.float64)))


@register_adaptive
class MultiRound(AdaptiveAttack):
    """Combine several noisy observations of one gradient: agreeing values, else the mean."""

    name = "multi-round"

    def __init__(self, rounds: int = 4, tolerance: float = 1e-7):
        if rounds < 2:
            raise ConfigError(f"{self.name}: rounds must be >= 2, got {rounds}")
        self.rounds, self.tolerance = rounds, tolerance

    @classmethod
    def applies_to(cls, defense):
        return defense.noise_model() is not None

    def options(self) -> dict[str, object]:
        return {"rounds": self.rounds, "tolerance": self.tolerance}

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


@register_adaptive
class MutePerturbed(AdaptiveAttack):
    """Leave out every gradient element of the parameters the defense perturbs in a public,
    fixed pattern (for Soteria, the last linear layer's weight)."""

    name = "mute-perturbed"

    @classmethod
    def applies_to(cls, defense):
        return defense.perturbed_parameters() is not None

    def prepare(self, model, observation, defense, public_data):
        perturbed = set(defense.perturbed_parameters() or ())
        names = param_names(model)
        missing = perturbed - set(names)
        if missing:
            raise ConfigError(f"{self.name}: the model has no parameters {sorted(missing)}")
        gradient = observation.gradients[0]
        mask = torch.cat([torch.full((g.numel(),), name in perturbed, dtype=torch.bool)
                          for name, g in zip(names, gradient)])
        return Prepared(gradient, mask)


@register_adaptive
class NoiseAware(AdaptiveAttack):
    """Match with the likelihood of the defense's public noise model; leave out zeroed entries."""

    name = "noise-aware"

    @classmethod
    def applies_to(cls, defense):
        return True  # without noise or zeroed entries it is the base attack, so it bounds every defense

    def prepare(self, model, observation, defense, public_data):
        gradient = observation.gradients[0]
        flat = flatten(gradient)
        mask = (flat == 0) if defense.sparsifies else None
        if mask is not None and (not bool(mask.any()) or bool(mask.all())):
            mask = None
        kept = flat.numel() - (int(mask.sum()) if mask is not None else 0)
        noise = defense.noise_model(batch_size=observation.batch_size)
        overrides: dict[str, object] = {}
        if noise is not None and noise.std > 0:
            if noise.distribution == "laplace":  # -log p = |g - o| / b, b = std / sqrt 2
                overrides = {"distance": "l1", "distance_scale": 2 ** 0.5 / (noise.std * kept)}
            else:  # -log p = (g - o)^2 / (2 sigma^2)
                overrides = {"distance": "l2", "distance_scale": 1.0 / (2 * noise.std ** 2 * kept)}
        return Prepared(gradient, mask, overrides=overrides)


def adaptive_attack(name: str, **options) -> AdaptiveAttack:
    """Build the adaptive attack registered as ``name``; an unknown name or option is a ConfigError."""
    if name not in ADAPTIVE:
        raise ConfigError(f"adaptive attack: unknown name {name!r}; choose one of {sorted(ADAPTIVE)}")
    try:
        return ADAPTIVE[name](**options)
    except TypeError as exc:
        raise ConfigError(f"adaptive attack {name!r}: {exc}") from None
