"""Losses: values against hand computations, and the weighted sum of the paper."""

from __future__ import annotations

import math

import pytest
import torch

from reprfn.losses import WeightedLoss, charbonnier_loss, fft_loss, l1_loss, l2_loss


def test_pixel_losses():
    sr, hr = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, -1.0], [0.0, 2.0]]]])
    assert l1_loss(sr, hr).item() == pytest.approx(1.0)
    assert l2_loss(sr, hr).item() == pytest.approx(1.5)
    expected = (math.sqrt(1 + 1e-6) * 2 + math.sqrt(1e-6) + math.sqrt(4 + 1e-6)) / 4
    assert charbonnier_loss(sr, hr).item() == pytest.approx(expected, rel=1e-6)


def test_fft_loss_of_a_delta():
    """The FFT of a unit impulse has magnitude 1 at every frequency: the loss is 1."""
    hr = torch.zeros(1, 1, 8, 8)
    hr[..., 3, 5] = 1.0
    assert fft_loss(torch.zeros_like(hr), hr).item() == pytest.approx(1.0, abs=1e-6)
    # and it is the mean over frequencies of |FFT(sr) - FFT(hr)|, not of the pixels
    sr = torch.rand(2, 3, 8, 6)
    ref = (torch.fft.fft2(sr) - torch.fft.fft2(hr.expand(2, 3, 8, 8)[..., :6])).abs().mean()
    assert fft_loss(sr, hr.expand(2, 3, 8, 8)[..., :6]).item() == pytest.approx(ref.item(), rel=1e-6)


def test_weighted_sum_is_the_papers():
    sr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    loss = WeightedLoss({"charbonnier": 0.9, "fft": 0.1})(sr, hr)
    assert loss.item() == pytest.approx((0.9 * charbonnier_loss(sr, hr) + 0.1 * fft_loss(sr, hr)).item(), rel=1e-6)


def test_weighted_loss_errors():
    with pytest.raises(ValueError, match="unknown loss 'ssim'"):
        WeightedLoss({"ssim": 1.0})
    with pytest.raises(ValueError, match="non-zero"):
        WeightedLoss({"l1": 0})
