"""Tiled inference (reprfn.runtime.run): seams within one 8-bit level of the whole image, on real
photos and odd sizes."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import reprfn.runtime.engines as engines
import reprfn.runtime.memory as memory
from reprfn import load_model
from reprfn.checkpoint import bundled_weights
from reprfn.models.blocks import ESA_STRIDE, pooled_length, upsample_in_window
from reprfn.runtime.info import BYTES_PER_PIXEL
from reprfn.runtime.memory import DEFAULT_PAD, auto_tile
from reprfn.runtime.run import run as run_model
from tests.helpers import shared_path

SAMPLE = bundled_weights(4).parent.parent / "assets" / "astronaut.png"


@pytest.fixture(scope="module")
def model():
    return load_model(bundled_weights(4))


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255


def _levels(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.mul(255).round() - b.mul(255).round()).abs().max().item()


@pytest.mark.parametrize("h,w", [(15, 15), (40, 52), (97, 33), (240, 320)])
def test_whole_window_upsampling_equals_interpolate(h, w):
    c3 = torch.randn(1, 4, pooled_length(h), pooled_length(w))
    ref = F.interpolate(c3, size=(h, w), mode="bilinear", align_corners=False)
    assert (upsample_in_window(c3, (h, w), (0, 0, h, w)) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("crop,tile", [((0, 0, 130, 170), 42), ((7, 11, 37, 53), 18), ((0, 0, 256, 256), 96)])
def test_tiles_match_the_whole_image_on_the_sample(model, crop, tile):
    y, x, h, w = crop
    img = np.array(Image.open(SAMPLE).convert("RGB"))[y : y + h, x : x + w]
    inp = _tensor(img)
    whole = run_model(model, inp)
    tiled = run_model(model, inp, tile=tile)
    assert tiled.shape == whole.shape == (1, 3, 4 * h, 4 * w)
    assert _levels(tiled, whole) <= 1
    assert (tiled - whole).abs().max() < 1e-4  # in float: the seams are at noise level


@pytest.mark.parametrize("name", ["B100/HR/img_010.png", "Set14/x4/LR/img_012.png"])
def test_tiles_match_the_whole_image_on_real_photos(model, name):
    img = np.array(Image.open(shared_path("data", "benchmark", *name.split("/"))).convert("RGB"))
    inp = _tensor(img[:180, :210])
    whole = run_model(model, inp)
    assert _levels(run_model(model, inp, tile=60), whole) <= 1


def test_global_esa_geometry_is_what_makes_tiles_exact(model, monkeypatch):
    """Without sampling ESA at the whole image's coordinates the seams show (this can fail)."""
    inp = _tensor(np.array(Image.open(SAMPLE).convert("RGB"))[:150, :150])
    whole = run_model(model, inp)
    monkeypatch.setattr(engines, "esa_window", lambda window: nullcontext())
    assert (run_model(model, inp, tile=42) - whole).abs().max() > 1e-3


def test_padding_is_needed(model):
    inp = _tensor(np.array(Image.open(SAMPLE).convert("RGB"))[:120, :120])
    whole = run_model(model, inp)
    assert _levels(run_model(model, inp, tile=42, pad=0), whole) > 1
    assert DEFAULT_PAD % ESA_STRIDE == 0


@pytest.mark.parametrize("h,w", [(1, 1), (5, 3), (14, 40), (16, 16)])
def test_tiny_images(model, h, w):
    out = run_model(model, torch.rand(1, 3, h, w))
    assert out.shape == (1, 3, 4 * h, 4 * w) and out.min() >= 0 and out.max() <= 1


def test_auto_tile(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 64 * 2**30)
    assert auto_tile(540, 960, torch.device("cpu")) == 0
    monkeypatch.setattr(memory, "available_memory", lambda device: 200 * 2**20)
    tile = auto_tile(2000, 3000, torch.device("cpu"))
    budget = 0.25 * 200 * 2**20
    assert tile >= memory.MIN_TILE and tile % ESA_STRIDE == 0
    # the largest aligned tile whose padded window fits a quarter of free memory
    assert (tile + 2 * DEFAULT_PAD) ** 2 * BYTES_PER_PIXEL <= budget
    assert (tile + ESA_STRIDE + 2 * DEFAULT_PAD) ** 2 * BYTES_PER_PIXEL > budget
