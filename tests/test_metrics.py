"""PSNR / SSIM conventions: Y channel, border crop, greyscale, and known values."""

from __future__ import annotations

import numpy as np
import pytest

from reprfn.metrics import psnr, rgb_to_y, ssim


def test_rgb_to_y_bt601():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    y = rgb_to_y(img)
    np.testing.assert_allclose(y[0], [16.0, 235.0, 16 + 65.481], atol=1e-9)


def test_psnr_known_value_and_crop():
    ref = np.full((20, 20), 100.0)
    img = ref.copy()
    img[:2] += 50  # error only in the top border rows
    assert psnr(img, ref, crop_border=2) == float("inf")
    mse = 50.0**2 * 2 * 20 / 400
    assert psnr(img, ref) == pytest.approx(10 * np.log10(255**2 / mse))


def test_y_channel_differs_from_rgb():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    img = np.clip(ref.astype(int) + rng.integers(-8, 9, ref.shape), 0, 255).astype(np.uint8)
    assert psnr(img, ref, 4, True) != pytest.approx(psnr(img, ref, 4, False))


def test_ssim_identity_and_degradation():
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
    assert ssim(ref, ref) == pytest.approx(1.0)
    noisy = np.clip(ref + rng.normal(0, 20, ref.shape), 0, 255)
    assert 0 < ssim(noisy, ref, crop_border=2, test_y_channel=True) < 0.99


def test_ssim_constant_shift_formula():
    """For constant images SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1)."""
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 120.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))


def test_shape_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))
