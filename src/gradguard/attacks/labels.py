"""Analytic label recovery from the last linear layer's gradient (iDLG, Zhao et al. 2020).

For cross-entropy, the gradient of the last layer's weight row c is
mean_i (p_ic - [y_i = c]) h_i, with h_i the layer's input. When h_i >= 0 (sigmoid or ReLU
features, as in every model here), the row of a class present in the batch is pulled
negative by the -h_i term while every other row is a non-negative combination; at batch size
1 exactly one row has a negative sum, and it is the label (iDLG takes the argmin).

Batches: a row sum mixes the -h_i of the samples of that class with the +p_ic h_j of all
others, so it can turn positive when the model puts much probability on classes absent from
the batch. Following Yin et al. ("See through gradients", CVPR 2021), batches rank rows by
their smallest element instead and take the ``batch_size`` lowest; this assumes distinct
labels. With repeated labels the gradient only says which classes occur, not how often, so
the recovery returns distinct labels and misses the repeats; pass the labels
(``labels="given"``) when that matters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's classifier: ``model.fc`` (every gradguard model has one), else the last Linear."""
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("labels='idlg': the model has no nn.Linear layer to recover labels from")
    return linears[-1]


def idlg_labels(weight_gradient: Tensor, batch_size: int) -> Tensor:
    """Labels from the last linear layer's weight gradient (classes, features).

    Batch size 1: the row with the most negative sum (exact for non-negative features).
    Larger batches: the ``batch_size`` rows with the most negative element (distinct labels).
    """
    classes = weight_gradient.shape[0]
    if batch_size > classes:
        raise ConfigError(f"labels='idlg': batch_size={batch_size} exceeds the {classes} classes; "
                          f"distinct-label recovery needs batch_size <= {classes}")
    score = weight_gradient.sum(dim=1) if batch_size == 1 else weight_gradient.amin(dim=1)
    return torch.topk(score, batch_size, largest=False).indices.sort().values
