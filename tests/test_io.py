"""Decoding image files to uint8 arrays, the tensor conventions, and one-line errors."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from reprfn.io import ImageError, list_images, read_image, to_tensor, to_uint8, write_png


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)


def test_rgb_and_grey_round_trip(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)
    assert np.array_equal(read_image(tmp_path / "g.png"), rgb[..., 0])


@pytest.mark.parametrize("mode,channels", [("RGBA", 3), ("LA", 0), ("P", 3), ("CMYK", 3), ("1", 0)])
def test_other_modes_become_rgb_or_grey(tmp_path, rgb, mode, channels):
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    Image.fromarray(rgb).convert(mode).save(path)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == ((6, 9, 3) if channels else (6, 9))


def test_alpha_is_dropped_colour_kept(tmp_path, rgb):
    rgba = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])  # fully transparent
    Image.fromarray(rgba).save(tmp_path / "t.png")
    assert np.array_equal(read_image(tmp_path / "t.png"), rgb)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert read_image(tmp_path / "g16.png").tolist() == [[0, 1, 4, 128, 255]]


def _png16_rgb(path, arr: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    h, w, _ = arr.shape
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_rgb_becomes_8_bit(tmp_path, rgb):
    _png16_rgb(tmp_path / "c16.png", rgb.astype(np.uint16) * 257)
    out = read_image(tmp_path / "c16.png")
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)


def test_exif_orientation_is_applied(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb).save(tmp_path / "o.jpg", exif=exif, quality=100)
    assert read_image(tmp_path / "o.jpg").shape == (9, 6, 3)


@pytest.mark.parametrize("content,reason", [
    (b"just some text", "not a readable image"),
    ("truncated", "not a readable image"),
    (None, "no such file"),
])
def test_bad_files_raise_one_line_naming_the_file(tmp_path, rgb, content, reason):
    path = tmp_path / "bad.png"
    if content == "truncated":
        Image.fromarray(rgb).save(path)
        path.write_bytes(path.read_bytes()[:60])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message and reason in message and "\n" not in message
    assert isinstance(info.value, ValueError)


def test_list_images_sorted_by_suffix_non_recursive(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.webp", "d.TIFF", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.png").write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp", "d.TIFF"]


def test_tensor_conventions(rgb):
    t = to_tensor(rgb)
    assert t.shape == (1, 3, 6, 9) and t.dtype == torch.float32 and float(t.max()) <= 1.0
    assert np.array_equal(to_uint8(t), rgb)
    assert to_tensor(rgb[..., 0]).shape == (1, 1, 6, 9) and to_uint8(to_tensor(rgb[..., 0])).shape == (6, 9)
    odd = torch.tensor([-0.5, 0.0, 0.5 / 255, 1.6 / 255, 2.0]).view(1, 1, 1, 5)
    assert to_uint8(odd).tolist() == [[0, 0, 0, 2, 255]]  # clamped, rounded (half to even)


def test_write_png_is_atomic_and_readable(tmp_path, rgb):
    out = write_png(rgb, tmp_path / "sub" / "x.png")
    assert np.array_equal(read_image(out), rgb)
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.png"]  # no temporary left behind
