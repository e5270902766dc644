"""``Attack``: reconstruct a client's batch from its (possibly defended) gradient.

The attacker sees only what the threat model allows (docs/design.md section 3): the model, the
observed gradient, the image shape and the batch size, plus the labels when the config says
they are given. Ground truth never enters here; the caller scores the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError, config_errors
from ..grads import Gradient, param_names, trainable_parameters
from ..rng import make_generator
from .config import AttackConfig
from .labels import idlg_labels, last_linear
from .matching import GradientMatcher, matching_weights, per_target_weights
from .optimizers import OPTIMIZERS

Progress = Callable[[int, Tensor], None] | None


@dataclass(frozen=True)
class Reconstruction:
    """One attacked batch: images (B, C, H, W) in pixel space (unclamped unless boxed), labels
    (B,) and the gradient distance of the best restart (the restart kept)."""

    images: Tensor
    labels: Tensor
    matching_loss: float


class Attack:
    """A gradient-matching attack with a validated :class:`AttackConfig`."""

    def __init__(self, config: AttackConfig | None = None, **options):
        if config is None:
            with config_errors("attack"):
                config = AttackConfig(**options)
        self.config = config

    @classmethod
    def from_config(cls, name: str, **overrides) -> Attack:
        """The preset ``name`` (see :data:`ATTACKS`) with ``overrides`` applied and validated."""
        from .presets import ATTACKS

        if name not in ATTACKS:
            raise ConfigError(f"attack: unknown name {name!r}; choose one of {sorted(ATTACKS)}")
        with config_errors(f"attack {name!r}"):
            return cls(AttackConfig(**{**ATTACKS[name].model_dump(), **overrides}))

    def reconstruct(self, model: nn.Module, observed: Gradient, image_shape: Sequence[int], batch_size: int,
                    labels: Tensor | None = None, *, generator: torch.Generator | None = None,
                    progress: Progress = None) -> Reconstruction:
        """Reconstruct one batch of ``batch_size`` images from its observed gradient."""
        return self.reconstruct_many(model, [observed], image_shape, batch_size,
                                     None if labels is None else [labels], generator=generator, progress=progress)[0]

    def reconstruct_many(self, model: nn.Module, observed: Sequence[Gradient], image_shape: Sequence[int],
                         batch_size: int, labels: Sequence[Tensor] | None = None, *,
                         generator: torch.Generator | None = None, progress: Progress = None,
                         mute_masks: Sequence[Tensor | None] | None = None,
                         distance_scales: Sequence[float] | None = None) -> list[Reconstruction]:
        """Reconstruct several independent batches (targets) in one vectorised optimisation.

        Each observed gradient gets ``restarts`` independent runs; the run with the lowest
        gradient distance is kept. Starting points are drawn target after target from
        ``generator``, so attacking targets together or one after another with the same
        generator gives the same result. ``progress(iteration, distances)`` is called after
        every iteration with the current gradient distance of every run.

        ``mute_masks`` and ``distance_scales`` (one per target) are what an adaptive attacker
        prepares for each target: target k is matched as an attack whose config has
        ``mute_mask`` = ``mute_masks[k]`` (or-ed with the config's own) and
        ``distance_scale`` times ``distance_scales[k]`` would match it alone.
        """
        config = self.config
        names = param_names(model)
        reference = trainable_parameters(model)
        _check_observed(observed, reference)
        restarts, images_count = config.restarts, len(observed)
        stacked = [torch.stack([obs[i].detach() for obs in observed]).repeat_interleave(restarts, 0)
                   for i in range(len(reference))]
        shapes = [p.shape for p in reference]
        if mute_masks is None:
            weights = matching_weights(names, shapes, config)
        else:
            if len(mute_masks) != images_count:
                raise ConfigError(f"attack: {len(mute_masks)} mute masks for {images_count} targets")
            own = config.mute_mask
            weights = per_target_weights(
                [matching_weights(names, shapes, config if mask is None else config.model_copy(
                    update={"mute_mask": mask if own is None else mask | own.to(mask.device)}))
                 for mask in mute_masks],
                shapes, restarts)
        scales = None
        if distance_scales is not None:
            if len(distance_scales) != images_count or min(distance_scales) <= 0:
                raise ConfigError(f"attack: distance_scales needs one number > 0 per target ({images_count}), "
                                  f"got {list(distance_scales)}")
            scales = torch.tensor(distance_scales, dtype=torch.float64).repeat_interleave(restarts)
        hard = self._hard_labels(model, reference, observed, batch_size, labels)
        generator = generator if generator is not None else make_generator(None, "attack")  # OS entropy
        classes = last_linear(model).out_features
        shape = (batch_size, *image_shape)
        dtype, device = reference[0].dtype, reference[0].device
        starts, label_vars = [], []
        for _ in range(images_count * restarts):
            starts.append(_initial_images(config, shape, generator, dtype).to(device))
            if hard is None:
                label_vars.append(torch.randn(batch_size, classes, generator=generator, dtype=dtype,
                                              device=generator.device).to(device))
        init_labels = torch.stack(label_vars) if hard is None else hard.repeat_interleave(restarts, 0)
        matcher = GradientMatcher(model, stacked, weights, config, scales)
        images, label_state = OPTIMIZERS[config.optimizer](matcher, torch.stack(starts), init_labels, config, progress)
        _, distances = matcher.objective(images, label_state)
        if not bool(torch.isfinite(distances).all()):
            largest = max(float(g.abs().max()) for g in stacked)
            raise ConfigError(f"attack: the gradient distance overflows float32 (the observed gradient reaches "
                              f"{largest:.3g}), so the optimiser cannot take a step and a score would be that of "
                              f"its starting point; a defense option this large means nothing: lower it")
        return _best_restarts(images, label_state, distances.detach(), images_count, restarts)

    def _hard_labels(self, model, reference, observed, batch_size, labels) -> Tensor | None:
        """(targets, B) labels when they are recovered or given; None when learned."""
        mode = self.config.labels
        if mode == "idlg-or-given":
            mode = "idlg" if batch_size == 1 else "given"
        if mode == "learned":
            return None
        if mode == "idlg":
            weight = last_linear(model).weight
            index = next(i for i, p in enumerate(reference) if p is weight)
            return torch.stack([idlg_labels(obs[index], batch_size) for obs in observed])
        if labels is None or len(labels) != len(observed):
            raise ConfigError(f"attack: labels='{self.config.labels}' at batch size {batch_size} needs the labels "
                              f"of each of the {len(observed)} targets")
        for given in labels:
            if given.shape != (batch_size,):
                raise ConfigError(f"attack: given labels must have shape ({batch_size},), got {tuple(given.shape)}")
        return torch.stack([given.long() for given in labels]).to(reference[0].device)

    def __repr__(self) -> str:
        return f"Attack({self.config!r})"


# Drawn on the generator's device (a CUDA generator draws only there), then moved to the model's.
INITIALISERS = {
    "randn": lambda shape, g, dtype, value: torch.randn(shape, generator=g, dtype=dtype, device=g.device),
    "uniform": lambda shape, g, dtype, value: torch.rand(shape, generator=g, dtype=dtype, device=g.device),
    "constant": lambda shape, g, dtype, value: torch.full(shape, value, dtype=dtype, device=g.device),
}


def _initial_images(config: AttackConfig, shape, generator, dtype) -> Tensor:
    return INITIALISERS[config.init](shape, generator, dtype, config.init_value)


def _check_observed(observed: Sequence[Gradient], reference: Sequence[Tensor]) -> None:
    if not observed:
        raise ConfigError("attack: no observed gradient given")
    for k, gradient in enumerate(observed):
        if len(gradient) != len(reference) or any(g.shape != p.shape for g, p in zip(gradient, reference)):
            raise ConfigError(f"attack: observed gradient {k} does not have the model's parameter shapes "
                              f"({len(gradient)} tensors for {len(reference)} parameters)")
        if not all(bool(torch.isfinite(g).all()) for g in gradient):
            # Matching against inf stops the optimiser at once; a score of its start would look valid.
            raise ConfigError(f"attack: observed gradient {k} holds NaN or inf values (a defense option too large "
                              f"for float32?); there is nothing to match against")


def _best_restarts(images: Tensor, labels: Tensor, distances: Tensor, count: int,
                   restarts: int) -> list[Reconstruction]:
    """Per target, the restart with the lowest gradient distance (never judged against the truth)."""
    best = distances.view(count, restarts).argmin(1) + torch.arange(count, device=distances.device) * restarts
    predicted = labels.argmax(-1) if labels.is_floating_point() else labels
    return [Reconstruction(images[i], predicted[i], float(distances[i])) for i in best.tolist()]
