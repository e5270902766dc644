"""Models by name, built to fit a dataset's image shape, classes and statistics."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import ConfigError, config_errors
from ..grads import eval_mode
from .lenet import ConvNet, LeNet
from .resnet import ResNet18
from .user import build_user_model, is_user_spec

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
    "convnet": ConvNet,
    "resnet18": ResNet18,
}


class ModelOptions(BaseModel):
    """The options a model accepts (``--model-opt KEY=VALUE``); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LeNetOptions(ModelOptions):
    dlg_init: bool = Field(False, description="DLG's initialisation: every weight uniform in [-0.5, 0.5]")


class ConvNetOptions(ModelOptions):
    width: int = Field(64, ge=1, le=4096, description="channels of the first block (later blocks use 2x and 4x)")


MODEL_OPTIONS: dict[str, type[ModelOptions]] = {"lenet": LeNetOptions, "convnet": ConvNetOptions,
                                                 "resnet18": ModelOptions}


def build_model(name: str, image_shape: tuple[int, int, int], num_classes: int, *, mean=None, std=None,
                **options) -> nn.Module:
    """Build model ``name`` for images of ``image_shape`` (C, H, W); ``options`` go to its class
    (``dlg_init`` for lenet, ``width`` for convnet). ``name`` can also be your own model,
    ``PATH.py:NAME`` or ``package.module:NAME`` (:mod:`gradguard.models.user`), which takes no options."""
    if is_user_spec(name):
        if options:
            raise ConfigError(f"model: {name} takes no options (got {sorted(options)}); its constructor gets "
                              f"num_classes, in_channels and image_size")
        return build_user_model(name, image_shape, num_classes, mean=mean, std=std)
    if name not in MODELS:
        raise ConfigError(f"model: unknown name {name!r}; choose one of {sorted(MODELS)} or PATH.py:NAME / "
                          f"package.module:NAME for your own")
    if name in MODEL_OPTIONS:  # a model registered without an options class gets its options unchecked
        with config_errors(f"model {name!r}: bad option"):
            options = MODEL_OPTIONS[name](**options).model_dump()
    channels, height, width = image_shape
    if height != width or height < 16:
        raise ConfigError(f"model: {name} needs square images of at least 16x16, got {height}x{width}")
    try:
        model = MODELS[name](in_channels=channels, image_size=height, num_classes=num_classes,
                             mean=mean, std=std, **options)
    except TypeError as exc:
        raise ConfigError(f"model: bad option for {name}: {exc}") from None
    _check_fits(model, name, image_shape)
    return model


def _check_fits(model: nn.Module, name: str, image_shape) -> None:
    """Fail at build time, not mid-training, when the images do not fit the architecture."""
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, *image_shape))
    except RuntimeError as exc:
        raise ConfigError(f"model: {name} does not fit images of shape {tuple(image_shape)} ({exc})") from None


def model_for(dataset, name: str = "lenet", **options) -> nn.Module:
    """Build model ``name`` shaped for ``dataset`` (an :class:`~gradguard.data.ImageDataset`)."""
    return build_model(name, dataset.image_shape, dataset.num_classes, mean=dataset.mean, std=dataset.std, **options)
