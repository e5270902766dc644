"""``gc``: gradient compression (pruning), the DLG paper's baseline.

Per tensor, the entries whose magnitude is below the p-th percentile are set to zero; exactly
ceil(n * (1 - p/100)) entries with the largest magnitudes survive (ties broken by position).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from .base import Defense, DefenseConfig, Strength, check_finite, register


class CompressionConfig(DefenseConfig):
    percentile: float = Field(90.0, ge=0, lt=100, description="p: per tensor, zero the p% of entries with "
                                                              "the smallest magnitude (90 keeps the top 10%)")


@register
class GradientCompression(Defense):
    """Keep the largest-magnitude (100 - p)% of every tensor, zero the rest."""

    name = "gc"
    Config = CompressionConfig
    config: CompressionConfig
    strength = Strength(option="percentile", low=0.1, high=0.999, scale=100.0)
    sparsifies = True

    def defend(self, grads, context):
        check_finite(grads, self.name)
        return [self._prune(g) for g in grads]

    def _prune(self, g):
        flat = g.reshape(-1)
        keep = math.ceil(flat.numel() * (1 - self.config.percentile / 100))
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[flat.abs().topk(keep, sorted=False).indices] = True
        return torch.where(mask, flat, torch.zeros_like(flat)).view_as(g)
