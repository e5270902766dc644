"""Your own model by reference: ``PATH.py:NAME`` or ``package.module:NAME``.

NAME is an ``nn.Module`` subclass or a function returning one. It is called with whichever of
``num_classes``, ``in_channels`` and ``image_size`` its signature accepts (all three when it
takes ``**kwargs``); ``image_size`` is the side of square images, ``(height, width)`` otherwise.

A reference is plain text, so the cells of a run can carry it (hashable, storable). It can be
*pinned* with options after semicolons, in this order::

    /abs/mynet.py:make_model;sha256=HASH;weights=/abs/w.pt;weights_sha256=HASH;mode=eval;normalize=data

- ``sha256``: the SHA-256 of the model's source file. Building refuses a file whose hash
  changed since it was pinned, and since the hash is part of the text, it is part of every
  cell's key: an edited model never reuses a stored result (:func:`pin` computes it).
- ``weights``: a state dict saved with ``torch.save(model.state_dict(), path)``, loaded after
  construction (``weights_sha256`` pins it the same way).
- ``mode``: ``train`` (the default: BatchNorm normalises with the batch's statistics, as a
  client's local training does) or ``eval`` (frozen statistics, dropout off): the mode the
  model is in when a client's gradient is taken.
- ``normalize``: ``model`` (the default: the model normalises its input itself, or needs
  none) or ``data`` (a per-channel normalisation layer with the dataset's statistics is put
  in front of it, as gradguard's own models do).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ..errors import ConfigError, describe_validation_error
from .normalize import Normalize

__all__ = ["UserModelSpec", "build_user_model", "describe_model", "file_sha256", "is_user_spec", "pin",
           "resolve_callable"]

SIGNATURE_ARGS = ("num_classes", "in_channels", "image_size")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_OPTION_ORDER = ("sha256", "weights", "weights_sha256", "mode", "normalize")


def is_user_spec(name: str) -> bool:
    """Whether ``name`` is a reference to a user's model (``target:NAME``) rather than a registry name."""
    return ":" in name


class UserModelSpec(BaseModel):
    """A parsed model reference (see the module docstring for the text form)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str
    name: str
    sha256: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    mode: Literal["train", "eval"] = "train"
    normalize: Literal["model", "data"] = "model"

    @property
    def is_file(self) -> bool:
        return self.target.endswith(".py")

    @classmethod
    def parse(cls, text: str) -> UserModelSpec:
        head, *options = text.split(";")
        target, sep, name = head.strip().rpartition(":")
        if not sep or not target or not name:
            raise ConfigError(f"model: {text!r} is not PATH.py:NAME or package.module:NAME")
        if not name.isidentifier():
            raise ConfigError(f"model: {name!r} in {text!r} is not a Python name (PATH.py:NAME or package.module:NAME)")
        if not target.endswith(".py") and not _MODULE_NAME.match(target):
            raise ConfigError(f"model: {target!r} in {text!r} is neither a .py file nor a module name "
                              f"(PATH.py:NAME or package.module:NAME)")
        fields: dict[str, Any] = {"target": target, "name": name}
        for option in options:
            key, eq, value = option.partition("=")
            if not eq or key.strip() not in _OPTION_ORDER:
                raise ConfigError(f"model: unknown option {option!r} in {text!r}; options: {list(_OPTION_ORDER)}")
            fields[key.strip()] = value.strip()
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise ConfigError(f"model {text!r}: {describe_validation_error(exc)}") from None

    def text(self) -> str:
        """The canonical text form (options that differ from the defaults, in a fixed order)."""
        parts = [f"{self.target}:{self.name}"]
        defaults = UserModelSpec.model_fields
        for key in _OPTION_ORDER:
            value = getattr(self, key)
            if value != defaults[key].default:
                parts.append(f"{key}={value}")
        return ";".join(parts)

    def label(self) -> str:
        """A short name for tables and titles: ``mynet.py:make_model``."""
        return f"{Path(self.target).name if self.is_file else self.target}:{self.name}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_file(spec: UserModelSpec) -> Path:
    """The file that defines the model: the .py file itself, or the module's file."""
    if spec.is_file:
        path = Path(spec.target).expanduser()
        if not path.is_file():
            raise ConfigError(f"model: file not found: {path}")
        return path
    module = _import_module(spec.target)
    location = getattr(module, "__file__", None)
    if not location:
        raise ConfigError(f"model: module {spec.target!r} has no source file to hash")
    return Path(location)


def pin(text: str, *, weights: str | Path | None = None, mode: str | None = None,
        normalize: str | None = None) -> str:
    """The pinned reference for ``text``: absolute paths, the source file's hash, the weights
    file and its hash, the mode and the normalisation. Fails (ConfigError) when the file, the
    module or the name does not exist."""
    spec = UserModelSpec.parse(text)
    update: dict[str, Any] = {}
    if spec.is_file:
        update["target"] = str(Path(spec.target).expanduser().resolve())
    spec = spec.model_copy(update=update)
    resolve_callable(spec)  # the name exists and is callable
    update = {"sha256": file_sha256(_source_file(spec))}
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"weights: file not found: {path}")
        update.update(weights=str(path.resolve()), weights_sha256=file_sha256(path))
    if mode is not None:
        update["mode"] = mode
    if normalize is not None:
        update["normalize"] = normalize
    try:
        return UserModelSpec(**{**spec.model_dump(), **update}).text()
    except ValidationError as exc:
        raise ConfigError(f"model {text!r}: {describe_validation_error(exc)}") from None


# -- loading --

_FILE_MODULES: dict[tuple[str, str], ModuleType] = {}


def _import_file(path: Path) -> ModuleType:
    """Execute a user's .py file as a module (once per path and content); its folder is on the
    import path while it runs, so it can import its neighbours."""
    key = (str(path.resolve()), file_sha256(path))
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    module_name = f"gradguard_user_{key[1][:16]}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"model: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any error is theirs to fix, reported in one line
        sys.modules.pop(module_name, None)
        raise ConfigError(f"model: {path} failed to import ({type(exc).__name__}: {exc})") from None
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    _FILE_MODULES[key] = module
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if os.getcwd() not in sys.path and exc.name == name.split(".")[0]:
            sys.path.append(os.getcwd())  # `gradguard` as a console script: look where the user is, too
            return _import_module(name)
        raise ConfigError(f"model: cannot import module {name!r} ({exc})") from None
    except Exception as exc:
        raise ConfigError(f"model: module {name!r} failed to import ({type(exc).__name__}: {exc})") from None


def _candidates(module: ModuleType) -> list[str]:
    """Names in ``module`` that could be a model: nn.Module subclasses and functions defined there."""
    found = []
    for key, value in vars(module).items():
        if key.startswith("_"):
            continue
        if inspect.isclass(value) and issubclass(value, nn.Module) and value.__module__ == module.__name__:
            found.append(key)
        elif inspect.isfunction(value) and value.__module__ == module.__name__:
            found.append(key)
    return found


def resolve_callable(spec: UserModelSpec) -> Callable[..., Any]:
    """The class or function the reference names."""
    if spec.is_file:
        path = Path(spec.target).expanduser()
        if not path.is_file():
            raise ConfigError(f"model: file not found: {path}")
        module = _import_file(path)
    else:
        module = _import_module(spec.target)
    found = getattr(module, spec.name, None)
    if found is None:
        defined = _candidates(module) or "nothing usable"
        raise ConfigError(f"model: {spec.target} has no {spec.name!r}; it defines {defined}")
    if not callable(found):
        raise ConfigError(f"model: {spec.label()} is a {type(found).__name__}, not an nn.Module class or a function")
    return found


def _arguments(factory: Callable[..., Any], image_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
    channels, height, width = image_shape
    values = {"num_classes": num_classes, "in_channels": channels,
              "image_size": height if height == width else (height, width)}
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): call it without arguments
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return values
    return {k: v for k, v in values.items() if k in parameters}


class _DataNormalized(nn.Module):
    """The user's model behind a normalisation layer with the dataset's statistics."""

    def __init__(self, model: nn.Module, normalize: Normalize):
        super().__init__()
        self.normalize = normalize
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def build_user_model(text: str, image_shape: tuple[int, int, int], num_classes: int, *, mean=None,
                     std=None) -> nn.Module:
    """Build the model ``text`` refers to for images of ``image_shape`` and ``num_classes``
    labels, load its weights, put it in its mode, and check that it fits."""
    spec = UserModelSpec.parse(text)
    if spec.sha256 is not None and file_sha256(_source_file(spec)) != spec.sha256:
        raise ConfigError(f"model: {_source_file(spec)} changed since this run was planned (sha256 differs); "
                          f"start the run again so its cells are keyed by the new file")
    factory = resolve_callable(spec)
    try:
        model = factory(**_arguments(factory, image_shape, num_classes))
    except Exception as exc:
        raise ConfigError(f"model: calling {spec.label()} failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: {spec.label()} returned a {type(model).__name__}, not an nn.Module")
    if spec.weights is not None:
        _load_weights(model, spec)
    if spec.normalize == "data":
        model = _DataNormalized(model, Normalize(mean, std, image_shape[0]))
    check_user_model(model, spec.label(), image_shape, num_classes)
    model.train(spec.mode == "train")
    return model


def _load_weights(model: nn.Module, spec: UserModelSpec) -> None:
    assert spec.weights is not None
    path = Path(spec.weights)
    if not path.is_file():
        raise ConfigError(f"weights: file not found: {path}")
    if spec.weights_sha256 is not None and file_sha256(path) != spec.weights_sha256:
        raise ConfigError(f"weights: {path} changed since this run was planned (sha256 differs); start the run again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"weights: cannot read {path} as a state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise ConfigError(f"weights: {path} holds a {type(state).__name__}; save model.state_dict()")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"weights: {path} does not fit {spec.label()} ({' '.join(str(exc).split())})") from None


def check_user_model(model: nn.Module, label: str, image_shape: tuple[int, int, int], num_classes: int) -> None:
    """Fail at build time when the model does not take the images or its output does not fit the
    labels, or when the attacks cannot find its classifier."""
    from ..attacks.labels import last_linear
    from ..grads import eval_mode

    try:
        with eval_mode(model), torch.no_grad():
            out = model(torch.zeros(2, *image_shape))
    except Exception as exc:
        raise ConfigError(f"model: {label} does not take images of shape {tuple(image_shape)} "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    if not isinstance(out, torch.Tensor) or out.shape != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model: {label} returns {shape} for a batch of 2 images; the labels need (2, {num_classes}) "
                          f"(one logit per class, {num_classes} classes)")
    try:
        classifier = last_linear(model)
    except ConfigError:
        raise ConfigError(f"model: {label} has no nn.Linear layer; the attacks recover labels from the classifier "
                          f"(model.fc or the last nn.Linear)") from None
    if classifier.out_features != num_classes:
        raise ConfigError(f"model: {label}'s classifier (model.fc or its last nn.Linear) has {classifier.out_features} "
                          f"outputs for {num_classes} classes; name the classifier `fc` or define it last")


def describe_model(model: nn.Module) -> dict[str, Any]:
    """What the audit reports about a model: parameters, BatchNorm, dropout, mode."""
    from ..grads import has_batchnorm

    dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
    return {"parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "batchnorm": has_batchnorm(model), "dropout": dropout,
            "mode": "train" if model.training else "eval"}
