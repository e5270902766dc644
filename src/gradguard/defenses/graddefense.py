"""``graddefense``: local random slice perturbation with global update compensation
(Wang, Guo, Xie, Qi, INFOCOM 2022), as docs/design.md section 2 specifies it.

Per client and round: cut the flat gradient into S contiguous slices of equal leakage risk
(or one slice per layer), pick k of them uniformly at random from the client's own generator,
optionally clip each chosen slice to L2 norm C, and add Gaussian noise to every element of the
chosen slices. The risks, and therefore the slice bounds, are recomputed every R rounds on a
root set of a few samples per class from the client's own data, and cached per client. The
server undoes part of the noise with :meth:`GradDefense.compensator`.

Noise level, two modes:
- absolute (``clip=None``, the paper's): the noise std is ``sigma`` in gradient units, so its
  meaning changes with the model, the data and the round;
- relative (``clip=C``): each chosen slice is first scaled to L2 norm at most C (the paper's
  optional clipping, made first-class) and the noise std is ``sigma * C``: sigma is a noise
  multiplier, as in DP-SGD. ``clip_per_sample`` clips each sample's part of a chosen slice
  instead (needs per-sample gradients; bounds what one sample adds).

Noise allocation: ``uniform`` (every chosen element the same std) or ``risk``: each chosen
slice's std scales with its risk density (risk per element) to the power ``risk_exponent``,
normalised so that the total noise power over the chosen slices equals the uniform one
(more noise where a slice leaks more, the same noise budget).

Deviations from the original code, and why:
- risk probes are random (Hutchinson) by default; the original all-ones probe gives the last
  linear layer zero risk under cross-entropy (kept as ``sensitivity="ones"``);
- slices are disjoint, non-empty and covering (the original overlaps neighbours and can make
  empty slices);
- noise is added per slice in one vectorised draw, not element by element in a Python loop;
- noise comes from an explicit generator (OS entropy by default), not a module-seeded ``random``;
- the server uses the plain average by default: on real LeNet training both the paper's
  Marchenko-Pastur filter (with the correct variance, ``compensation="mp"``) and our per-tensor
  spectral shrinkage (``"shrink"``) bring each round's aggregate closer to the clean one, yet
  both cost far more final accuracy than the noise itself (docs/defenses.md has the numbers);
  ``"mp-original"`` keeps the original code's (wrong) variance for comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from ..errors import ConfigError
from ..grads import flatten, flatten_batched, param_names, per_sample_gradients, unflatten
from ..rng import keyed_generator, new_secret
from .base import (
    Compensator,
    Defense,
    DefenseConfig,
    DefenseContext,
    Gradient,
    NoiseModel,
    Strength,
    check_finite,
    check_rows,
    check_rows_finite,
    register,
)
from .compensation import MarchenkoPastur, SpectralShrinkage
from .rng import choose, generator_for, normal, normal_into
from .sensitivity import root_set, tensor_risks
from .slicing import SliceLayout, check_slice_count, equal_bounds, group_bounds, risk_balanced_bounds


class GradDefenseConfig(DefenseConfig):
    """Options of ``graddefense``; defaults are explained in docs/defenses.md."""

    sigma: float = Field(0.2, ge=0, description="noise level: with clip=C (the default) the noise multiplier, std "
                                                "sigma * C on every element of a chosen slice; without clip the std "
                                                "itself, in gradient units")
    slices: int = Field(10, ge=1, description="S: how many slices the gradient is cut into")
    chosen: int = Field(10, ge=1, description="k: how many of the S slices get noise, picked at random per client "
                                              "and round (default k = S: see 'hardened' in docs/defenses.md)")
    slicing: Literal["risk", "layers"] = Field(
        "risk", description="'risk': S contiguous slices of equal leakage risk; 'layers': one slice per layer "
                            "(then round(k*L/S) of the L layers get noise, at least one)")
    sensitivity: Literal["hutchinson", "ones", "uniform"] = Field(
        "uniform", description="how leakage risk is measured: 'hutchinson' (random probes, the paper's idea), 'ones' "
                               "(the original code's all-ones probe), 'uniform' (every element equal: equal-size "
                               "slices, no model needed; the default, see docs/defenses.md)")
    probes: int = Field(1, ge=1, le=64, description="random probes per tensor for the Hutchinson risk estimate "
                                                    "(one is enough on LeNet: <= 6% relative std per tensor)")
    refresh_every: int = Field(10, ge=1, description="R: recompute the risks every R rounds")
    root_per_class: int = Field(2, ge=1, le=64, description="root-set samples per class used to measure risk")
    clip: float | None = Field(1.0, gt=0, description="C: each chosen slice is scaled to L2 norm at most C and the "
                                                      "noise std is sigma * C (relative mode); none: absolute sigma")
    clip_per_sample: bool = Field(False, description="with clip: clip each sample's part of a chosen slice instead "
                                                     "of the batch's (needs per-sample gradients)")
    allocation: Literal["uniform", "risk"] = Field(
        "uniform", description="'uniform': the same std on every chosen element; 'risk': each chosen slice's std "
                               "scales with its risk per element ** risk_exponent, total noise power unchanged")
    risk_exponent: float = Field(0.5, ge=0, le=4, description="the exponent of allocation='risk' (0: uniform)")
    compensation: Literal["none", "shrink", "mp", "mp-original"] = Field(
        "none", description="server-side estimate of the clean aggregate: 'none' (the plain average: best final "
                            "accuracy in our measurements), 'shrink' (per-tensor spectral shrinkage: lowest error "
                            "per round), 'mp' (the paper's Marchenko-Pastur filter, correct variance), "
                            "'mp-original' (the same with the original code's variance)")
    mp_ratio: float = Field(4.0, ge=1, description="Q: aspect ratio v/w of the matrix the MP filter reshapes the "
                                                   "update into")
    memoize: bool = Field(True, description="the same clean gradient always gets the same noise (seeded from a "
                                            "client secret and a hash of the gradient), so an attacker who sees "
                                            "it several times cannot average the noise away")

    @model_validator(mode="after")
    def _consistent(self):
        if self.chosen > self.slices:
            raise ConfigError(f"graddefense: chosen (k) = {self.chosen} must be at most slices (S) = {self.slices}")
        if self.clip_per_sample and self.clip is None:
            raise ConfigError("graddefense: clip_per_sample needs clip=C (the norm each sample's part is clipped to)")
        if self.allocation == "risk" and self.sensitivity == "uniform" and self.slicing == "risk":
            raise ConfigError("graddefense: allocation='risk' needs a risk measure: sensitivity='hutchinson' or "
                              "'ones', or slicing='layers'")
        return self

    @property
    def noise_std(self) -> float:
        """The noise std of a uniformly allocated element, in gradient units."""
        return self.sigma * (self.clip if self.clip is not None else 1.0)


class GradDefensePaperConfig(GradDefenseConfig):
    """The paper's configuration: k = 5 of S = 10 risk-balanced slices, absolute noise, fresh
    noise every time."""

    sigma: float = Field(0.3, ge=0, description="std of the Gaussian noise added to every element of a chosen slice "
                                                "(absolute, in gradient units)")
    sensitivity: Literal["hutchinson", "ones", "uniform"] = Field(
        "hutchinson", description="how leakage risk is measured (the paper: input sensitivity, here with random "
                                  "Hutchinson probes)")
    clip: float | None = Field(None, gt=0, description="C: the paper's clipping is optional and off here "
                                                       "(absolute sigma)")
    chosen: int = Field(5, ge=1, description="k: how many of the S slices get noise, picked at random per client "
                                             "and round")
    memoize: bool = Field(False, description="fresh noise on every call, as in the paper")


@dataclass
class _ClientState:
    """What one client caches between risk refreshes."""

    layout: SliceLayout  # the S slices and their per-slice operations
    density: Tensor | None  # risk per element of each slice (for allocation="risk")
    refreshed: int  # round of the last refresh
    fixed: bool = False  # slices that never change (one slice, or equal sizes): never refreshed

    @property
    def bounds(self) -> Tensor:
        """S + 1 slice bounds into the flat gradient."""
        return self.layout.bounds

    @property
    def size(self) -> int:
        return self.layout.size


@register
class GradDefense(Defense):
    """Noise on k random risk-balanced slices of S; see the module docstring."""

    name = "graddefense"
    Config = GradDefenseConfig
    config: GradDefenseConfig
    needs_batch = True
    strength: ClassVar[Strength | None] = Strength(option="sigma", low=1e-3, high=3.0)
    sliced = True

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self._clients: dict[int, _ClientState] = {}
        self._secrets: dict[int, bytes] = {}
        self._shared: dict[int, _ClientState] = {}  # slices common to every client, per gradient size
        self._padding: dict[int, Tensor] = {}  # zeros that pad the flat gradient for equal slices
        self._fraction = self.config.chosen / self.config.slices

    @property
    def noisy_fraction(self) -> float:
        """Chance that a given element gets noise: k/S (for layer slicing, the effective k/L)."""
        return self._fraction

    def defend(self, grads, context: DefenseContext) -> Gradient:
        return unflatten(self._perturb(grads, context, secret=False)[0], grads)

    def defend_with_secret(self, grads, context: DefenseContext) -> tuple[Gradient, Tensor]:
        """The defended gradient and the mask of the elements that got noise (the secret)."""
        flat, mask = self._perturb(grads, context, secret=True)
        assert mask is not None
        return unflatten(flat, grads), mask

    def _perturb(self, grads, context: DefenseContext, *, secret: bool) -> tuple[Tensor, Tensor | None]:
        """The defended flat gradient and, with ``secret``, the mask of the noisy elements.

        Everything per slice is one tensor operation over all slices (:class:`SliceLayout`:
        equal-size slices are the rows of one matrix view of the flat gradient, padded with
        fewer than S zeros); the noise is one draw, already scaled when every slice gets the
        same std, and the result is written into it (clip factor times gradient plus noise in
        one pass). A client step runs this after a backward pass has evicted every cache, so
        each tensor operation costs tens of microseconds: the default path uses seven."""
        c = self.config
        size = sum(g.numel() for g in grads)
        state = self._fixed_state(size, context)
        padding = state.layout.padding if state is not None else 0
        # a new tensor (the input is never written), padded for the row view of equal slices
        flat = flatten([*grads, self._zeros(padding)]) if padding else flatten(grads)
        generator = self._memoized(flat, context) if c.memoize else generator_for(context)
        if state is None:
            state = self._state(grads, context, generator)
        layout = state.layout
        count = self.chosen_count(layout.count)
        chosen = None  # k = S: nothing to draw, every slice is chosen
        if count < layout.count:
            chosen = torch.zeros(layout.count, dtype=torch.bool)
            chosen[choose(count, layout.count, generator)] = True
        stds = self._stds(state, chosen)
        if isinstance(stds, float):
            noise = normal(flat.numel(), generator, flat, std=stds)  # one draw for the whole gradient
        else:
            noise = layout.scale_(normal(flat.numel(), generator, flat), stds)
        if c.clip is not None and chosen is None and not c.clip_per_sample and flat.numel() == layout.padded:
            # the default: every slice (a row of the padded flat gradient) scaled to norm <= C in one operation
            out = noise.add_(layout.rows(flat).renorm_(2, 0, c.clip).view(-1))
        else:
            factor = self._clip(flat, layout, chosen, context) if c.clip is not None else None
            out = noise.add_(flat if factor is None else layout.scale_(flat, factor))
        # one reduction of the result: NaN or inf in the gradient leaves NaN or inf here (a clipped
        # inf becomes NaN); only then the exact per-tensor check, which raises
        self._check_finite(float(out.sum()), grads)
        out = out[:size] if padding else out
        if not secret:
            return out, None
        mask = torch.ones(size, dtype=torch.bool) if chosen is None else layout.expand(chosen)
        return out, mask

    def defend_rows(self, rows, like, contexts):
        """Every client's row at once where the slices are shared (equal-size or none) and every
        slice gets noise, as by default: one padding copy, one keyed hash and one draw per
        client, one row-wise renorm, one add and one finiteness check over the matrix. Other
        configurations defend row by row (the base class)."""
        check_rows(rows, contexts)
        c = self.config
        size = rows.shape[1]
        state = self._fixed_state(size, contexts[0]) if contexts and not self.reads_context() else None
        if (state is None or self.chosen_count(state.layout.count) < state.layout.count
                or (c.clip is not None and (c.clip_per_sample or state.layout.stride is None))):
            return super().defend_rows(rows, like, contexts)
        layout, stride = state.layout, state.layout.stride
        for context in contexts[1:]:
            self._clients[context.client] = state
        flat = layout.pad(rows) if layout.padding else rows.clone()  # our own (n, P + padding)
        noise = torch.empty_like(flat)  # row i: client i's draw, written in place
        for row, out, context in zip(flat, noise, contexts):
            normal_into(out, self._memoized(row, context) if c.memoize else generator_for(context), c.noise_std)
        if c.clip is None:
            out = noise.add_(flat)
        else:  # every slice of every client (a row of the (n * S, L) view) scaled to norm <= C at once
            assert stride is not None
            out = noise.add_(flat.view(-1, stride).renorm_(2, 0, c.clip).view_as(flat))
        if not math.isfinite(float(out.sum())):
            check_rows_finite(rows, like, self.name)
        return out[:, :size] if layout.padding else out

    def _check_finite(self, total: float, grads) -> None:
        """A sum over the gradient (or the defended one) is finite unless an element is NaN or
        inf (or the sum overflows): only then the exact per-tensor check, which raises for NaN
        and inf."""
        if not math.isfinite(total):
            check_finite(grads, self.name)

    def _zeros(self, count: int) -> Tensor:
        zeros = self._padding.get(count)
        if zeros is None:
            zeros = self._padding[count] = torch.zeros(count)
        return zeros

    def reads_context(self) -> bool:
        """Only risk estimates, layer slices and per-sample clipping read the model or data; the
        default (equal-size slices, batch clipping) needs the gradient alone."""
        c = self.config
        return c.slicing == "layers" or (c.sensitivity != "uniform" and self._needs_slices()) or c.clip_per_sample

    def noise_model(self, batch_size: int = 1) -> NoiseModel:
        return NoiseModel("gaussian", self.config.noise_std, self._fraction, fresh=not self.config.memoize)

    def compensator(self) -> Compensator | None:
        c = self.config
        if c.compensation == "none":
            return None
        fraction = lambda: self._fraction  # noqa: E731  (layer slicing learns k/L on first use)
        if c.compensation == "shrink":
            return SpectralShrinkage(c.noise_std, fraction)
        variance: Literal["correct", "original"] = "original" if c.compensation == "mp-original" else "correct"
        return MarchenkoPastur(c.noise_std, fraction, variance, ratio=c.mp_ratio)

    def public_slices(self, grads, model, data: tuple[Tensor, Tensor], generator=None) -> Tensor:
        """The S + 1 slice bounds this defense's public code gives for ``model`` and ``data``.

        A client slices with its own root set; an adaptive attacker calls this with data of its
        own to estimate the client's slices (the code and configuration are public), and with a
        generator of its own for the risk estimate's probes, so that its attack is reproducible."""
        context = DefenseContext(model=model, local_data=data, generator=generator)
        return self._slice(grads, context, generator_for(context))[0]

    def chosen_count(self, slice_count: int) -> int:
        """How many of ``slice_count`` slices get noise (k, or its share of the layers)."""
        if self.config.slicing == "risk":
            return self.config.chosen
        return max(1, round(self.config.chosen * slice_count / self.config.slices))

    def slice_stds(self, density: Tensor, lengths: Tensor) -> Tensor:
        """Per-slice noise std of allocation='risk' for slices of ``density`` (risk per element)
        and ``lengths``: proportional to density ** exponent, with the total noise power
        sum(length * std^2) equal to uniform noise's."""
        base = self.config.noise_std
        weight = density.double().clamp_min(1e-30) ** self.config.risk_exponent
        lengths = lengths.double()
        scale = (lengths.sum() / (lengths * weight.square()).sum()).sqrt()
        return (base * weight * scale).float()

    def _stds(self, state: _ClientState, chosen: Tensor | None) -> float | Tensor:
        """The noise std: one number when every chosen element gets the same one and every slice
        is chosen, else per slice (zero for the slices left clean)."""
        base = self.config.noise_std
        if self.config.allocation == "uniform" or state.density is None:
            return base if chosen is None else chosen.to(torch.get_default_dtype()) * base
        stds = torch.zeros(state.layout.count)
        picked = torch.ones(state.layout.count, dtype=torch.bool) if chosen is None else chosen
        stds[picked] = self.slice_stds(state.density[picked], state.layout.lengths[picked])
        return stds

    def _memoized(self, flat: Tensor, context: DefenseContext) -> torch.Generator:
        """A generator seeded from the client's secret and the clean gradient's bytes: the same
        gradient (same model, same batch) always gets the same slices and noise, a different
        one (a single bit differs) gets a stream seeded by an unrelated keyed hash. Without
        this, a server that replays a model to one client averages fresh noise away (the
        permanent randomised response of RAPPOR answers the same threat). The secret is drawn
        once per client (from OS entropy unless the context's generator is seeded) and never
        leaves this object; the hash reads the gradient's memory in place, without a copy."""
        key = self._secrets.get(context.client)
        if key is None:
            key = self._secrets[context.client] = new_secret(generator_for(context))
        return keyed_generator(key, flat.detach().cpu().numpy().data)

    def _needs_slices(self) -> bool:
        """Whether the slice bounds matter: with k = S, uniform noise and no clipping every element
        gets the same noise, and one slice (no risk estimate) gives the same result."""
        c = self.config
        return not (c.slicing == "risk" and c.chosen == c.slices and c.allocation == "uniform" and c.clip is None)

    def _fixed_state(self, size: int, context: DefenseContext) -> _ClientState | None:
        """The slices when they depend on neither the client nor the round (one slice, or S
        equal-size ones): computed once per gradient size and shared; None otherwise."""
        if self._needs_slices() and not self._equal_slices():
            return None
        state = self._shared.get(size)
        if state is None:
            check_slice_count(self.config.slices, size)
            bounds = equal_bounds(size, self.config.slices) if self._needs_slices() else torch.tensor([0, size])
            state = self._shared[size] = _ClientState(SliceLayout(bounds), None, 0, fixed=True)
        self._clients[context.client] = state
        return state

    def _state(self, grads, context: DefenseContext, generator: torch.Generator) -> _ClientState:
        """The client's cached slices, refreshed every R rounds."""
        size = sum(g.numel() for g in grads)
        state = self._clients.get(context.client)
        if (state is None or state.size != size
                or not 0 <= context.round - state.refreshed < self.config.refresh_every):
            bounds, density = self._slice(grads, context, generator)
            state = _ClientState(SliceLayout(bounds), density, context.round)
            self._clients[context.client] = state
        return state

    def _equal_slices(self) -> bool:
        """Whether the slices are S equal-size ones (uniform risk): the same for every client and round."""
        return self.config.slicing == "risk" and self.config.sensitivity == "uniform"

    def _slice(self, grads, context: DefenseContext, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Slice bounds and, for allocation='risk', each slice's risk per element."""
        sizes = torch.tensor([g.numel() for g in grads])
        c = self.config
        if c.slicing == "layers":
            layer_sizes = _layer_sizes(grads, context)
            bounds = group_bounds(layer_sizes)
            self._fraction = self.chosen_count(len(bounds) - 1) / (len(bounds) - 1)
            if c.allocation == "risk":
                risks = self._risks(grads, context, generator)
                return bounds, _slice_density(bounds, risks, sizes)
            return bounds, None
        if self._equal_slices():
            return equal_bounds(int(sizes.sum()), c.slices), None
        risks = self._risks(grads, context, generator)
        bounds = risk_balanced_bounds(risks, sizes, c.slices)
        return bounds, (_slice_density(bounds, risks, sizes) if c.allocation == "risk" else None)

    def _risks(self, grads, context: DefenseContext, generator: torch.Generator) -> Tensor:
        c = self.config
        if c.sensitivity == "uniform":
            return torch.tensor([float(g.numel()) for g in grads], dtype=torch.float64)
        x, y = context.local_data if context.local_data is not None else (context.x, context.y)
        if context.model is None or x is None or y is None:
            raise ConfigError(f"graddefense: sensitivity={c.sensitivity!r} needs context.model and the client's "
                              f"data (local_data, or x and y); pass them or use sensitivity='uniform'")
        x, y = root_set(x, y, c.root_per_class, generator)
        probe: Literal["ones", "hutchinson"] = "ones" if c.sensitivity == "ones" else "hutchinson"
        return tensor_risks(context.model, x, y, probe=probe, probes=c.probes, generator=generator)

    def _clip(self, flat: Tensor, layout: SliceLayout, chosen: Tensor | None, context: DefenseContext) -> Tensor | None:
        """The factor (per slice) that scales each chosen slice of ``flat`` to L2 norm at most C
        (1 for the slices left clean), or None after clip_per_sample has replaced each chosen
        slice of ``flat`` (our own copy) by the mean of the per-sample parts clipped to norm C
        (assumes the gradient is the mean of the per-sample gradients). All slices at once."""
        clip = self.config.clip
        assert clip is not None
        if not self.config.clip_per_sample:
            # S numbers: reading them once and computing min(1, C / norm) in Python costs less
            # than three tensor operations on a cold cache
            norms = layout.norms(flat).tolist()
            picked = [True] * len(norms) if chosen is None else chosen.tolist()
            return torch.tensor([clip / max(n, clip) if p else 1.0 for n, p in zip(norms, picked)],  # zero norm: 1
                                dtype=flat.dtype)
        per_sample = context.per_sample
        if per_sample is None:
            if context.model is None or context.x is None or context.y is None:
                raise ConfigError("graddefense: clip_per_sample needs per-sample gradients: pass "
                                  "context.per_sample, or context.model, x and y")
            per_sample = per_sample_gradients(context.model, context.x, context.y)
        samples = flatten_batched(per_sample).to(flat.dtype)
        if flat.numel() > layout.size:  # padded like flat
            samples = layout.pad(samples)
        clipped = layout.scale_(samples, clip / layout.norms(samples).clamp_(min=clip)).mean(0)
        if chosen is None:
            flat.copy_(clipped)
        else:
            keep = layout.pad(layout.expand(chosen)) if flat.numel() > layout.size else layout.expand(chosen)
            flat.copy_(torch.where(keep, clipped, flat))
        return None


def _slice_density(bounds: Tensor, risks: Tensor, sizes: Tensor) -> Tensor:
    """Risk per element of each slice, each element of tensor l carrying risks[l] / sizes[l]."""
    per_element = torch.repeat_interleave(risks.double() / sizes.double(), sizes)
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), per_element.cumsum(0)])
    lengths = (bounds[1:] - bounds[:-1]).double()
    return (cumulative[bounds[1:]] - cumulative[bounds[:-1]]) / lengths


def _layer_sizes(grads, context: DefenseContext) -> Tensor:
    """Element counts of the model's layers (consecutive tensors sharing a module name), or of
    each tensor when no model is given."""
    if context.model is None:
        return torch.tensor([g.numel() for g in grads])
    layers = [name.rpartition(".")[0] for name in param_names(context.model)]
    sizes: dict[str, int] = {}
    for layer, g in zip(layers, grads):
        sizes[layer] = sizes.get(layer, 0) + g.numel()
    return torch.tensor(list(sizes.values()))


@register
class GradDefensePaper(GradDefense):
    """``graddefense-paper``: the paper's k = 5 of S = 10 with fresh noise, for comparison with
    the hardened default (docs/defenses.md explains why the default differs)."""

    name = "graddefense-paper"
    Config = GradDefensePaperConfig
    config: GradDefensePaperConfig
    strength = None  # the paper's configuration, compared as it is
