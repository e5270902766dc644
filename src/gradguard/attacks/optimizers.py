"""The two optimisers of the engine, each running T independent targets at once.

Adam on the sum of T independent objectives is exactly T independent Adam runs (every
update is element-wise and each element belongs to one target), so ``torch.optim.Adam``
serves as is. L-BFGS is not element-wise; it runs through :func:`batched_lbfgs`.
Labels that are class indices stay fixed; soft-label logits (DLG) are optimised with the images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .config import AttackConfig
from .lbfgs import batched_lbfgs
from .matching import GradientMatcher

OnIteration = Callable[[int, Tensor], None] | None


def _learned(labels: Tensor) -> bool:
    return labels.is_floating_point()


def optimise_adam(matcher: GradientMatcher, images: Tensor, labels: Tensor, config: AttackConfig,
                  on_iteration: OnIteration) -> tuple[Tensor, Tensor]:
    """Adam (optionally on signed gradients), step schedule, box constraint after each step."""
    images = images.clone().requires_grad_()
    labels = labels.clone().requires_grad_() if _learned(labels) else labels
    variables = [images, labels] if _learned(labels) else [images]
    optimizer = torch.optim.Adam(variables, lr=config.lr)
    milestones = [int(f * config.iterations) for f in config.milestones]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma)
    for iteration in range(config.iterations):
        objective, distance = matcher.objective(images, labels)
        grads = torch.autograd.grad(objective.sum(), variables)
        for variable, g in zip(variables, grads):
            variable.grad = g.sign() if config.signed else g
        optimizer.step()
        schedule.step()
        if config.boxed:
            with torch.no_grad():
                images.clamp_(0.0, 1.0)
        if on_iteration is not None:
            on_iteration(iteration + 1, distance.detach())
    return images.detach(), labels.detach()


def optimise_lbfgs(matcher: GradientMatcher, images: Tensor, labels: Tensor, config: AttackConfig,
                   on_iteration: OnIteration) -> tuple[Tensor, Tensor]:
    """Batched L-BFGS over the flattened images (and soft-label logits) of each target."""
    targets, pixels = images.shape[0], images[0].numel()
    learned = _learned(labels)
    parts = [images.reshape(targets, -1)] + ([labels.reshape(targets, -1)] if learned else [])

    def unpack(z: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_images = z[:, :pixels].reshape(len(z), *images.shape[1:])
        if learned:
            return z_images, z[:, pixels:].reshape(len(z), *labels.shape[1:])
        return z_images, labels if rows is None else labels[rows]

    def evaluate(z: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        z = z.detach().requires_grad_()
        objective, _ = matcher.objective(*unpack(z, rows), rows)
        (g,) = torch.autograd.grad(objective.sum(), z)
        return objective.detach(), g

    z = batched_lbfgs(evaluate, torch.cat(parts, 1), lr=config.lr, iterations=config.iterations,
                      max_iter=config.lbfgs_max_iter, history=config.lbfgs_history, on_iteration=on_iteration,
                      line_search=config.lbfgs_line_search)
    return tuple(t.detach() for t in unpack(z))  # type: ignore[return-value]


OPTIMIZERS = {"adam": optimise_adam, "lbfgs": optimise_lbfgs}
