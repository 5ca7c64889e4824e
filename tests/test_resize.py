"""The resizer against MATLAB's own output, and the torch variant against the numpy one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reprfn.resize import contributions, imresize, imresize_torch, output_length
from tests.helpers import shared_path


def _pairs():
    root = shared_path("data", "benchmark")
    pairs = sorted(root.glob("Set*/x*/LR/*.png"))
    assert len(pairs) == 57
    return pairs


def test_all_57_matlab_files_reproduced_exactly():
    mismatched = []
    for lr_path in _pairs():
        scale = int(lr_path.parent.parent.name[1:])
        hr = np.array(Image.open(lr_path.parent.parent / "HR" / lr_path.name))
        lr = np.array(Image.open(lr_path))
        out = imresize(hr, 1 / scale)
        if out.dtype != np.uint8 or not np.array_equal(out, lr):
            mismatched.append(str(lr_path))
    assert not mismatched, f"{len(mismatched)} files differ, e.g. {mismatched[:3]}"


def test_rounding_between_passes_matters():
    """Keeping the intermediate in float (what many ports do) is not MATLAB: this can fail."""
    lr_path = _pairs()[0]
    scale = int(lr_path.parent.parent.name[1:])
    hr = np.array(Image.open(lr_path.parent.parent / "HR" / lr_path.name))
    float_path = np.floor(np.clip(imresize(hr.astype(np.float64), 1 / scale), 0, 255) + 0.5)
    assert not np.array_equal(float_path, np.array(Image.open(lr_path)))


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4])
def test_output_sizes(scale):
    img = np.random.default_rng(0).integers(0, 256, (36, 24, 3), dtype=np.uint8)
    out = imresize(img, scale)
    assert out.shape == (round(36 * scale), round(24 * scale), 3) and out.dtype == np.uint8
    assert imresize(img[..., 0], scale).shape == out.shape[:2]


def test_output_length_guards_float_error():
    assert output_length(255, 1 / 3) == 85 and output_length(10, 1 / 3) == 4 and output_length(7, 2) == 14


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 3])
def test_weights_sum_to_one_and_constants_survive(scale):
    weights, indices = contributions(30, output_length(30, scale), scale)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert indices.min() >= 0 and indices.max() <= 29
    assert np.all(imresize(np.full((30, 30), 77, np.uint8), scale) == 77)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4, (0.5, 0.25)])
def test_torch_variant_matches_numpy_float(scale):
    rng = np.random.default_rng(1)
    img = rng.random((2, 3, 25, 19))
    ref = np.stack([np.stack([imresize(c, scale) for c in im]) for im in img])
    out = imresize_torch(torch.from_numpy(img), scale)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)


def test_torch_variant_is_differentiable_and_float_only():
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    imresize_torch(x, 0.5).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(TypeError):
        imresize_torch(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 0.5)


def test_bad_inputs():
    with pytest.raises(ValueError):
        imresize(np.zeros((0, 4), np.uint8), 0.5)
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4), np.uint8), -1)
    with pytest.raises(TypeError):
        imresize(np.zeros((4, 4), np.int32), 0.5)


# Self-contained checks of the rounding (no MATLAB files needed). Keys' kernel (a = -0.5) at the
# offsets of a x2 upscale or a /2 downscale takes values in 256ths: cubic(1/4) = 222/256,
# cubic(3/4) = 58/256, cubic(5/4) = -18/256, cubic(7/4) = -6/256, so a step from 0 to c lands
# exactly on halves: 52c/256 and 204c/256 upscaling, c/2 downscaling (worked out in each test).
HALF_AWAY = {6.5: 7, 7.5: 8, 25.5: 26}  # MATLAB: half away from zero (rint would give 6, 8, 26)


@pytest.mark.parametrize("axis", [0, 1])
def test_upscale_rounds_exact_halves_away_from_zero(axis):
    # x2: output 2k weighs inputs k-1..k+2 by (-18, 222, 58, -6)/256, output 2k+1 by (-6, 58, 222, -18)/256.
    # Across the step 0 -> 32: -6*32/256 = -0.75, -18*32/256 = -2.25 (clipped to 0), then
    # (58 - 6)*32/256 = 6.5 and (222 - 18)*32/256 = 25.5.
    row = np.array([[0] * 6 + [32] * 6], np.uint8)
    scale = (1, 2)
    if axis == 0:
        row, scale = row.T, (2, 1)
    exact = imresize(row.astype(np.float64), scale).ravel()
    out = imresize(row, scale).ravel()
    np.testing.assert_array_equal(exact[9:13], [-0.75, -2.25, 6.5, 25.5])
    np.testing.assert_array_equal(out[9:15], [0, 0, HALF_AWAY[6.5], HALF_AWAY[25.5], 34, 33])  # 34.25, 32.75


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("level", [13, 15])
def test_downscale_rounds_exact_halves_away_from_zero(axis, level):
    # /2 (antialiased): output 4 weighs inputs 4..11 by (-6, -18, 58, 222, 222, 58, -18, -6)/512; with
    # inputs 1..7 at 0 and 8.. at c that is (222 + 58 - 18 - 6) c / 512 = c / 2: 6.5 and 7.5.
    row = np.array([[0] * 7 + [level] * 9], np.uint8)
    scale = (1, 0.5)
    if axis == 0:
        row, scale = row.T, (0.5, 1)
    assert imresize(row.astype(np.float64), scale).ravel()[3] == level / 2
    assert imresize(row, scale).ravel()[3] == HALF_AWAY[level / 2]


def test_uint8_passes_are_rounded_one_at_a_time():
    """MATLAB rounds to uint8 after the first pass (rows first on equal scales): the 2-D resize of
    a uint8 image is the row pass alone, then the column pass alone; keeping the intermediate in
    float and rounding once at the end gives another image."""
    img = np.random.default_rng(3).integers(0, 256, (23, 29, 3), dtype=np.uint8)
    for scale in (1 / 3, 1 / 2, 2):
        rows_then_cols = imresize(imresize(img, (scale, 1)), (1, scale))
        np.testing.assert_array_equal(imresize(img, scale), rows_then_cols)
        once = np.floor(np.clip(imresize(img.astype(np.float64), scale), 0, 255) + 0.5)
        assert not np.array_equal(once, rows_then_cols)
