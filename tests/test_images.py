"""reprfn.images: decoding files to arrays, the tensor conventions, full-fidelity pictures, one-line errors."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
from PIL import Image, ImageOps

from reprfn import files
from reprfn.errors import ImageError
from reprfn.images import (
    DEFAULT_MAX_PIXELS,
    Picture,
    list_images,
    load_picture,
    output_format,
    read_image,
    save_picture,
    to_tensor,
    to_uint8,
    write_png,
)
from reprfn.images import write as image_write
from reprfn.images.metadata import orient, patch_orientation
from reprfn.images.png16 import png_chunk
from reprfn.images.tiff import write_tiff


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
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


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


# --------------------------------------------------------------------- load_picture / save_picture

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def _png16(path, samples: np.ndarray, interlace: bool = False) -> None:
    """A 16-bit PNG of HxWxC samples (C = 1..4), filter 0, optionally Adam7-interlaced, by hand."""
    h, w, c = samples.shape
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    raw = b"".join(
        b"\x00" + row.astype(">u2").tobytes()
        for x0, y0, dx, dy in passes for row in samples[y0::dy, x0::dx] if row.size
    )
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, int(interlace))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                     + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def _samples(pic: Picture) -> np.ndarray:
    """Pixels and alpha of a picture as one HxWxC array, for exact comparisons."""
    px = pic.pixels[..., None] if pic.pixels.ndim == 2 else pic.pixels
    return px if pic.alpha is None else np.concatenate([px, pic.alpha[..., None]], axis=2)


def _picture(kind: str, dtype=np.uint8, seed: int = 0) -> Picture:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max + 1
    shape = (6, 9, 3) if kind in ("rgb", "rgba") else (6, 9)
    pixels = rng.integers(0, top, shape, dtype=dtype)
    alpha = rng.integers(0, top, (6, 9), dtype=dtype) if kind in ("rgba", "grey_alpha") else None
    if alpha is not None:
        alpha[0, :3] = 0  # fully transparent pixels must keep their colour too
    return Picture(pixels, alpha)


def _srgb_icc() -> bytes:
    from PIL import ImageCms
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "ReprCam"  # Make
    if orientation is not None:
        exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"  # DateTimeOriginal, in the Exif sub-IFD
    return exif


def _listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp"])
@pytest.mark.parametrize("kind", ["rgb", "grey", "rgba", "grey_alpha"])
def test_lossless_round_trip_8_bit(tmp_path, suffix, kind):
    pic = _picture(kind)
    out = save_picture(pic, tmp_path / f"x{suffix}")
    back = load_picture(out)
    assert back.format == {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".webp": "WEBP"}[suffix]
    assert back.pixels.dtype == np.uint8 and (back.alpha is None) == (pic.alpha is None)
    expected = pic
    if pic.pixels.ndim == 2 and (suffix == ".webp" or (suffix == ".bmp" and pic.alpha is not None)):
        # WebP has no greyscale, BMP no grey+alpha: documented to come back as RGB
        expected = Picture(np.repeat(pic.pixels[..., None], 3, axis=2), pic.alpha)
    assert np.array_equal(_samples(back), _samples(expected))
    assert _listing(tmp_path) == [f"x{suffix}"]


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("kind", ["rgb", "grey", "rgba", "grey_alpha"])
def test_lossless_round_trip_16_bit(tmp_path, suffix, kind):
    pic = _picture(kind, np.uint16)
    back = load_picture(save_picture(pic, tmp_path / f"x{suffix}"))
    assert (back.alpha is None) == (pic.alpha is None)
    expected = pic
    if suffix != ".png" and kind == "grey_alpha":  # Pillow cannot read 16-bit grey+alpha TIFF
        expected = Picture(np.repeat(pic.pixels[..., None], 3, axis=2), pic.alpha)
    assert back.pixels.dtype == np.uint16 and np.array_equal(_samples(back), _samples(expected))


def test_16_bit_png_writer_uses_every_filter_and_reads_back_bit_exact(tmp_path):
    h, w = 40, 16
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint16)
    img[0:8] = np.random.default_rng(0).integers(0, 65536, (8, w, 3))  # noise
    img[8:16] = (x * 4000)[8:16, :, None]                                 # ramp: Sub
    img[16:24] = img[15]                                                  # repeated rows: Up
    img[24:40] = ((x * 3 + y * 5) * 900)[24:40, :, None]                   # planes: Average, Paeth
    save_picture(Picture(img), tmp_path / "f.png")
    data = tmp_path.joinpath("f.png").read_bytes()
    idat, pos = b"", 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        if data[pos + 4:pos + 8] == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * 6)
    assert set(rows[:, 0].tolist()) == {0, 1, 2, 3, 4}
    assert np.array_equal(load_picture(tmp_path / "f.png").pixels, img)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True])
def test_16_bit_png_from_elsewhere_keeps_16_bits(tmp_path, channels, interlace):
    samples = np.random.default_rng(channels).integers(0, 65536, (11, 13, channels), dtype=np.uint16)
    _png16(tmp_path / "e.png", samples, interlace)
    pic = load_picture(tmp_path / "e.png")
    assert pic.pixels.dtype == np.uint16 and pic.pixels.ndim == (2 if channels <= 2 else 3)
    assert (pic.alpha is not None) == (channels in (2, 4))
    assert np.array_equal(_samples(pic), samples)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_tiff_both_byte_orders_raw_and_deflate(tmp_path, big_endian, compress, channels):
    samples = np.random.default_rng(channels).integers(0, 65536, (7, 10, channels), dtype=np.uint16)
    with open(tmp_path / "t.tif", "wb") as fp:
        write_tiff(fp, samples, None, None, big_endian=big_endian, compress=compress)
    pic = load_picture(tmp_path / "t.tif")
    assert pic.format == "TIFF" and pic.pixels.dtype == np.uint16
    assert np.array_equal(_samples(pic), samples)


def test_bit_depth_follows_the_file_not_the_values(tmp_path):
    low16 = np.arange(54, dtype=np.uint16).reshape(6, 9)  # every value fits in 8 bits
    Image.fromarray(low16).save(tmp_path / "g16.png")
    _png16(tmp_path / "c16.png", np.dstack([low16] * 3))
    Image.fromarray(np.full((6, 9), 255, np.uint8)).save(tmp_path / "g8.png")
    assert load_picture(tmp_path / "g16.png").pixels.dtype == np.uint16
    assert load_picture(tmp_path / "c16.png").pixels.dtype == np.uint16
    assert load_picture(tmp_path / "g8.png").pixels.dtype == np.uint8


def test_greyscale_modes(tmp_path, rgb):
    grey = rgb[..., 0]
    wide = grey.astype(np.int64)
    Image.fromarray(grey).save(tmp_path / "l.png")
    Image.fromarray(grey).convert("1").save(tmp_path / "one.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "i16.tif")
    Image.frombytes("I;16B", (9, 6), (wide * 257).astype(">u2").tobytes()).save(tmp_path / "i16b.tif")
    Image.fromarray(grey.astype(np.int32) * 200).save(tmp_path / "i.tif")  # mode "I"
    pic = load_picture(tmp_path / "l.png")
    assert pic.pixels.dtype == np.uint8 and np.array_equal(pic.pixels, grey) and pic.alpha is None
    assert set(np.unique(load_picture(tmp_path / "one.png").pixels)) <= {0, 255}
    for name, expected in (("i16.tif", wide * 257), ("i16b.tif", wide * 257), ("i.tif", wide * 200)):
        pic = load_picture(tmp_path / name)
        assert pic.pixels.dtype == np.uint16 and np.array_equal(pic.pixels, expected.astype(np.uint16))
    Image.fromarray(np.full((2, 2), 70000, np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(ImageError, match="big.tif: .*outside 0..65535"):
        load_picture(tmp_path / "big.tif")


def test_alpha_modes_palette_and_cmyk(tmp_path, rgb):
    rgba = np.dstack([rgb, np.arange(54, dtype=np.uint8).reshape(6, 9) * 4])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba).convert("LA").save(tmp_path / "la.png")
    pic = load_picture(tmp_path / "rgba.png")
    assert np.array_equal(pic.pixels, rgb) and np.array_equal(pic.alpha, rgba[..., 3])
    la = np.asarray(Image.fromarray(rgba).convert("LA"))
    pic = load_picture(tmp_path / "la.png")
    assert pic.pixels.shape == (6, 9) and np.array_equal(_samples(pic), la)

    pal = Image.fromarray(rgb).quantize(8)
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "pt.png", transparency=0)
    pic = load_picture(tmp_path / "p.png")
    assert pic.pixels.shape == (6, 9, 3) and pic.alpha is None
    assert np.array_equal(pic.pixels, np.asarray(pal.convert("RGB")))
    pic = load_picture(tmp_path / "pt.png")
    assert np.array_equal(pic.alpha, np.where(np.asarray(pal) == 0, 0, 255))

    Image.fromarray(rgb).save(tmp_path / "key.png", transparency=tuple(int(v) for v in rgb[2, 3]))
    pic = load_picture(tmp_path / "key.png")  # an RGB colour key (tRNS) becomes alpha
    keyed = np.all(rgb == rgb[2, 3], axis=2)
    assert np.array_equal(pic.alpha, np.where(keyed, 0, 255))

    cmyk = Image.fromarray(rgb).convert("CMYK")
    for name in ("c.tif", "c.jpg"):
        cmyk.save(tmp_path / name)
        pic = load_picture(tmp_path / name)
        with Image.open(tmp_path / name) as im:
            expected = np.asarray(im.convert("RGB"))
        assert pic.pixels.dtype == np.uint8 and np.array_equal(pic.pixels, expected)
        assert pic.icc_profile is None


def test_16_bit_rgb_colour_key_becomes_alpha(tmp_path):
    samples = np.random.default_rng(5).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    _png16(tmp_path / "k.png", samples)
    data = tmp_path.joinpath("k.png").read_bytes()
    trns = png_chunk(b"tRNS", samples[1, 2].astype(">u2").tobytes())
    tmp_path.joinpath("k.png").write_bytes(data[:33] + trns + data[33:])  # after IHDR
    pic = load_picture(tmp_path / "k.png")
    assert pic.alpha.dtype == np.uint16 and pic.alpha[1, 2] == 0 and int((pic.alpha == 65535).sum()) == 19


def test_mpo_is_reported_as_jpeg(tmp_path, rgb):
    frames = [Image.fromarray(rgb), Image.fromarray(rgb[::-1])]
    frames[0].save(tmp_path / "m.jpg", format="MPO", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "m.jpg") as im:
        assert im.format == "MPO"
    pic = load_picture(tmp_path / "m.jpg")
    assert pic.format == "JPEG" and pic.pixels.shape == (6, 9, 3) and output_format(pic.format) == ".jpg"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_and_reset(tmp_path, orientation):
    pic = _picture("rgba")
    src = Image.fromarray(_samples(pic))
    src.save(tmp_path / "o.png", exif=_exif(orientation))
    with Image.open(tmp_path / "o.png") as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    back = load_picture(tmp_path / "o.png")
    assert np.array_equal(_samples(back), expected)
    exif = Image.Exif()
    exif.load(back.exif)
    assert back.exif.startswith(b"Exif\x00\x00") and exif[0x0112] == 1 and exif[0x010F] == "ReprCam"
    assert exif.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"
    again = load_picture(save_picture(back, tmp_path / "again.png"))  # never rotated twice
    assert np.array_equal(_samples(again), expected)


def test_exif_rotated_jpeg(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "o.jpg", exif=_exif(6), quality=100)
    with Image.open(tmp_path / "o.jpg") as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    pic = load_picture(tmp_path / "o.jpg")
    assert pic.pixels.shape == (9, 6, 3) and np.array_equal(pic.pixels, expected)
    out = load_picture(save_picture(pic, tmp_path / "out.jpg"))
    assert out.pixels.shape == (9, 6, 3)
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.getexif()[0x0112] == 1 and im.getexif()[0x010F] == "ReprCam"


def test_orientation_patch_keeps_every_other_byte():
    raw = _exif(8).tobytes()
    patched = patch_orientation(raw)
    assert len(patched) == len(raw) and sum(a != b for a, b in zip(raw, patched, strict=True)) == 1
    untagged = _exif().tobytes()
    assert patch_orientation(untagged) == untagged  # no orientation entry: nothing to change
    assert patch_orientation(b"Exif\x00\x00XX") is None  # cannot be followed: caller decides


def test_tiff_orientation_and_metadata(tmp_path, rgb):
    with open(tmp_path / "o.tif", "wb") as fp:
        write_tiff(fp, rgb, _srgb_icc(), _exif(6).tobytes())
    with Image.open(tmp_path / "o.tif") as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    pic = load_picture(tmp_path / "o.tif")
    assert np.array_equal(pic.pixels, expected) and pic.icc_profile == _srgb_icc()
    exif = Image.Exif()
    exif.load(pic.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "ReprCam" and 273 not in exif  # no strip offsets
    assert exif.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"


@pytest.mark.parametrize("source", [".png", ".jpg", ".webp", ".tif"])
@pytest.mark.parametrize("target", [".png", ".jpg", ".webp", ".tif"])
def test_icc_and_exif_carried_to_every_format(tmp_path, rgb, source, target):
    icc = _srgb_icc()
    path = tmp_path / f"s{source}"
    save_picture(Picture(rgb, None, icc, _exif(1).tobytes(), "PNG"), path)
    pic = load_picture(path)
    assert pic.icc_profile == icc and pic.exif is not None
    out = load_picture(save_picture(pic, tmp_path / f"t{target}"))
    assert out.icc_profile == icc
    exif = Image.Exif()
    exif.load(out.exif)
    assert exif[0x010F] == "ReprCam" and exif.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"


def test_bmp_and_mismatched_profiles_are_dropped(tmp_path, rgb):
    from PIL import ImageCms
    grey_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    grey_icc = grey_icc[:16] + b"GRAY" + grey_icc[20:]  # header says GRAY
    back = load_picture(save_picture(Picture(rgb, None, _srgb_icc(), _exif(1).tobytes()), tmp_path / "b.bmp"))
    assert back.icc_profile is None and back.exif is None
    back = load_picture(save_picture(Picture(rgb, None, grey_icc), tmp_path / "g.png"))
    assert back.icc_profile is None  # a GRAY profile never describes RGB pixels
    back = load_picture(save_picture(Picture(rgb[..., 0], None, grey_icc), tmp_path / "g2.png"))
    assert back.icc_profile == grey_icc


def test_16_bit_into_8_bit_formats_rounds(tmp_path):
    values = np.array([[0, 128, 129, 257, 32768, 65535]], dtype=np.uint16)
    pic = Picture(np.dstack([values] * 3), values.copy())
    for suffix in (".webp", ".bmp"):
        back = load_picture(save_picture(pic, tmp_path / f"r{suffix}"))
        assert back.pixels.dtype == np.uint8 and back.pixels[..., 0].tolist() == [[0, 0, 1, 1, 128, 255]]
        assert back.alpha.tolist() == [[0, 0, 1, 1, 128, 255]]
    back = load_picture(save_picture(pic, tmp_path / "r.jpg", quality=100))
    assert back.pixels.dtype == np.uint8 and back.alpha is None  # JPEG has no alpha


def test_jpeg_quality_and_greyscale(tmp_path, rgb):
    big = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    small = save_picture(Picture(big), tmp_path / "q10.jpg", quality=10).stat().st_size
    assert small < save_picture(Picture(big), tmp_path / "q95.jpeg").stat().st_size
    back = load_picture(save_picture(Picture(rgb[..., 0]), tmp_path / "g.jpg", quality=100))
    assert back.pixels.shape == (6, 9) and np.abs(back.pixels.astype(int) - rgb[..., 0]).max() <= 2
    with pytest.raises(ValueError, match="quality"):
        save_picture(Picture(rgb), tmp_path / "bad.jpg", quality=0)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tif"])
def test_truncated_files_raise_one_line(tmp_path, rgb, suffix):
    big = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    path = save_picture(Picture(big), tmp_path / f"t{suffix}")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageError) as info:
        load_picture(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"just some text, not an image\n", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + bytes(range(40)), "not a readable image"),
    ("corrupt", "not a readable image"),
    ("gif", "not a readable image"),
    ("float", "unsupported image mode"),
    (None, "no such file"),
])
def test_bad_inputs_raise_one_line_naming_the_file(tmp_path, rgb, content, reason):
    path = tmp_path / "bad.png"
    if content == "corrupt":  # a valid PNG whose compressed pixels were overwritten
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(path)
        data = bytearray(path.read_bytes())
        data[60:200] = bytes(140)
        path.write_bytes(bytes(data))
    elif content == "gif":
        Image.fromarray(rgb).save(path, format="GIF")
    elif content == "float":
        path = tmp_path / "bad.tif"
        Image.fromarray(rgb[..., 0].astype(np.float32)).save(path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        load_picture(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


def test_decompression_bomb_guard(tmp_path, rgb, monkeypatch):
    Image.fromarray(rgb).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match=r"small.png: 9x6 is 54 pixels, over the limit of 53 .*--max-pixels"):
        load_picture(tmp_path / "small.png", max_pixels=53)
    assert load_picture(tmp_path / "small.png", max_pixels=54).pixels.shape == (6, 9, 3)
    # a header claiming 10^10 pixels is refused before anything is decoded, in one line
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"")), (b"IEND", b"")]
    tmp_path.joinpath("bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(*c) for c in chunks))
    with pytest.raises(ImageError) as info:
        load_picture(tmp_path / "bomb.png")
    assert "bomb.png: 100000x100000" in str(info.value) and f"{DEFAULT_MAX_PIXELS:,}" in str(info.value)
    assert "--max-pixels" in str(info.value) and "\n" not in str(info.value)
    # our limit governs, not Pillow's process-wide one, which is left as it was
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    assert load_picture(tmp_path / "small.png").pixels.shape == (6, 9, 3)
    assert load_picture(tmp_path / "small.png", max_pixels=None).pixels.shape == (6, 9, 3)
    assert Image.MAX_IMAGE_PIXELS == 10
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_pixels"):
            load_picture(tmp_path / "small.png", max_pixels=bad)


def test_unwritable_outputs_raise_and_leave_nothing(tmp_path, rgb):
    pic = Picture(rgb)
    with pytest.raises(ImageError, match=r"x\.gif: unknown image extension '\.gif'"):
        save_picture(pic, tmp_path / "x.gif")
    with pytest.raises(ImageError, match="noext: unknown image extension"):
        save_picture(pic, tmp_path / "noext")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match="dir.png: cannot write"):
        save_picture(pic, tmp_path / "dir.png")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ImageError, match="file/out.png: cannot write"):
        save_picture(pic, tmp_path / "file" / "out.png")
    assert _listing(tmp_path) == ["dir.png", "file"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a user that permissions apply to")
def test_missing_permission_raises_and_leaves_nothing(tmp_path, rgb):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ImageError, match="locked/x.png: cannot write"):
            save_picture(Picture(rgb), locked / "x.png")
        assert _listing(locked) == []
    finally:
        locked.chmod(0o700)


def test_permission_error_is_reported_even_as_root(tmp_path, rgb, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".x.png.abc.tmp"))

    monkeypatch.setattr(files.tempfile, "mkstemp", denied)
    with pytest.raises(ImageError) as info:
        save_picture(Picture(rgb), tmp_path / "x.png")
    assert str(info.value) == f"{tmp_path / 'x.png'}: cannot write (Permission denied)"
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_failure_mid_write_keeps_old_file_and_leaves_no_temporary(tmp_path, rgb, monkeypatch, suffix):
    out = save_picture(Picture(rgb), tmp_path / f"x{suffix}")
    before = out.read_bytes()

    def half_then_fail(tmp, *args, **kwargs):
        Path(tmp).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(image_write, "_write", half_then_fail)
    with pytest.raises(ImageError) as info:
        save_picture(Picture(rgb[::-1]), out)
    assert str(info.value) == f"{out}: cannot write (No space left on device)"
    assert _listing(tmp_path) == [out.name] and out.read_bytes() == before


def test_save_rejects_malformed_pictures(tmp_path, rgb):
    for bad in (Picture(rgb.astype(np.float32)), Picture(rgb[..., :2]),
                Picture(rgb, rgb[..., 0].astype(np.uint16)), Picture(rgb, rgb[:3, :, 0])):
        with pytest.raises(ValueError):
            save_picture(bad, tmp_path / "x.png")
    assert _listing(tmp_path) == []


def test_output_format():
    assert [output_format(f) for f in ("PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "GIF")] == [
        ".png", ".jpg", ".jpg", ".webp", ".bmp", ".tif", ".png"]
    assert [output_format("JPEG", e) for e in ("png", ".JPG", "jpeg", "tiff", "TIF", "webp", "bmp")] == [
        ".png", ".jpg", ".jpeg", ".tiff", ".tif", ".webp", ".bmp"]
    with pytest.raises(ValueError, match="unknown output format 'gif'"):
        output_format("PNG", "gif")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow(orientation):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(3, 4, 2)
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    im = Image.fromarray(arr[..., 0])
    expected = np.asarray(im if method is None else im.transpose(method))
    assert np.array_equal(orient(arr, orientation)[..., 0], expected)


# ------------------------------------------------------------------ the private part of Pillow we use


def test_pillow_still_needs_the_16_bit_decode_and_its_tile_layout_holds(tmp_path):
    """reprfn.images.wide rewrites Pillow's private ``im.tile`` to get the low bytes of 16-bit
    colour. This fails loudly when Pillow changes: a 16-bit colour mode (then decode with the public
    API and delete wide.py), or a tile layout the rewrite no longer understands."""
    from reprfn.images.wide import WIDE_RAWMODES, tile_rawmode

    samples = np.random.default_rng(9).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    _png16(tmp_path / "c.png", samples)
    with open(tmp_path / "c.tif", "wb") as fp:
        write_tiff(fp, samples, None, None, compress=False)
    for name in ("c.png", "c.tif"):
        with Image.open(tmp_path / name) as im:
            assert im.mode == "RGB" and not any("16" in m and m.startswith("RGB") for m in Image.MODES), (
                f"Pillow {PIL.__version__} opens 16-bit RGB as {im.mode}: decode it with the public API")
            assert len(im.tile) == 1 and len(im.tile[0]) == 4, im.tile  # (codec, extents, offset, args)
            assert tile_rawmode(im) in WIDE_RAWMODES, im.tile  # args: a rawmode, or a tuple starting with one
            assert np.array_equal(np.asarray(im), (samples >> 8).astype(np.uint8))  # the high byte only
        assert np.array_equal(load_picture(tmp_path / name).pixels, samples)  # the rewrite gives the rest


# ------------------------------------------------------------------ encoding in memory


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tif"])
@pytest.mark.parametrize("kind", ["rgb", "rgba"])
def test_encode_picture_gives_the_bytes_save_picture_writes(tmp_path, suffix, kind):
    pic = _picture(kind, np.uint16 if suffix in (".png", ".tif") else np.uint8)
    pic = Picture(pic.pixels, pic.alpha, _srgb_icc(), _exif(1).tobytes())
    encoded = image_write.encode_picture(pic, f"result{suffix}")
    assert encoded == save_picture(pic, tmp_path / f"x{suffix}").read_bytes()
    assert _listing(tmp_path) == [f"x{suffix}"]


def test_encode_picture_refusals_name_the_result(rgb):
    with pytest.raises(ImageError, match=r"^r\.gif: unknown image extension '\.gif'"):
        image_write.encode_picture(Picture(rgb), "r.gif")
    with pytest.raises(ImageError, match=r"^r\.webp: cannot write 16384x1 as WEBP \(at most 16,383"):
        image_write.encode_picture(Picture(np.zeros((1, 16384), np.uint8)), "r.webp")
    with pytest.raises(ValueError, match="quality"):
        image_write.encode_picture(Picture(rgb), "r.jpg", quality=101)
