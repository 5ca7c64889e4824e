"""``reprfn.upscale``, ``upscale_file`` and ``reprfn upscale`` against the model itself.

The reference (``tests.helpers.reference_sr``) is the bundled model in plain eager PyTorch, float32,
called directly on the whole image, its output clamped, scaled and rounded as the docs say. Every
test here runs the *default* CPU engine (``--backend auto``: ONNX Runtime or OpenVINO for whole
images, the fused channels-last PyTorch path for tiles), which the docs promise equal to the model
within 1e-5 on photos (docs/performance.md): at most one level, on the few samples that sit on a
rounding boundary. The images are crops of the bundled photo whose R, G and B differ and which no
flip maps onto itself, so a channel swap, a flip or a transpose anywhere on the way fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import reprfn
import reprfn.api as api
from reprfn.checkpoint import bundled_weights
from reprfn.cli import main
from reprfn.resize import imresize
from tests.helpers import (
    assert_close_levels,
    assert_default_engine_ran,
    asymmetric_photo,
    reference_sr,
)

# Share of samples allowed one level off. 8 bits: a difference of at most 1e-5 moves a sample only
# within 255e-5 of a rounding boundary, about 0.5% of them at worst (measured: none whole, one tiled).
# 16 bits: 1e-5 is 0.66 of a level, so more samples move (measured: 0.2% to 0.5%); still one level.
EIGHT_BIT_OFF = 0.005
SIXTEEN_BIT_OFF = 0.05


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return asymmetric_photo()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """The bundled x4 model, the default of ``reprfn.upscale`` (one scale: one engine export a run)."""
    return reprfn.load_model(bundled_weights(4))


def _sixteen(photo: np.ndarray) -> np.ndarray:
    """A real 16-bit image: the photo in the high byte, varying values in the low byte."""
    low = np.random.default_rng(0).integers(0, 256, photo.shape, dtype=np.uint16)
    return photo.astype(np.uint16) * 256 + low


def _alpha(h: int, w: int) -> np.ndarray:
    """A transparency ramp, asymmetric in both axes."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (255 * (xx / (w - 1)) ** 2 * (0.3 + 0.7 * yy / (h - 1))).round().astype(np.uint8)


def _reference_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Alpha never goes through the model: MATLAB bicubic on its own (docs/inference.md)."""
    peak = float(np.iinfo(alpha.dtype).max)
    return np.clip(np.rint(imresize(alpha.astype(np.float64), scale)), 0, peak).astype(alpha.dtype)


def _again(prepared: list):
    """None (the bundled model, prepared by ``reprfn.upscale`` itself) on a test's first call; then
    the model that call prepared, so one test opens the engine once (about a second each time)."""
    return prepared[0] if prepared else None


# ------------------------------------------------------------------------------------------- API


def test_numpy_images_equal_the_model(photo, model, default_engine):
    cases = {
        "rgb": photo,
        "grey": photo[..., 0].copy(),
        "rgb16": _sixteen(photo),
        "grey16": _sixteen(photo)[..., 1].copy(),
    }
    for img in cases.values():
        got = reprfn.upscale(img, scale=4, device="cpu", model=_again(default_engine))
        off = SIXTEEN_BIT_OFF if img.dtype == np.uint16 else EIGHT_BIT_OFF
        assert_close_levels(got, reference_sr(model, img), off)
    # HxWx1 stays HxWx1
    hw1 = reprfn.upscale(photo[..., :1].copy(), scale=4, device="cpu", model=_again(default_engine))
    assert_close_levels(hw1, reference_sr(model, photo[..., 0].copy())[..., None], EIGHT_BIT_OFF)
    assert_default_engine_ran(default_engine)


def test_rgba_array_colour_from_the_model_alpha_bicubic(photo, model, default_engine):
    alpha = _alpha(*photo.shape[:2])
    got = reprfn.upscale(np.dstack([photo, alpha]), scale=4, device="cpu")
    assert got.shape == (4 * photo.shape[0], 4 * photo.shape[1], 4)
    assert_close_levels(got[..., :3].copy(), reference_sr(model, photo), EIGHT_BIT_OFF)
    assert_close_levels(got[..., 3].copy(), _reference_alpha(alpha, 4), EIGHT_BIT_OFF)
    assert_default_engine_ran(default_engine)


def test_pil_images_equal_the_model(photo, model, default_engine):
    alpha = _alpha(*photo.shape[:2])
    grey16 = _sixteen(photo)[..., 2].copy()
    rgb = reprfn.upscale(Image.fromarray(photo), device="cpu", model=_again(default_engine))
    assert rgb.mode == "RGB"
    assert_close_levels(np.asarray(rgb), reference_sr(model, photo), EIGHT_BIT_OFF)
    grey = reprfn.upscale(Image.fromarray(photo[..., 1].copy()), device="cpu", model=_again(default_engine))
    assert grey.mode == "L"
    assert_close_levels(np.asarray(grey), reference_sr(model, photo[..., 1].copy()), EIGHT_BIT_OFF)
    rgba = reprfn.upscale(Image.fromarray(np.dstack([photo, alpha])), device="cpu", model=_again(default_engine))
    assert rgba.mode == "RGBA"
    assert_close_levels(np.asarray(rgba)[..., :3].copy(), reference_sr(model, photo), EIGHT_BIT_OFF)
    assert_close_levels(np.asarray(rgba)[..., 3].copy(), _reference_alpha(alpha, 4), EIGHT_BIT_OFF)
    wide = reprfn.upscale(Image.fromarray(grey16), device="cpu", model=_again(default_engine))
    assert_close_levels(np.asarray(wide).astype(np.uint16), reference_sr(model, grey16), SIXTEEN_BIT_OFF)
    assert_default_engine_ran(default_engine)


def test_tensors_equal_the_model_within_1e5(photo, model, default_engine):
    """Float in, float out: the documented bound itself (max |diff| <= 1e-5 on photos)."""
    big = np.asarray(Image.open(bundled_weights(4).parent.parent / "assets" / "astronaut.png").convert("RGB"))
    a = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    b = torch.from_numpy(big[20:56, 150:202].copy()).permute(2, 0, 1).float() / 255  # another crop
    batch = torch.stack([a, b])
    with torch.inference_mode():
        want = model(batch).clamp(0, 1)
    one = reprfn.upscale(a, device="cpu", model=_again(default_engine))
    two = reprfn.upscale(batch, device="cpu", model=_again(default_engine))
    assert one.shape == want[0].shape and two.shape == want.shape and two.dtype == torch.float32
    assert (one - want[0]).abs().max().item() <= 1e-5
    assert (two - want).abs().max().item() <= 1e-5
    assert_default_engine_ran(default_engine)


def test_upscale_file_equals_the_model(photo, model, default_engine, tmp_path):
    """``reprfn.api.upscale_file`` with the model as ``reprfn upscale`` prepares it, on PNG files."""
    alpha = _alpha(*photo.shape[:2])
    grey16 = _sixteen(photo)[..., 0].copy()
    Image.fromarray(photo).save(tmp_path / "rgb.png")
    Image.fromarray(photo[..., 2].copy()).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([photo, alpha])).save(tmp_path / "rgba.png")
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    net = api.prepare(reprfn.load_model(bundled_weights(4)), torch.device("cpu"))
    for name in ("rgb", "grey", "rgba", "g16"):
        api.upscale_file(net, tmp_path / f"{name}.png", tmp_path / f"{name}_x4.png", tile="auto",
                         device=torch.device("cpu"))
    out = {n: np.asarray(Image.open(tmp_path / f"{n}_x4.png")) for n in ("rgb", "grey", "rgba", "g16")}
    assert_close_levels(out["rgb"], reference_sr(model, photo), EIGHT_BIT_OFF)
    assert_close_levels(out["grey"], reference_sr(model, photo[..., 2].copy()), EIGHT_BIT_OFF)
    assert_close_levels(out["rgba"][..., :3].copy(), reference_sr(model, photo), EIGHT_BIT_OFF)
    assert_close_levels(out["rgba"][..., 3].copy(), _reference_alpha(alpha, 4), EIGHT_BIT_OFF)
    assert_close_levels(out["g16"].astype(np.uint16), reference_sr(model, grey16), SIXTEEN_BIT_OFF)
    assert_default_engine_ran(default_engine)


# ------------------------------------------------------------------------------------------- CLI


def test_cli_upscale_files_equal_the_model(photo, model, default_engine, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    alpha = _alpha(*photo.shape[:2])
    grey16 = _sixteen(photo)[..., 1].copy()
    Image.fromarray(photo).save(src / "rgb.png")
    Image.fromarray(photo[..., 0].copy()).save(src / "grey.png")
    Image.fromarray(np.dstack([photo, alpha])).save(src / "rgba.png")
    Image.fromarray(grey16).save(src / "g16.png")
    assert main(["upscale", "-i", str(src), "-o", str(out), "-s", "4", "--quiet"]) == 0
    got = {p.stem: np.asarray(Image.open(p)) for p in out.iterdir()}
    assert sorted(got) == ["g16", "grey", "rgb", "rgba"]
    assert_close_levels(got["rgb"], reference_sr(model, photo), EIGHT_BIT_OFF)
    assert_close_levels(got["grey"], reference_sr(model, photo[..., 0].copy()), EIGHT_BIT_OFF)
    assert_close_levels(got["rgba"][..., :3].copy(), reference_sr(model, photo), EIGHT_BIT_OFF)
    assert_close_levels(got["rgba"][..., 3].copy(), _reference_alpha(alpha, 4), EIGHT_BIT_OFF)
    assert_close_levels(got["g16"].astype(np.uint16), reference_sr(model, grey16), SIXTEEN_BIT_OFF)
    assert_default_engine_ran(default_engine)


def test_cli_tiles_equal_the_model(photo, model, default_engine, tmp_path):
    """Tiles run the fused PyTorch path; they equal the whole image to one level (docs/inference.md)."""
    Image.fromarray(photo).save(tmp_path / "rgb.png")
    assert main(["upscale", "-i", str(tmp_path / "rgb.png"), "-o", str(tmp_path / "tiled.png"), "-s", "4",
                 "--tile", "30", "--quiet"]) == 0
    tiled = np.asarray(Image.open(tmp_path / "tiled.png"))
    assert_close_levels(tiled, reference_sr(model, photo), EIGHT_BIT_OFF)
    assert_default_engine_ran(default_engine, whole_images=False)
