"""Per-channel normalisation as the model's first layer, so data and attacks stay in [0, 1]."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std with fixed per-channel statistics (buffers, not parameters)."""

    def __init__(self, mean=None, std=None, channels: int = 1):
        super().__init__()
        mean = torch.as_tensor(mean if mean is not None else [0.0] * channels, dtype=torch.float32)
        std = torch.as_tensor(std if std is not None else [1.0] * channels, dtype=torch.float32)
        if mean.numel() != channels or std.numel() != channels:
            raise ValueError(f"normalisation: need {channels} channel statistics, "
                             f"got mean {mean.tolist()}, std {std.tolist()}")
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    mean: torch.Tensor  # buffers, declared for type checkers
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
