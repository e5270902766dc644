"""Global update compensation (docs/design.md section 2, step 6): the server's estimate of the clean
weighted aggregate from the aggregate of slice-perturbed updates.

What the server knows: sigma, the chance k/S that a given element of a client's update is noisy,
the weights w_i and the scale of the update. Each element of client i's update carries noise
N(0, sigma^2) with probability k/S, independently across clients, so the per-element noise
variance of the aggregate sum_i w_i u_i is

    tau^2 = sigma^2 * (k/S) * sum_i w_i^2 * scale^2            (:func:`aggregate_noise_variance`)

The original code passes N (k/S) sigma^2 instead: for an average (w_i = 1/N) that is N^2 times
too large, so its Marchenko-Pastur filter treats most of the signal as noise. It is kept as
``variance="original"`` for comparison only.

Compensators (``GradDefense(compensation=...)``):

- :class:`MarchenkoPastur` (the paper's method): reshape the flat aggregate into a v x w matrix
  (v/w >= Q), keep the eigen-directions of its column covariance outside the Marchenko-Pastur
  noise bulk [tau^2 (1 - 1/sqrt Q)^2, tau^2 (1 + 1/sqrt Q)^2] and project onto them.
- :class:`SpectralShrinkage` (ours, ``"shrink"``): per parameter tensor, viewed as an
  (out, rest) matrix, the singular-value shrinker of Gavish & Donoho (2017) that is optimal in
  Frobenius error for a known noise level; vectors (biases) get positive-part James-Stein
  shrinkage. Unlike the flat reshape, the tensor's own matrix is where the update is low rank.
- no compensation (``"none"``, the default; the defense returns ``None``): the plain weighted
  average. Both filters above lower each round's error but bias the update toward zero, and on
  real LeNet training that costs far more accuracy than the noise does (docs/defenses.md).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ..grads import Gradient, flatten, unflatten
from .base import Compensator

Variance = Literal["correct", "original"]


def aggregate_noise_variance(sigma: float, fraction: float, weights: Tensor, scale: float = 1.0) -> float:
    """Per-element noise variance tau^2 of sum_i w_i u_i when each element of each u_i gets
    N(0, sigma^2) with probability ``fraction`` (= k/S), independently across clients."""
    return sigma ** 2 * fraction * float((weights.double() ** 2).sum()) * scale ** 2


class _KnownNoise(Compensator):
    """A compensator that knows the clients' noise: sigma and the noisy fraction k/S (read lazily,
    since layer slicing only knows k/S once it has seen the model)."""

    def __init__(self, sigma: float, fraction, variance: Variance = "correct"):
        self.sigma = sigma
        self._fraction = fraction
        self.variance = variance

    @property
    def fraction(self) -> float:
        return self._fraction() if callable(self._fraction) else self._fraction

    def noise_variance(self, weights: Tensor, scale: float) -> float:
        if self.variance == "original":
            return len(weights) * self.fraction * self.sigma ** 2 * scale ** 2
        return aggregate_noise_variance(self.sigma, self.fraction, weights, scale)


class MarchenkoPastur(_KnownNoise):
    """The paper's compensation: eigen-filtering of the reshaped aggregate against the MP bulk."""

    def __init__(self, sigma: float, fraction, variance: Variance = "correct", ratio: float = 4.0):
        super().__init__(sigma, fraction, variance)
        self.ratio = ratio

    def compensate(self, aggregate: Gradient, weights: Tensor, *, scale: float = 1.0) -> Gradient:
        tau2 = self.noise_variance(weights, scale)
        flat = flatten(aggregate).double()
        width = max(1, int(math.sqrt(flat.numel() / self.ratio)))
        height = flat.numel() // width
        matrix = flat[: height * width].view(height, width)
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix.T @ matrix / height)
        q = height / width
        low, high = tau2 * (1 - 1 / math.sqrt(q)) ** 2, tau2 * (1 + 1 / math.sqrt(q)) ** 2
        kept = eigenvectors[:, (eigenvalues < low) | (eigenvalues > high)]
        filtered = torch.cat([(matrix @ kept @ kept.T).reshape(-1), flat[height * width:]])
        return unflatten(filtered.to(aggregate[0].dtype), aggregate)


class SpectralShrinkage(_KnownNoise):
    """Per-tensor optimal singular-value shrinkage (matrices) and James-Stein (vectors)."""

    def compensate(self, aggregate: Gradient, weights: Tensor, *, scale: float = 1.0) -> Gradient:
        tau = math.sqrt(self.noise_variance(weights, scale))
        if tau == 0:
            return [a.clone() for a in aggregate]
        return [shrink_tensor(a, tau) for a in aggregate]


def shrink_tensor(tensor: Tensor, tau: float) -> Tensor:
    """Estimate a clean tensor from ``tensor`` = clean + i.i.d. noise of std ``tau``."""
    if tensor.dim() < 2 or min(tensor.shape[0], tensor[0].numel()) < 2:
        return james_stein(tensor, tau)
    matrix = tensor.reshape(tensor.shape[0], -1).double()
    transpose = matrix.shape[0] > matrix.shape[1]
    if transpose:
        matrix = matrix.T
    rows, cols = matrix.shape  # rows <= cols
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    shrunk = tau * math.sqrt(cols) * _optimal_shrinker(s / (tau * math.sqrt(cols)), rows / cols)
    estimate = (u * shrunk) @ vh
    if transpose:
        estimate = estimate.T
    return estimate.reshape(tensor.shape).to(tensor.dtype)


def _optimal_shrinker(y: Tensor, beta: float) -> Tensor:
    """Gavish & Donoho's Frobenius-optimal shrinker for singular values y of a matrix with noise
    normalised to std 1/sqrt(cols) per entry and aspect ratio beta = rows/cols <= 1."""
    edge = 1 + math.sqrt(beta)
    inside = ((y ** 2 - beta - 1) ** 2 - 4 * beta).clamp(min=0)
    return torch.where(y > edge, inside.sqrt() / y.clamp(min=1e-300), torch.zeros_like(y))


def james_stein(vector: Tensor, tau: float) -> Tensor:
    """Positive-part James-Stein: scale toward zero by max(0, 1 - n tau^2 / ||x||^2)."""
    energy = float(vector.double().pow(2).sum())
    if energy == 0:
        return vector.clone()
    return vector * max(0.0, 1 - vector.numel() * tau ** 2 / energy)
