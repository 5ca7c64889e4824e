"""PSNR and SSIM with the conventions of the SR literature (see docs/evaluation.md).

Images are HxW or HxWxC arrays on the 0..255 scale (uint8 or float). ``crop_border`` pixels are
removed from each side; ``test_y_channel`` compares the BT.601 luma
``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` (not rounded), as in the standard
evaluation code. All arithmetic is float64.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UsageError

Y_COEFFS = np.array([65.481, 128.553, 24.966]) / 255.0


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image on the 0..255 scale; greyscale images pass through."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3 and img.shape[2] == 3:
        # elementwise, not a matmul: the result must not depend on the array's memory layout
        return img[..., 0] * Y_COEFFS[0] + img[..., 1] * Y_COEFFS[1] + img[..., 2] * Y_COEFFS[2] + 16.0
    if img.ndim == 3 and img.shape[2] == 1:
        return img[..., 0]
    if img.ndim == 2:
        return img
    raise UsageError(f"expected an HxW, HxWx1 or HxWx3 image, got shape {img.shape}")


def _prepare(img: np.ndarray, ref: np.ndarray, crop_border: int, test_y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    if img.shape != ref.shape:
        raise UsageError(f"image shapes differ: {img.shape} vs {ref.shape}")
    img, ref = np.asarray(img, np.float64), np.asarray(ref, np.float64)
    if test_y_channel:
        img, ref = rgb_to_y(img), rgb_to_y(ref)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        ref = ref[crop_border:-crop_border, crop_border:-crop_border]
    if img.size == 0:
        raise UsageError(f"nothing left after cropping {crop_border} border pixels")
    return img, ref


def psnr(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB for 0..255 data; ``inf`` for identical images."""
    img, ref = _prepare(img, ref, crop_border, test_y_channel)
    mse = np.mean((img - ref) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """'valid' 2-D Gaussian filtering as two 1-D passes (the window is separable): 5x cheaper."""
    return F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))


def _ssim_single(img: np.ndarray, ref: np.ndarray) -> float:
    """SSIM of one channel: 11x11 Gaussian (sigma 1.5), K1 0.01, K2 0.03, 'valid' filtering."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gaussian_1d()
    x = torch.from_numpy(np.ascontiguousarray(img)).view(1, 1, *img.shape)
    y = torch.from_numpy(np.ascontiguousarray(ref)).view(1, 1, *ref.shape)
    if min(img.shape) < 11:
        raise UsageError(f"image of {img.shape[0]}x{img.shape[1]} is smaller than the 11x11 SSIM window")
    mu_x, mu_y = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mu_x**2
    syy = _filter(y * y, g) - mu_y**2
    sxy = _filter(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(ssim_map.mean())


def ssim(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """Structural similarity for 0..255 data; multi-channel images average the per-channel SSIMs."""
    img, ref = _prepare(img, ref, crop_border, test_y_channel)
    if img.ndim == 2:
        return _ssim_single(img, ref)
    return float(np.mean([_ssim_single(img[..., c], ref[..., c]) for c in range(img.shape[2])]))
