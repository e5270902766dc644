"""Gradients as ``list[Tensor]`` in ``model.parameters()`` order, and per-sample gradients.

Per-sample gradients use torch.func (``functional_call`` + ``grad`` + ``vmap``): one
vectorised pass instead of a Python loop over samples.

Also the model idioms every module shares, defined once: the trainable parameters
(:func:`trainable_parameters`, :func:`trainable_named_parameters`, :func:`param_names`),
BatchNorm detection (:func:`is_batchnorm`, :func:`has_batchnorm`) and a temporary eval mode
(:func:`eval_mode`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ConfigError

Gradient = list[Tensor]
"""A gradient: one tensor per trainable parameter, in ``model.parameters()`` order."""
LossFn = Callable[[Tensor, Tensor], Tensor]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters gradients are taken for (``requires_grad``), in ``parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every trainable parameter, in ``parameters()`` order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def param_names(model: nn.Module) -> list[str]:
    """Parameter names in the order gradients are listed."""
    return [n for n, _ in trainable_named_parameters(model)]


def named_params(model: nn.Module) -> dict[str, Tensor]:
    """The model's trainable parameters by name, detached, in ``parameters()`` order."""
    return {n: p.detach() for n, p in trainable_named_parameters(model)}


def is_batchnorm(module: nn.Module) -> TypeGuard[_BatchNorm]:
    """Whether ``module`` is a BatchNorm layer (any dimension, including SyncBatchNorm)."""
    return isinstance(module, _BatchNorm)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any submodule of ``model`` is a BatchNorm layer."""
    return any(is_batchnorm(m) for m in model.modules())


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block (frozen normalisation statistics, no dropout) and
    restore its previous training flag afterwards, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def batch_gradient(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn = F.cross_entropy,
                   *, create_graph: bool = False) -> Gradient:
    """Gradient of the mean loss over the batch, one tensor per parameter.

    ``create_graph=True`` keeps the graph so the gradient can itself be differentiated
    (gradient matching attacks, sensitivity estimates).
    """
    params = trainable_parameters(model)
    loss = loss_fn(model(x), y)
    return list(torch.autograd.grad(loss, params, create_graph=create_graph))


def per_sample_gradients(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn = F.cross_entropy) -> Gradient:
    """Each sample's gradient: tensors of shape (batch, *param.shape), vectorised with vmap.

    Buffers (e.g. BatchNorm statistics) are used as they are, not updated. A BatchNorm layer in
    training mode mixes the samples of a batch, so a sample has no gradient of its own there:
    like Opacus, this refuses it (put the model in eval mode, or use a model without BatchNorm).
    """
    if model.training and has_batchnorm(model):
        raise ConfigError("per-sample gradients: BatchNorm in training mode mixes the samples of a batch; "
                          "call model.eval() first or use a model without BatchNorm (e.g. lenet)")
    params = named_params(model)
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def sample_loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    grads = vmap(grad(sample_loss), in_dims=(None, 0, 0), randomness="different")(params, x, y)
    return list(grads.values())


def flatten(grads: Sequence[Tensor]) -> Tensor:
    """Concatenate a gradient into one flat vector (the "P elements" of docs/design.md section 2):
    always a new tensor. One call into torch's C++ helper (the one DDP uses), not a Python loop
    of reshapes: defenses flatten on every client step, where per-call overhead dominates."""
    if len(grads) == 1:  # the helper returns a view of a lone tensor
        return grads[0].reshape(-1).clone()
    return _flatten_dense_tensors(list(grads))


def flatten_batched(grads: Sequence[Tensor]) -> Tensor:
    """Concatenate per-sample gradients into a (batch, P) matrix."""
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> Gradient:
    """Split a flat vector back into tensors shaped like ``like``."""
    total = sum(t.numel() for t in like)
    if vector.numel() != total:
        raise ValueError(f"unflatten: vector has {vector.numel()} elements, the shapes need {total}")
    return list(_unflatten_dense_tensors(vector, list(like)))  # views of ``vector``, one C++ call
