"""``dp-gaussian`` and ``dp-laplace``: noise on every element, the DLG paper's baselines.

Despite the names (kept from the literature) these add noise only: there is no clipping, so a
sample's influence is unbounded and they carry NO formal differential-privacy guarantee. Use
``dpsgd`` for a guarantee with an epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..grads import flatten, unflatten
from .base import Defense, DefenseConfig, NoiseModel, Strength, check_finite, check_rows, check_rows_finite, register
from .rng import generator_for, laplace, laplace_into, normal, normal_into

# draws of each distribution at a given scale: ``draw(count, generator, like, scale)``
DRAWS: dict[str, Callable[[int, torch.Generator, Tensor, float], Tensor]] = {"gaussian": normal, "laplace": laplace}
# the same draws written into a given row: ``fill(out, generator, scale)``
FILLS: dict[str, Callable[[Tensor, torch.Generator, float], Tensor]] = {"gaussian": normal_into,
                                                                         "laplace": laplace_into}


class _NoiseConfig(DefenseConfig):
    clip: float | None = Field(None, gt=0, description="C: if set, the whole gradient is scaled to L2 norm at most C "
                                                       "and the noise level is relative: std (or scale) times C")


class GaussianNoiseConfig(_NoiseConfig):
    sigma: float = Field(1e-3, ge=0, description="std of the Gaussian noise added to every gradient element, or with "
                                                 "clip=C the noise multiplier (std sigma * C); noise only, no formal "
                                                 "privacy guarantee")


class LaplaceNoiseConfig(_NoiseConfig):
    scale: float = Field(1e-3, ge=0, description="b: scale of the Laplace noise added to every gradient element "
                                                 "(std = b * sqrt 2), or with clip=C relative (scale b * C); noise "
                                                 "only, no formal privacy guarantee")


class _ElementNoise(Defense):
    """Add i.i.d. noise of one distribution (:data:`DRAWS`, unit scale) times the ``scale_field`` option;
    with ``clip=C``, scale the whole gradient to norm at most C first and the noise by C."""

    config: _NoiseConfig
    scale_field: ClassVar[str]
    distribution: ClassVar[Literal["gaussian", "laplace"]]
    std_per_scale: ClassVar[float] = 1.0  # the draw's standard deviation at unit scale

    def defend(self, grads, context):
        flat = flatten(grads)  # a new tensor: the input is never written
        if not math.isfinite(float(flat.sum())):  # one reduction; the exact per-tensor check only when in doubt
            check_finite(grads, self.name)
        clip = self.config.clip
        if clip is not None:
            norm = float(torch.linalg.vector_norm(flat, dtype=torch.float64))
            flat.mul_(min(1.0, clip / max(norm, 1e-12)))
        # one draw for every element, scaled as it is drawn; the gradient is added into it
        noise = DRAWS[self.distribution](flat.numel(), generator_for(context), flat, self._scale())
        return unflatten(noise.add_(flat), grads)

    def defend_rows(self, rows, like, contexts):
        """Every client's row at once: one finiteness check, one clip and one add over the
        matrix; the noise is still one draw per client from its own generator, written into
        that client's row of the result."""
        check_rows(rows, contexts)
        if not math.isfinite(float(rows.sum())):
            check_rows_finite(rows, like, self.name)
        fill, scale = FILLS[self.distribution], self._scale()
        noise = torch.empty_like(rows, memory_format=torch.contiguous_format)
        for row, context in zip(noise, contexts):
            fill(row, generator_for(context), scale)
        clip = self.config.clip
        if clip is None:
            return noise.add_(rows)
        # the factor defend() computes, min(1, C / max(norm, 1e-12)) in float64, per row
        norms = torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64)
        factors = (clip / norms.clamp_min(1e-12)).clamp_max(1.0).to(rows.dtype)
        return noise.add_(rows * factors.unsqueeze(1))

    def _scale(self) -> float:
        """The noise's scale in gradient units (times C in relative mode)."""
        scale = float(getattr(self.config, self.scale_field))
        return scale * self.config.clip if self.config.clip is not None else scale

    def noise_model(self, batch_size: int = 1) -> NoiseModel:
        return NoiseModel(self.distribution, self.std_per_scale * self._scale())


@register
class GaussianNoise(_ElementNoise):
    """N(0, sigma^2) on every element (noise only, no formal guarantee)."""

    name = "dp-gaussian"
    Config = GaussianNoiseConfig
    strength = Strength(option="sigma", low=1e-4, high=1.0)
    scale_field = "sigma"
    distribution = "gaussian"


@register
class LaplaceNoise(_ElementNoise):
    """Laplace(0, b) on every element (noise only, no formal guarantee)."""

    name = "dp-laplace"
    Config = LaplaceNoiseConfig
    strength = Strength(option="scale", low=1e-4, high=1.0)
    scale_field = "scale"
    distribution = "laplace"
    std_per_scale = math.sqrt(2)
