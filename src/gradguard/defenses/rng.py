"""Random draws for defenses: always from an explicit ``torch.Generator``, never the global RNG.

docs/design.md section 1: a defense's noise comes from OS entropy unless the user asks for reproducibility,
in which case the caller passes a seeded generator in the :class:`DefenseContext`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..rng import make_generator


def generator_for(context) -> torch.Generator:
    """The context's generator, or a fresh one seeded from OS entropy when it has none."""
    if context.generator is not None:
        return context.generator
    return make_generator(None, "defense")  # OS entropy: does not read or advance the global RNG


def normal(count: int, generator: torch.Generator, like: Tensor, std: float = 1.0) -> Tensor:
    """``count`` draws of N(0, std^2) on the generator's device, returned on ``like``'s
    device/dtype (the scaling is part of the draw: no second pass over the noise)."""
    draws = torch.normal(0.0, std, (count,), generator=generator, device=generator.device)
    return draws.to(device=like.device, dtype=like.dtype)


def normal_into(out: Tensor, generator: torch.Generator, std: float = 1.0) -> Tensor:
    """Fill ``out`` (a 1-D tensor) with exactly the draws ``normal(out.numel(), generator, out, std)``
    returns, written in place where the generator, the default dtype and ``out`` allow it (no
    new tensor and no second copy: a simulator fills each client's row of one noise matrix)."""
    if (out.device == generator.device and out.dtype == torch.get_default_dtype() and out.dim() == 1
            and out.is_contiguous()):
        return out.normal_(0.0, std, generator=generator)
    return out.copy_(normal(out.numel(), generator, out, std).view_as(out))


def laplace_into(out: Tensor, generator: torch.Generator, scale: float = 1.0) -> Tensor:
    """Fill ``out`` with the draws ``laplace(out.numel(), generator, out, scale)`` returns."""
    return out.copy_(laplace(out.numel(), generator, out, scale).view_as(out))


def laplace(count: int, generator: torch.Generator, like: Tensor, scale: float = 1.0) -> Tensor:
    """``count`` draws of the Laplace distribution of scale ``scale`` by inverting its CDF."""
    u = torch.rand(count, generator=generator, device=generator.device, dtype=torch.float64) - 0.5
    draws = (-scale) * torch.sign(u) * torch.log1p(-2 * u.abs().clamp(max=0.5 - 1e-12))
    return draws.to(device=like.device, dtype=like.dtype)


def choose(k: int, n: int, generator: torch.Generator) -> Tensor:
    """``k`` distinct indices out of ``n``, uniformly at random (a random k-subset)."""
    return torch.randperm(n, generator=generator, device=generator.device)[:k].cpu()
