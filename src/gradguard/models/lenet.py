"""The LeNet variant of DLG (Zhu et al., NeurIPS 2019) and the ConvNet of Inverting Gradients."""

from __future__ import annotations

import torch
from torch import nn

from .normalize import Normalize


def _conv_out(size: int, stride: int, kernel: int = 5, padding: int = 2) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class LeNet(nn.Module):
    """DLG's LeNet: three 5x5 convolutions of 12 channels (strides 2, 2, 1), sigmoid activations,
    one linear classifier. Sigmoid (not ReLU) keeps every gradient twice differentiable and
    informative, which is why gradient leakage attacks use it. Features: 12 * (H/4) * (W/4),
    588 for 28x28 and 768 for 32x32.

    ``dlg_init=True`` draws every weight and bias from uniform(-0.5, 0.5) as the DLG code
    does; otherwise PyTorch's default initialisation.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 mean=None, std=None, dlg_init: bool = False):
        super().__init__()
        self.normalize = Normalize(mean, std, in_channels)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(),
        )
        side = _conv_out(_conv_out(image_size, 2), 2)
        self.fc = nn.Linear(12 * side * side, num_classes)
        if dlg_init:
            for p in self.parameters():
                nn.init.uniform_(p, -0.5, 0.5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the last linear layer (what Soteria perturbs)."""
        return self.body(self.normalize(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class ConvNet(nn.Module):
    """The ConvNet of Inverting Gradients (Geiping et al., NeurIPS 2020): eight 3x3 conv-BN-ReLU
    blocks of widths w, 2w, 2w, 4w, 4w, 4w, 4w, 4w, 3x3 max-pooling after the 6th and the 8th,
    and a linear layer on the 4w x 3 x 3 features (28x28 and 32x32 inputs both pool to 3x3).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 mean=None, std=None, width: int = 64):
        super().__init__()
        self.normalize = Normalize(mean, std, in_channels)
        widths = [in_channels, width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(8):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, padding=1), nn.BatchNorm2d(widths[i + 1]), nn.ReLU()]
            if i in (5, 7):
                layers.append(nn.MaxPool2d(3))
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(4 * width * 9, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
