"""``dpsgd``: differentially private SGD (Abadi et al., 2016) with Opacus' privacy accountant.

Each sample's whole gradient is clipped to L2 norm C, the clipped gradients are summed,
Gaussian noise of std z * C (z: the noise multiplier) is added to every element, and the sum
is divided by the batch size. Every call is one DP-SGD step for that client; a per-client
Renyi-DP accountant from Opacus turns the steps into (epsilon, delta)-DP, read with
:meth:`DPSGD.epsilon`. The sampling rate is batch size / local dataset size when the context
carries the local data, else 1 (every step sees all of the client's data), which is the
conservative choice.
"""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import Field

from ..errors import ConfigError
from ..grads import flatten_batched, per_sample_gradients, unflatten
from .base import Defense, DefenseConfig, DefenseContext, NoiseModel, Strength, check_finite, register
from .rng import generator_for, normal


class DPSGDConfig(DefenseConfig):
    noise_multiplier: float = Field(1.0, ge=0, description="z: noise std as a multiple of the clipping norm "
                                                           "(larger z: more privacy, smaller epsilon)")
    clip: float = Field(1.0, gt=0, description="C: each sample's gradient is scaled down to at most this L2 norm")
    delta: float = Field(1e-5, gt=0, lt=1, description="delta of the (epsilon, delta)-DP guarantee reported")


@register
class DPSGD(Defense):
    """Per-sample clipping plus Gaussian noise, with formal (epsilon, delta) accounting."""

    name = "dpsgd"
    Config = DPSGDConfig
    config: DPSGDConfig
    needs_batch = True
    strength = Strength(option="noise_multiplier", low=1e-3, high=10.0)

    def noise_model(self, batch_size: int = 1) -> NoiseModel:
        """N(0, (z C)^2) on the clipped sum, divided by the batch size."""
        return NoiseModel("gaussian", self.config.noise_multiplier * self.config.clip / batch_size)

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self._accountants: dict[int, Any] = {}  # opacus RDPAccountant (optional dependency, untyped)

    def defend(self, grads, context: DefenseContext):
        check_finite(grads, self.name)
        per_sample = context.per_sample
        if per_sample is None:
            if context.model is None or context.x is None or context.y is None:
                raise ConfigError("dpsgd: needs per-sample gradients: pass context.per_sample, "
                                  "or context.model, x and y")
            per_sample = per_sample_gradients(context.model, context.x, context.y)
        samples = flatten_batched(per_sample)
        batch = samples.shape[0]
        factor = (self.config.clip / samples.norm(dim=1).clamp(min=1e-12)).clamp(max=1.0)
        total = (samples * factor[:, None]).sum(0)
        std = self.config.noise_multiplier * self.config.clip
        total += normal(total.numel(), generator_for(context), total) * std
        self._account(context, batch)
        return unflatten(total / batch, grads)

    def epsilon(self, client: int = 0) -> float:
        """Epsilon spent so far by ``client`` at the configured delta: 0 before its first step (nothing
        spent), inf once it has taken a step with z = 0 (noise-free steps have no finite bound)."""
        accountant = self._accountants.get(client)
        if accountant is None or self.config.noise_multiplier == 0:
            return float("inf") if accountant is not None else 0.0
        return float(accountant.get_epsilon(self.config.delta))

    def _account(self, context: DefenseContext, batch: int) -> None:
        from opacus.accountants import RDPAccountant  # optional dependency (the "dp" extra)

        accountant = self._accountants.setdefault(context.client, RDPAccountant())
        local = len(context.local_data[1]) if context.local_data is not None else batch
        if self.config.noise_multiplier > 0:
            accountant.step(noise_multiplier=self.config.noise_multiplier, sample_rate=min(1.0, batch / local))


def epsilon_after(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` DP-SGD steps at the given noise multiplier and sampling rate (Opacus RDP)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float) -> float:
    """The noise multiplier that spends ``target_epsilon`` in ``steps`` steps (Opacus)."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # Opacus' bisection probes huge noise levels, which warn about alpha range
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant="rdp"))
