"""torchvision's ResNet-18 adapted to small (28x28, 32x32) images."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18

from .normalize import Normalize


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem: a 3x3 stride-1 first convolution and no max-pooling,
    since the ImageNet stem would shrink a 32x32 image to 8x8 before the first block."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, mean=None, std=None):
        super().__init__()
        self.normalize = Normalize(mean, std, in_channels)
        net = resnet18(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.fc = net.fc
        net.fc = nn.Identity()
        self.body = net

    def features(self, x):
        return self.body(self.normalize(x))

    def forward(self, x):
        return self.fc(self.features(x))
