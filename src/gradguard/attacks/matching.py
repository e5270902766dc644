"""The gradient-matching objective for many independent targets at once.

A target is one attack run: a dummy batch (B images, plus soft labels when they are learned)
whose gradient should match one observed gradient. T targets are stacked on a leading axis
and evaluated together: with T > 1 the per-target parameter gradients come from
``vmap(grad(loss))`` over ``functional_call`` (one vectorised pass); with T = 1 the same
quantity comes from plain ``torch.autograd.grad``, which skips vmap's dispatch overhead and
keeps a single attack as fast as a hand-written loop. Both paths share the distances below.
"""

from __future__ import annotations

import copy
import functools
import operator
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..errors import ConfigError
from ..grads import is_batchnorm, trainable_named_parameters
from .config import AttackConfig

# Per-element weight of one gradient tensor in the matching: None (muted: left out entirely),
# a number (the layer weight) or a tensor shaped like the gradient (weights x kept elements).
Weight = float | Tensor | None


def matching_weights(names: Sequence[str], shapes: Sequence[torch.Size], config: AttackConfig) -> list[Weight]:
    """Resolve layer weights and muting (names, indices, element mask) into one weight per tensor."""
    count = len(names)
    weights: list[Weight] = list(config.layer_weights) if config.layer_weights is not None else [1.0] * count
    if len(weights) != count:
        raise ConfigError(f"attack: layer_weights has {len(weights)} entries, the model has {count} gradient tensors")
    for entry in config.mute:
        if isinstance(entry, int):
            if not -count <= entry < count:
                raise ConfigError(f"attack: mute index {entry} out of range [0, {count})")
            weights[entry] = None
        elif entry in names:
            weights[names.index(entry)] = None
        else:
            raise ConfigError(f"attack: mute name {entry!r} is not a parameter; choose from {list(names)}")
    if config.mute_mask is not None:
        weights = _apply_element_mask(weights, shapes, config.mute_mask)
    weights = [None if isinstance(w, float) and w == 0.0 else w for w in weights]
    if all(w is None for w in weights):
        raise ConfigError("attack: every gradient element is muted or weighted 0; nothing is left to match")
    return weights


def _apply_element_mask(weights: list[Weight], shapes, mask: Tensor) -> list[Weight]:
    sizes = [s.numel() for s in shapes]
    if mask.numel() != sum(sizes):
        raise ConfigError(f"attack: mute_mask has {mask.numel()} elements, the gradient has {sum(sizes)}")
    out: list[Weight] = []
    for weight, muted, shape in zip(weights, mask.split(sizes), shapes):
        if weight is None or bool(muted.all()):
            out.append(None)
        elif not bool(muted.any()):
            out.append(weight)
        else:
            out.append((~muted).to(torch.get_default_dtype()).view(shape) * weight)
    return out


def per_target_weights(per_target: Sequence[Sequence[Weight]], shapes: Sequence[torch.Size],
                       repeat: int = 1) -> list[Weight]:
    """One weight per gradient tensor from each target's own weights (``matching_weights`` of its
    mute mask): a tensor every target mutes stays None (not differentiated), one all targets
    weigh alike keeps that weight, any other gets a leading target axis (each target's weight,
    0 where it mutes), each repeated ``repeat`` times (its restarts). Matching with these weights
    is matching each target alone with its own, since the objective is a sum over targets."""
    out: list[Weight] = []
    for i, shape in enumerate(shapes):
        column = [weights[i] for weights in per_target]
        first = column[0]
        if all(w is None for w in column):
            out.append(None)
        elif isinstance(first, float) and all(isinstance(w, float) and w == first for w in column):
            out.append(first)
        else:
            # the fillers take a mask's device and dtype (none: muted in some targets, a layer weight in others)
            like = next((w for w in column if isinstance(w, Tensor)), None)
            new = {"dtype": torch.get_default_dtype(), "device": None} if like is None else \
                {"dtype": like.dtype, "device": like.device}
            dense = [torch.zeros(shape, **new) if w is None else torch.full(shape, w, **new) if isinstance(w, float)
                     else w for w in column]
            out.append(torch.stack(dense).repeat_interleave(repeat, 0))
    return out


def _rows(weights: Sequence[Weight], observed: Sequence[Tensor], rows: Tensor | None) -> list[Weight]:
    """The weights of the targets in ``rows``: a weight with a target axis (one more dimension
    than the gradient tensor) is indexed; a shared one is kept."""
    if rows is None:
        return list(weights)
    return [w[rows] if isinstance(w, Tensor) and w.dim() == o.dim() else w for w, o in zip(weights, observed)]


def _total(terms: Iterable[Tensor]) -> Tensor:
    """``sum(terms)`` in the same order, typed as a tensor (``sum`` starts from the int 0)."""
    return functools.reduce(operator.add, terms)


def _weighted_sum(values: Tensor, weight: Weight) -> Tensor:
    """Sum over every axis but the leading target axis, each element times its weight."""
    if isinstance(weight, Tensor):
        values = values * weight
    total = values.flatten(1).sum(1)
    return total * weight if isinstance(weight, float) and weight != 1.0 else total


class L2Distance:
    """DLG: sum of squared differences, per target."""

    def __init__(self, observed: Sequence[Tensor], weights: Sequence[Weight]):
        self.observed, self.weights = list(observed), list(weights)

    def __call__(self, trial: Sequence[Tensor], rows: Tensor | None = None) -> Tensor:
        observed = self.observed if rows is None else [o[rows] for o in self.observed]
        weights = _rows(self.weights, self.observed, rows)
        return _total(_weighted_sum((t - o).square(), w) for t, o, w in zip(trial, observed, weights))


class L1Distance(L2Distance):
    """Sum of absolute differences, per target (the negative log-likelihood of Laplace noise, up to scale)."""

    def __call__(self, trial: Sequence[Tensor], rows: Tensor | None = None) -> Tensor:
        observed = self.observed if rows is None else [o[rows] for o in self.observed]
        weights = _rows(self.weights, self.observed, rows)
        return _total(_weighted_sum((t - o).abs(), w) for t, o, w in zip(trial, observed, weights))


class CosineDistance:
    """Inverting Gradients: 1 - cosine similarity of the whole (weighted) gradients, per target.
    The observed gradient's norm is computed once."""

    def __init__(self, observed: Sequence[Tensor], weights: Sequence[Weight]):
        self.observed, self.weights = list(observed), list(weights)
        self.observed_norm = _total(_weighted_sum(o.square(), w) for o, w in zip(observed, weights)).sqrt()

    def __call__(self, trial: Sequence[Tensor], rows: Tensor | None = None) -> Tensor:
        observed = self.observed if rows is None else [o[rows] for o in self.observed]
        observed_norm = self.observed_norm if rows is None else self.observed_norm[rows]
        weights = _rows(self.weights, self.observed, rows)
        dot = _total(_weighted_sum(t * o, w) for t, o, w in zip(trial, observed, weights))
        trial_norm = _total(_weighted_sum(t.square(), w) for t, w in zip(trial, weights)).sqrt()
        return 1.0 - dot / (trial_norm * observed_norm).clamp_min(1e-30)


DISTANCES: dict[str, type[L2Distance] | type[CosineDistance]] = {"l2": L2Distance, "cosine": CosineDistance,
                                                                 "l1": L1Distance}


def total_variation(images: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels (Inverting Gradients' TV), per target.
    ``images`` is (T, B, C, H, W)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def soft_cross_entropy(logits: Tensor, label_logits: Tensor) -> Tensor:
    """DLG's loss for learned labels: cross-entropy against softmax(label_logits), batch mean."""
    return torch.mean(torch.sum(-F.softmax(label_logits, -1) * F.log_softmax(logits, -1), -1))


class GradientMatcher:
    """The objective of T targets: distance(gradient of the dummy batch, observed) + TV.

    ``observed`` holds one tensor per parameter with a leading target axis; ``weights`` comes
    from :func:`matching_weights` (shared by the targets) or :func:`per_target_weights`. Muted
    tensors are neither differentiated nor compared. ``scales`` (T,), when given, multiplies
    each target's distance on top of ``config.distance_scale`` (a likelihood's scale that
    depends on the target's kept elements).

    The matcher works on its own copy of the model whose BatchNorm layers do not track running
    statistics: in train mode they still normalise with batch statistics (the same outputs and
    gradients as the client's forward pass), but they no longer update buffers in place, which
    the caller's model must not see and which function transforms cannot batch.
    """

    def __init__(self, model: nn.Module, observed: Sequence[Tensor], weights: Sequence[Weight], config: AttackConfig,
                 scales: Tensor | None = None):
        self.model = copy.deepcopy(model)
        for module in self.model.modules():
            if is_batchnorm(module):
                module.track_running_stats = False
        named = trainable_named_parameters(self.model)
        kept = [i for i, w in enumerate(weights) if w is not None]
        self.targets = observed[0].shape[0]
        kept_weights = [w.to(observed[i]) if isinstance(w, Tensor) else w for i, w in enumerate(weights) if i in kept]
        self.distance = DISTANCES[config.distance]([observed[i] for i in kept], kept_weights)
        self.distance_scale = config.distance_scale
        self.scales = None if scales is None else scales.to(observed[0])
        self.tv_weight = config.tv_weight
        self.kept_params = [named[i][1] for i in kept]
        self.kept = {named[i][0]: named[i][1].detach() for i in kept}
        self.frozen = {n: p.detach() for i, (n, p) in enumerate(named) if i not in kept}
        self._vmapped = vmap(grad(self._functional_loss), in_dims=(None, 0, 0))

    @staticmethod
    def _loss(logits: Tensor, labels: Tensor) -> Tensor:
        return soft_cross_entropy(logits, labels) if labels.is_floating_point() else F.cross_entropy(logits, labels)

    def _functional_loss(self, kept: dict[str, Tensor], images: Tensor, labels: Tensor):
        return self._loss(functional_call(self.model, {**kept, **self.frozen}, (images,)), labels)

    def parameter_gradients(self, images: Tensor, labels: Tensor) -> list[Tensor]:
        """Gradient of each target's loss w.r.t. the kept parameters, differentiable w.r.t. the dummies."""
        if images.shape[0] > 1:
            return list(self._vmapped(self.kept, images, labels).values())
        loss = self._loss(self.model(images[0]), labels[0])
        return [g.unsqueeze(0) for g in torch.autograd.grad(loss, self.kept_params, create_graph=True)]

    def objective(self, images: Tensor, labels: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(objective, gradient distance), each of shape (T,). ``images`` is (T, B, C, H, W);
        ``labels`` is (T, B) class indices or (T, B, classes) soft-label logits. With ``rows``
        the inputs hold only those targets (stopped targets need no evaluation)."""
        distance = self.distance(self.parameter_gradients(images, labels), rows)
        if self.distance_scale != 1.0:
            distance = distance * self.distance_scale
        if self.scales is not None:
            distance = distance * (self.scales if rows is None else self.scales[rows])
        if self.tv_weight:
            return distance + self.tv_weight * total_variation(images), distance
        return distance, distance
