"""Which device a command computes on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

:func:`resolve_device` turns the user's choice into a ``torch.device`` and refuses, with a
:class:`~gradguard.errors.ConfigError` naming the valid choices, a GPU this machine does not
have. ``auto`` is the first GPU when there is one, else the CPU.

Everything that computes takes the resolved device: models and data batches are moved to it,
gradients and attack variables live on it, and the generators of seeded draws are created on
it (:func:`gradguard.rng.make_generator` with ``device=``). On the CPU nothing changes: the same
generators, the same draws, the same numbers bit for bit as before devices existed. A CUDA
generator draws a different stream than a CPU one for the same seed, and GPU kernels round
differently, so a result computed on a GPU is reproducible on that GPU but not equal to the CPU
one: the results store records the device of every cell (docs/scale.md).
"""

from __future__ import annotations

import re

import torch

from .errors import ConfigError

__all__ = ["DEVICE_CHOICES", "describe_device", "device_kind", "resolve_device"]

#: What ``--device`` accepts (``cuda:N`` for any N below the number of GPUs).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")

_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(choice: str | torch.device | None = "auto") -> torch.device:
    """The device for ``choice``: ``auto`` (or None) is ``cuda:0`` when a GPU is present, else the
    CPU; ``cuda`` is ``cuda:0``; ``cuda:N`` must name a present GPU."""
    if isinstance(choice, torch.device):
        choice = str(choice)
    text = (choice or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise ConfigError(f"--device {choice!r}: unknown device; choose one of {', '.join(DEVICE_CHOICES)}")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"--device {choice}: this machine has no CUDA GPU (torch {torch.__version__} sees none); "
                          f"use --device cpu or --device auto")
    if index >= count:
        raise ConfigError(f"--device {choice}: this machine has {count} GPU(s); choose one of auto, cpu, "
                          f"{', '.join(f'cuda:{i}' for i in range(count))}")
    return torch.device("cuda", index)


def device_kind(device: str | torch.device) -> str:
    """``cpu`` or ``cuda``: what decides whether two results are comparable bit for bit."""
    return torch.device(device).type


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H200)``, for progress lines and reports."""
    if device.type == "cuda":
        index = device.index if device.index is not None else 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
