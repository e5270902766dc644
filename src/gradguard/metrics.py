"""Reconstruction quality: PSNR and SSIM (torchmetrics, data_range 1) after matching each
reconstruction to its closest ground-truth image, and label accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def psnr(reconstruction: Tensor, truth: Tensor) -> Tensor:
    """PSNR per image in dB, images in [0, 1]. Identical images give +inf."""
    return peak_signal_noise_ratio(reconstruction.clamp(0, 1), truth, data_range=1.0,
                                   reduction="none", dim=(1, 2, 3))


def ssim(reconstruction: Tensor, truth: Tensor) -> Tensor:
    """SSIM per image (Gaussian window 11, sigma 1.5), images in [0, 1]."""
    score = structural_similarity_index_measure(reconstruction.clamp(0, 1), truth, data_range=1.0,
                                                reduction="none")
    assert isinstance(score, Tensor)  # a tuple only with return_full_image/return_contrast_sensitivity
    return score


def match(reconstruction: Tensor, truth: Tensor) -> Tensor:
    """Index into ``truth`` for each reconstruction, minimising total MSE (Hungarian assignment).

    Batch attacks recover images in arbitrary order; matching first makes scores order-free.
    """
    cost = torch.cdist(reconstruction.flatten(1).double(), truth.flatten(1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.numpy())
    order = torch.empty(len(reconstruction), dtype=torch.long)
    order[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return order


@dataclass(frozen=True)
class ReconstructionScores:
    """Per-image scores of a reconstructed batch, each aligned with the reconstructions."""

    psnr: Tensor
    ssim: Tensor
    truth_index: Tensor

    def summary(self) -> dict[str, float]:
        return {"psnr_mean": float(self.psnr.mean()), "psnr_std": float(self.psnr.std(unbiased=False)),
                "ssim_mean": float(self.ssim.mean()), "ssim_std": float(self.ssim.std(unbiased=False))}


def score_reconstruction(reconstruction: Tensor, truth: Tensor, *, matched: bool = True) -> ReconstructionScores:
    """PSNR and SSIM of each reconstruction against its matched (or same-index) truth.

    Pixel-perfect reconstructions have infinite PSNR; it is capped at 100 dB so means stay finite.
    """
    if reconstruction.shape != truth.shape:
        raise ValueError(f"score: reconstruction {tuple(reconstruction.shape)} and truth {tuple(truth.shape)} differ")
    index = match(reconstruction, truth) if matched else torch.arange(len(truth))
    aligned = truth[index]
    return ReconstructionScores(psnr(reconstruction, aligned).clamp(max=100.0), ssim(reconstruction, aligned), index)


def label_accuracy(predicted: Tensor, truth: Tensor) -> float:
    """Fraction of labels recovered, compared as multisets (a batch's labels come unordered)."""
    if len(predicted) != len(truth):
        raise ValueError(f"label_accuracy: {len(predicted)} predicted labels for {len(truth)} true ones")
    if len(truth) == 0:
        return 1.0
    classes = int(max(predicted.max(), truth.max())) + 1
    common = torch.minimum(torch.bincount(predicted, minlength=classes), torch.bincount(truth, minlength=classes))
    return float(common.sum()) / len(truth)
