"""Federated partitioners: split sample indices among clients, deterministically per generator."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError


def _check_clients(num_clients: int, num_samples: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"clients: must be >= 1, got {num_clients}")
    if num_clients > num_samples:
        raise ConfigError(f"clients: {num_clients} clients cannot share {num_samples} samples "
                          "(at most one client per sample)")


def partition_iid(num_samples: int, num_clients: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffle and cut into ``num_clients`` parts whose sizes differ by at most one."""
    _check_clients(num_clients, num_samples)
    order = torch.randperm(num_samples, generator=generator)
    return list(order.tensor_split(num_clients))


def partition_dirichlet(labels: Tensor, num_clients: int, alpha: float, generator: torch.Generator,
                        min_size: int = 1) -> list[Tensor]:
    """Label skew: each class is spread over clients in proportions drawn from Dirichlet(alpha).

    Small ``alpha`` gives each client few classes; large ``alpha`` approaches IID. Draws are
    repeated (with the same generator, so still deterministic) until every client holds at
    least ``min_size`` samples.
    """
    if not alpha > 0:
        raise ConfigError(f"alpha: must be > 0, got {alpha}")
    _check_clients(num_clients, len(labels))
    classes = labels.unique()
    concentration = torch.full((num_clients,), float(alpha), dtype=torch.float64)
    for _ in range(1000):
        parts: list[list[Tensor]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = torch.nonzero(labels == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=generator)]
            # torch's Dirichlet sampler takes no generator: draw it from Gamma variates ourselves.
            gammas = _standard_gamma(concentration, generator)
            shares = gammas / gammas.sum()
            cuts = (shares.cumsum(0) * len(idx)).round().long()[:-1].tolist()
            for client, chunk in enumerate(idx.tensor_split(cuts)):
                parts[client].append(chunk)
        result = [torch.cat(p).sort().values for p in parts]
        if min(len(p) for p in result) >= min_size:
            return result
    raise ConfigError(f"alpha: {alpha} is too small to give each of {num_clients} clients {min_size} samples")


def _standard_gamma(shape: Tensor, generator: torch.Generator) -> Tensor:
    """Gamma(shape, 1) variates from an explicit generator (Marsaglia-Tsang, boosted for shape < 1)."""
    boost = shape < 1
    a = torch.where(boost, shape + 1, shape)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while todo.any():
        x = torch.randn(a.shape, generator=generator, dtype=a.dtype)
        u = torch.rand(a.shape, generator=generator, dtype=a.dtype)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        take = todo & ok
        out[take] = (d * v)[take]
        todo &= ~ok
    u = torch.rand(a.shape, generator=generator, dtype=a.dtype)
    return torch.where(boost, out * u ** (1.0 / shape), out)
