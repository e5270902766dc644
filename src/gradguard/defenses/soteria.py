"""``soteria``: Soteria (Sun et al., CVPR 2021), the defense the paper calls PLD.

For the input r of the model's last linear layer (``model.features(x)``), each feature f is rated
by how much the input can be read from it: ||d r_f / dx|| / (|r_f| + eps), per sample, summed
over the batch. The p% features with the smallest ratio are pruned by zeroing their columns of
that layer's weight gradient; every other tensor is left as it is.

Deviation: the original code divides by (r_f + 0.1) without the absolute value; we use
|r_f| + eps as the defense's paper writes it (identical for the non-negative features of
sigmoid/ReLU models).

Cost: the scores need every row norm of the Jacobian d r / dx, which cannot be had exactly for
less than the whole Jacobian. It is computed in whichever direction is cheaper, both vectorised
with ``vmap`` over chunks: reverse mode (one backward pass per feature, 588 for LeNet at 28x28),
or forward mode (one forward-mode pass per input element, 784 there, the same direction for every
sample). Forward mode runs the convolutions' forward kernels, which on a CPU are 4-7 times faster
than the input-gradient kernels the backward passes need, so ``mode="auto"`` uses it when the
input has at most 4 times as many elements as there are features (LeNet: 3.4x faster than reverse
on MNIST, 1.3x on CIFAR-10, batch 32, one thread; docs/defenses.md) and reverse mode otherwise
(an ImageNet-size input has hundreds of times more elements than features). Both give the same
scores up to float rounding and prune the same features (tests/test_baselines.py). Even so,
ranking a batch of 32 costs about 110 SGD steps on LeNet at 28x28.
For federated training, ``mask_per="round"`` computes the pruned set on a client's first local
batch of a round and reuses it for that round's other local steps (``DefenseContext.step``),
which divides the cost by the local step count, and ``rank_samples`` ranks on the first n samples
of that batch only (the ``paper`` profile ranks on 8 of 32 on every dataset: on CIFAR-10 a
ranking of 32 costs 3 s). These are deviations for accuracy runs only:
a gradient defended on its own (``step`` None: every attacked gradient, a Flower client's
update) always gets its own pruned set, so privacy is measured on the faithful defense.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor
from torch.func import jvp, vjp, vmap

from ..errors import ConfigError
from ..grads import eval_mode, trainable_parameters
from .base import Defense, DefenseConfig, Strength, check_finite, check_rows, check_rows_finite, register


class SoteriaConfig(DefenseConfig):
    percentile: float = Field(80.0, ge=0, le=100, description="p: prune the p% of the last linear layer's input "
                                                              "features that leak the least per unit of signal")
    eps: float = Field(0.1, gt=0, description="added to |r_f| in the ratio's denominator to avoid dividing by zero")
    chunk: int = Field(64, ge=1, description="features (reverse mode) or input elements (forward mode) whose "
                                             "derivatives are computed at once (memory vs speed)")
    mode: Literal["auto", "forward", "reverse"] = Field("auto", description="how the Jacobian's row norms are "
                                                        "computed: forward mode (one pass per input element), "
                                                        "reverse mode (one per feature), or auto: forward when the "
                                                        "input has at most 4x as many elements as there are features")
    mask_per: Literal["batch", "round"] = Field("batch", description="batch: rank the features on every gradient "
                                                "(Soteria); round: in federated training, rank them on a client's "
                                                "first local batch of the round and reuse the pruned set for its "
                                                "other local steps (cost / local steps)")
    rank_samples: int | None = Field(None, ge=1, description="with mask_per='round': rank on the first n samples "
                                     "of that batch only (cost x n / batch size); None: the whole batch")

    @model_validator(mode="after")
    def _rank_samples_only_per_round(self):
        if self.rank_samples is not None and self.mask_per != "round":
            raise ValueError("rank_samples applies to mask_per='round' only (a gradient defended per batch is "
                             "always ranked on its whole batch)")
        return self


@register
class Soteria(Defense):
    """Zero the last linear layer's weight-gradient columns of the least informative features."""

    name = "soteria"
    Config = SoteriaConfig
    config: SoteriaConfig
    needs_batch = True
    strength = Strength(option="percentile", low=0.01, high=0.99, scale=100.0)
    sparsifies = True

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self._round_masks: dict[int, tuple[int, Tensor]] = {}  # client -> (round, pruned features)

    def costly_steps(self, local_steps: int, batch_size: int = 32) -> float:
        """The ranking is the cost; per round it is made once with ``mask_per="round"``, on
        ``rank_samples`` of the batch's samples when that is set."""
        if self.config.mask_per == "batch":
            return local_steps
        return min(self.config.rank_samples or batch_size, batch_size) / batch_size

    def perturbed_parameters(self) -> tuple[str, ...]:
        """Only the last linear layer's weight gradient (``fc.weight``) is ever changed."""
        return ("fc.weight",)

    def defend(self, grads, context):
        check_finite(grads, self.name)
        model, x = context.model, context.x
        if model is None or x is None or not hasattr(model, "features") or not hasattr(model, "fc"):
            raise ConfigError("soteria: needs context.model (with .features and .fc) and the batch context.x")
        index = _fc_weight_index(model)
        pruned = self._pruned_for(model, x, context)
        out = [g.clone() for g in grads]
        out[index][:, pruned] = 0
        return out

    def _pruned_for(self, model, x: Tensor, context) -> Tensor:
        """The pruned set of this gradient, or, with ``mask_per="round"``, the one ranked on this
        client's first local step of the same round."""
        if self.config.mask_per == "batch" or context.step is None:
            return self.pruned_features(model, x)
        stored = self._round_masks.get(context.client)
        if context.step > 0 and stored is not None and stored[0] == context.round:
            return stored[1]
        rank_on = x if self.config.rank_samples is None else x[:self.config.rank_samples]
        pruned = self.pruned_features(model, rank_on)
        self._round_masks[context.client] = (context.round, pruned)
        return pruned

    def pruned_features(self, model, x: Tensor) -> Tensor:
        """Indices of the features whose weight-gradient columns are zeroed."""
        score = self.feature_scores(model, x)
        count = int(round(score.numel() * self.config.percentile / 100))
        return score.argsort(stable=True)[:count]

    def feature_scores(self, model, x: Tensor) -> Tensor:
        """Per feature, sum over samples of ||d r_f / dx_j|| / (|r_f(x_j)| + eps)."""
        return self.sample_ratios(model, x).sum(1)

    def sample_ratios(self, model, x: Tensor) -> Tensor:
        """(F, B): ||d r_f / dx_j|| / (|r_f(x_j)| + eps) of every feature f and sample j. In eval
        mode a sample's features depend on that sample only, so a column is the same whichever
        batch the sample is ranked in."""
        x = x.detach()
        with eval_mode(model):
            features = model.features(x).detach()
            norms = (self._forward_norms if self._forward(x, features) else self._reverse_norms)(model, x)
        return norms / (features.abs().T + self.config.eps)

    def defend_rows(self, rows, like, contexts):
        """Every row ranked on its own batch (``mask_per="batch"``, or ``step`` None: a gradient
        defended on its own) through one model gets its scores from one ranking of all their
        samples (:meth:`sample_ratios`), summed per row: what :meth:`defend` prunes, row by row,
        for the cost of one batched ranking. A learned inverter's training set (thousands of
        single images through one model) is ranked 256 images at a time instead of one by one,
        which on LeNet is about 160 times cheaper per image (64 MNIST images: 2.0 s
        instead of 334 s). Rows with a per-round pruned set, or
        with different models, go through :meth:`defend`."""
        check_rows(rows, contexts)
        model = contexts[0].model if contexts else None
        first = contexts[0].x if contexts else None
        if (model is None or first is None or not hasattr(model, "features") or not hasattr(model, "fc")
                or any(c.model is not model or c.x is None or c.x.shape[1:] != first.shape[1:]
                       or c.x.device != first.device or c.x.dtype != first.dtype
                       or (self.config.mask_per == "round" and c.step is not None) for c in contexts)):
            return super().defend_rows(rows, like, contexts)
        if not math.isfinite(float(rows.sum())):
            check_rows_finite(rows, like, self.name)
        batches = [c.x for c in contexts if c.x is not None]
        ratios = self.sample_ratios(model, torch.cat(batches))
        scores = torch.stack([part.sum(1) for part in ratios.split([len(b) for b in batches], dim=1)])
        index = _fc_weight_index(model)
        classes, features = like[index].shape
        count = int(round(features * self.config.percentile / 100))
        pruned = scores.argsort(dim=1, stable=True)[:, :count]  # (rows, count), as pruned_features per row
        out = rows.clone()
        offset = sum(t.numel() for t in like[:index])
        weight = out[:, offset:offset + classes * features].view(len(out), classes, features)
        weight.scatter_(2, pruned[:, None, :].expand(-1, classes, -1), 0.0)
        return out

    def _forward(self, x: Tensor, features: Tensor) -> bool:
        if self.config.mode != "auto":
            return self.config.mode == "forward"
        return x[0].numel() <= 4 * features.shape[1]

    def _reverse_norms(self, model, x: Tensor) -> Tensor:
        """(F, B) norms of the Jacobian's rows: one vector-Jacobian product per feature, the
        cotangent e_f for every sample at once (samples do not mix in eval mode)."""
        features, pullback = vjp(model.features, x)  # type: ignore[misc]  # stub counts has_aux's output
        eye = torch.eye(features.shape[1], dtype=features.dtype, device=features.device)
        cotangents = eye[:, None, :].expand(-1, features.shape[0], -1)  # feature f for every sample

        def input_gradient_norms(cotangent):
            (dx,) = pullback(cotangent)
            return dx.flatten(1).norm(dim=1)

        return vmap(input_gradient_norms, chunk_size=self.config.chunk)(cotangents)

    def _forward_norms(self, model, x: Tensor) -> Tensor:
        """(F, B) norms of the Jacobian's rows from its columns: one Jacobian-vector product per
        input element, the direction e_j for every sample at once; the squares are summed over
        chunks of directions so that the whole Jacobian is never held."""
        size = x[0].numel()
        eye = torch.eye(size, dtype=x.dtype, device=x.device).view(size, *x.shape[1:])

        def column(direction):  # d r / dx_j for every sample: (B, F)
            # a fresh tangent: torch's make_dual takes a slow path for a view of the identity (the
            # stride-0 expand_as, or the row itself at batch 1): 0.36 s per chunk, 95% of a LeNet
            # ranking; copied, it costs nothing
            return jvp(model.features, (x,), (direction.expand_as(x).clone(),))[1]

        squares = None
        with torch.no_grad(), warnings.catch_warnings():
            # torch loads its forward-mode decompositions on first use through torch.jit.script,
            # which warns that it is deprecated: torch's own business, not the user's
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            for start in range(0, size, self.config.chunk):
                part = vmap(column)(eye[start:start + self.config.chunk]).square().sum(0)
                squares = part if squares is None else squares.add_(part)
        assert squares is not None
        return squares.sqrt().T


def _fc_weight_index(model) -> int:
    for i, p in enumerate(trainable_parameters(model)):
        if p is model.fc.weight:
            return i
    raise ConfigError("soteria: model.fc.weight is not a trainable parameter")
