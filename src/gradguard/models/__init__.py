"""Models: LeNet (DLG), ConvNet (Inverting Gradients), ResNet-18; normalisation is their first layer."""

from .lenet import ConvNet, LeNet
from .normalize import Normalize
from .registry import MODELS, build_model, model_for
from .resnet import ResNet18

__all__ = ["MODELS", "ConvNet", "LeNet", "Normalize", "ResNet18", "build_model", "model_for"]
