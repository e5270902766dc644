import math

import pytest
import torch

from gradguard.metrics import label_accuracy, match, psnr, score_reconstruction, ssim


def test_psnr_by_hand():
    truth = torch.zeros(1, 1, 4, 4)
    recon = truth.clone()
    recon[0, 0, 0, 0] = 0.4  # MSE = 0.16 / 16 = 0.01 -> PSNR = 10 log10(1 / 0.01) = 20 dB
    assert psnr(recon, truth).item() == pytest.approx(20.0, abs=1e-4)
    assert math.isinf(psnr(truth, truth).item())


def _ssim_by_hand_constant(a: float, b: float) -> float:
    """SSIM of two constant images: only the luminance term is left (variances are zero)."""
    c1 = 0.01 ** 2
    return (2 * a * b + c1) / (a * a + b * b + c1)


def test_ssim_by_hand_on_constant_images():
    x = torch.full((1, 1, 16, 16), 0.3, dtype=torch.float64)
    y = torch.full((1, 1, 16, 16), 0.6, dtype=torch.float64)
    assert ssim(x, y).item() == pytest.approx(_ssim_by_hand_constant(0.3, 0.6), abs=1e-6)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)


def test_ssim_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 1, 28, 28, generator=g)
    small = (truth + 0.05 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    large = (truth + 0.3 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    assert (ssim(small, truth) > ssim(large, truth)).all()


def test_matching_makes_order_irrelevant():
    g = torch.Generator().manual_seed(1)
    truth = torch.rand(6, 3, 32, 32, generator=g)
    recon = (truth + 0.05 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    ordered = score_reconstruction(recon, truth)
    shuffled = score_reconstruction(recon[order], truth)
    assert torch.equal(shuffled.truth_index, order)
    assert torch.allclose(shuffled.psnr.sort().values, ordered.psnr.sort().values)
    assert torch.allclose(shuffled.ssim.sort().values, ordered.ssim.sort().values)
    unmatched = score_reconstruction(recon[order], truth, matched=False)
    assert unmatched.psnr.mean() < ordered.psnr.mean() - 5


def test_match_is_a_permutation():
    truth = torch.rand(5, 1, 8, 8)
    assert sorted(match(truth.flip(0), truth).tolist()) == list(range(5))


def test_label_accuracy_is_order_free():
    assert label_accuracy(torch.tensor([3, 1, 1]), torch.tensor([1, 3, 1])) == 1.0
    assert label_accuracy(torch.tensor([1, 1, 1]), torch.tensor([1, 3, 2])) == pytest.approx(1 / 3)
