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


# ------------------------------------------------------------------ the border crop, side by side

SIDES = ("top", "bottom", "left", "right")


def _band(side: str, border: int) -> tuple[slice, slice]:
    """The ``border`` outermost rows or columns of one side."""
    return {"top": (slice(0, border), slice(None)), "bottom": (slice(-border, None), slice(None)),
            "left": (slice(None), slice(0, border)), "right": (slice(None), slice(-border, None))}[side]


def _just_inside(side: str, border: int, h: int, w: int) -> tuple[int, int]:
    """The first pixel inside the crop line of one side, away from the corners."""
    return {"top": (border, w // 2), "bottom": (h - border - 1, w // 2),
            "left": (h // 2, border), "right": (h // 2, w - border - 1)}[side]


@pytest.mark.parametrize("border", [1, 2, 4])
@pytest.mark.parametrize("side", SIDES)
def test_border_crop_drops_exactly_the_border_of_each_side(side, border):
    h, w = 24, 30
    ref = np.random.default_rng(border).integers(0, 256, (h, w, 3)).astype(np.float64)
    base = ref.copy()
    base[h // 2 - 1, w // 2 + 3] += 20.0  # one inner error, on all three channels
    # by hand: Y moves by 20 * 219 / 255 on one pixel of the (h - 2b) x (w - 2b) that are measured
    mse = (20.0 * 219.0 / 255.0) ** 2 / ((h - 2 * border) * (w - 2 * border))
    expected = 10 * np.log10(255.0**2 / mse)
    assert psnr(base, ref, border, True) == pytest.approx(expected, rel=1e-12)

    wrong_border = base.copy()
    wrong_border[_band(side, border)] = 255.0 - wrong_border[_band(side, border)]
    assert psnr(wrong_border, ref, border, True) == psnr(base, ref, border, True)
    assert ssim(wrong_border, ref, border, True) == ssim(base, ref, border, True)
    assert psnr(wrong_border, ref, border - 1, True) < psnr(base, ref, border - 1, True)  # it was measurable

    inside = base.copy()
    inside[_just_inside(side, border, h, w)] += 30.0
    assert psnr(inside, ref, border, True) < psnr(base, ref, border, True)
    assert ssim(inside, ref, border, True) < ssim(base, ref, border, True)


# ------------------------------------------------------------------------ SSIM, computed by hand


def _ssim_by_hand(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Wang et al. 2004, written out: an 11x11 Gaussian window (normalised to sum 1) at every
    position where it fits ('valid'), weighted means, variances and covariance about those means,
    C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, and the mean of the SSIM map."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * sigma**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va, vb = (win * (pa - ma) ** 2).sum(), (win * (pb - mb) ** 2).sum()
            cov = (win * (pa - ma) * (pb - mb)).sum()
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_equals_the_definition_computed_by_hand():
    rng = np.random.default_rng(7)
    ref = rng.integers(0, 256, (15, 14)).astype(np.float64)  # 5 x 4 window positions
    img = np.clip(ref + rng.normal(0, 50, ref.shape), 0, 255)
    by_hand = _ssim_by_hand(img, ref)
    assert 0.5 < by_hand < 0.95
    assert ssim(img, ref) == pytest.approx(by_hand, rel=1e-12)
    # the check can tell the documented window from a near one
    assert abs(_ssim_by_hand(img, ref, sigma=1.2) - by_hand) > 1e-3
    assert abs(_ssim_by_hand(img[1:, 1:], ref[1:, 1:]) - by_hand) > 1e-3  # and 'valid' from a shifted crop


def test_ssim_on_y_and_on_rgb_by_hand():
    rng = np.random.default_rng(8)
    ref = rng.integers(0, 256, (13, 12, 3)).astype(np.float64)
    img = np.clip(ref + rng.normal(0, 15, ref.shape), 0, 255)
    y = lambda im: 16 + (65.481 * im[..., 0] + 128.553 * im[..., 1] + 24.966 * im[..., 2]) / 255  # noqa: E731
    assert ssim(img, ref, test_y_channel=True) == pytest.approx(_ssim_by_hand(y(img), y(ref)), rel=1e-12)
    per_channel = np.mean([_ssim_by_hand(img[..., c], ref[..., c]) for c in range(3)])
    assert ssim(img, ref) == pytest.approx(per_channel, rel=1e-12)
