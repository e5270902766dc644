"""Leakage risk per parameter tensor (docs/design.md section 2, step 1).

The risk of tensor l is how strongly its gradient depends on the input:
s_l = mean over root samples x of ||d(grad_l L(x)) / dx||_F. The Frobenius norm of that Jacobian
J is estimated with Hutchinson's identity ||J||_F^2 = E_v ||J^T v||^2 over Rademacher probes v,
where J^T v = d(v . grad_l L(x)) / dx costs one double-backward.

``probe="ones"`` uses the single probe v = all-ones, as the original GradDefense code does. For
cross-entropy the rows of the last linear layer's gradient sum to zero, so that variant rates the
layer that leaks the most (the classifier) as risk-free; it is kept for fidelity only.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..grads import eval_mode, trainable_parameters
from ..rng import make_generator

Probe = Literal["hutchinson", "ones"]


def tensor_risks(model: nn.Module, x: Tensor, y: Tensor, *, probe: Probe = "hutchinson", probes: int = 4,
                 generator: torch.Generator | None = None) -> Tensor:
    """Risk s_l of every trainable parameter tensor, in ``parameters()`` order, as a float64 vector.

    The root samples are processed as one batch with a summed loss: sample j's input only
    affects sample j's term, so one double-backward yields every sample's J_j^T v at once.
    """
    params = trainable_parameters(model)
    x = x.detach().clone().requires_grad_(True)
    with eval_mode(model):  # frozen normalisation statistics, so root samples do not interact
        loss = F.cross_entropy(model(x), y, reduction="sum")
        grads = torch.autograd.grad(loss, params, create_graph=True)
    count = 1 if probe == "ones" else probes
    risks = []
    for g in grads:
        squared = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for _ in range(count):
            v = torch.ones_like(g) if probe == "ones" else _rademacher(g, generator)
            (jtv,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True, allow_unused=True)
            if jtv is not None:
                squared += jtv.flatten(1).pow(2).sum(1).double()
        risks.append((squared / count).sqrt().mean())
    return torch.stack(risks).detach().cpu()


def _rademacher(like: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:  # OS entropy, never the global RNG
        generator = make_generator(None, "rademacher")
    return torch.randint(0, 2, like.shape, generator=generator, device=generator.device).to(like) * 2 - 1


def root_set(x: Tensor, y: Tensor, per_class: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Up to ``per_class`` random samples of every class present in (x, y): the root set."""
    order = torch.randperm(len(y), generator=generator, device=generator.device).cpu()
    labels = y.cpu()[order]
    # Rank of each sample among the shuffled samples of its class; keep the first per_class.
    onehot = F.one_hot(labels, int(labels.max()) + 1)
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1
    keep = order[rank < per_class].to(y.device)
    return x[keep], y[keep]
