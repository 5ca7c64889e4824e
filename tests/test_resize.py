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
