"""Images that used to be lost or written wrong: every kind written end to end and read back by an
independent decoder, writers fed non-contiguous arrays, memory bounded (or the request refused in
one line), and non-finite model outputs refused rather than written."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import reprfn
from reprfn import cli
from reprfn.api import upscale_alpha, upscale_file
from reprfn.checkpoint import bundled_weights
from reprfn.cli import commands as cli_commands
from reprfn.errors import ImageError, ReprfnError, ResourceError, UsageError
from reprfn.images import Picture, load_picture, read_image, save_picture, to_uint8, write_png
from reprfn.resize import imresize, imresize_rows
from reprfn.runtime import memory

SAMPLE = bundled_weights(2).parent.parent / "assets" / "astronaut.png"


# ------------------------------------------------------------------ independent encoders/decoders


def _png(path: Path, samples: np.ndarray) -> Path:
    """A PNG (8 or 16 bits, 1..4 channels) encoded by hand, unfiltered: no reprfn code involved."""
    h, w, c = samples.shape
    depth = samples.dtype.itemsize * 8
    raw = b"".join(b"\0" + samples[y].astype(samples.dtype.newbyteorder(">")).tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _decode_png(path: Path) -> tuple[np.ndarray, int, int]:
    """(samples HxWxC, bit depth, colour type) of a non-interlaced PNG, from the PNG spec."""
    data, pos, idat = path.read_bytes(), 8, b""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert interlace == 0
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    c = {0: 1, 4: 2, 2: 3, 6: 4}[ctype]
    bpp = c * depth // 8
    stride = w * bpp
    raw = zlib.decompress(idat)
    assert len(raw) == h * (stride + 1)
    prev = [0] * stride
    rows = []
    for y in range(h):
        kind, line = raw[y * (stride + 1)], list(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, cc = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else cc)) & 0xFF
            else:
                assert kind == 0
        rows.append(line)
        prev = line
    arr = np.array(rows, np.uint8).tobytes()
    samples = np.frombuffer(arr, ">u2" if depth == 16 else np.uint8).reshape(h, w, c)
    return samples.astype(np.uint16 if depth == 16 else np.uint8), depth, ctype


def _tiff16(path: Path, rgb: np.ndarray) -> Path:
    """An uncompressed little-endian 16-bit RGB TIFF, one strip, encoded by hand."""
    h, w, _ = rgb.shape
    data = rgb.astype("<u2").tobytes()
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, None), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    bps_at = 8 + 2 + 12 * len(tags) + 4
    data_at = bps_at + 6
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        value = {258: bps_at, 273: data_at}.get(tag, value)
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<I", value) if kind == 4 or tag == 258
                                                         else struct.pack("<H2x", value))
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + struct.pack("<3H", 16, 16, 16) + data)
    return path


def _decode_tiff(path: Path) -> tuple[np.ndarray, int]:
    """(samples HxWxC, bits) of a baseline TIFF: strips, none or deflate, horizontal predictor."""
    data = path.read_bytes()
    order = {b"II": "<", b"MM": ">"}[data[:2]]
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (n,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    tags = {}
    for i in range(n):
        tag, kind, count = struct.unpack(order + "HHI", data[ifd + 2 + 12 * i:ifd + 10 + 12 * i])
        size = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1}.get(kind, 1)
        field = data[ifd + 10 + 12 * i:ifd + 14 + 12 * i]
        raw = field if size * count <= 4 else data[struct.unpack(order + "I", field)[0]:][:size * count]
        if kind in (3, 4):
            tags[tag] = struct.unpack(order + ("H" if kind == 3 else "I") * count, raw[:size * count])
    w, h, c = tags[256][0], tags[257][0], tags[277][0]
    bits = tags[258][0]
    strips = [data[o:o + s] for o, s in zip(tags[273], tags[279], strict=True)]
    if tags[259][0] == 8:
        strips = [zlib.decompress(s) for s in strips]
    dtype = np.dtype(np.uint16 if bits == 16 else np.uint8).newbyteorder(order)
    arr = np.frombuffer(b"".join(strips), dtype).reshape(h, w, c).astype(dtype.newbyteorder("="))
    if tags.get(317, (1,))[0] == 2:
        arr = np.cumsum(arr, axis=1, dtype=arr.dtype)  # wraps modulo 2**bits, as the predictor
    return arr, bits


# ------------------------------------------------------------------------------ the model's truth


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return reprfn.load_model(bundled_weights(2))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.array(Image.open(SAMPLE).convert("RGB"))[60:84, 120:140]  # 24x20, a real texture


def _wide(photo: np.ndarray) -> np.ndarray:
    """16-bit colour whose low byte matters (not just x257)."""
    noise = np.random.default_rng(1).integers(0, 257, photo.shape)
    return (photo.astype(np.int64) * 257 + noise - 128).clip(0, 65535).astype(np.uint16)


def _alpha(shape: tuple[int, int], dtype) -> np.ndarray:
    top = np.iinfo(dtype).max
    return (np.linspace(0.1, 1.0, shape[0] * shape[1]).reshape(shape) * top).astype(dtype)


def _reference(model: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """The model called directly on the tensor, rounded to the input's bit depth (as float)."""
    top = np.iinfo(pixels.dtype).max
    x = torch.from_numpy(pixels.astype(np.float32) / top)
    x = x[None, None].expand(-1, 3, -1, -1) if pixels.ndim == 2 else x.permute(2, 0, 1)[None]
    with torch.no_grad():
        y = model(x).clamp(0, 1)[0]
    y = y.mean(0) if pixels.ndim == 2 else y.permute(1, 2, 0)
    return np.rint(y.numpy().astype(np.float64) * top)


def _reference_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    top = np.iinfo(alpha.dtype).max
    return np.clip(np.rint(imresize(alpha / top, scale) * top), 0, top)


def _close(out: np.ndarray, ref: np.ndarray, levels: float = 1) -> bool:
    return out.shape == ref.shape and float(np.abs(out.astype(np.float64) - ref).max()) <= levels


def _inputs(folder: Path, photo: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Write one file of every kind; returns name -> (colour, alpha) as a decoder sees them."""
    folder.mkdir(exist_ok=True)
    wide, grey = _wide(photo), _wide(photo)[..., 1]
    a16, a8 = _alpha(photo.shape[:2], np.uint16), _alpha(photo.shape[:2], np.uint8)
    _png(folder / "rgb16.png", wide)
    _png(folder / "rgba16.png", np.dstack([wide, a16]))
    _png(folder / "grey16.png", grey[..., None])
    Image.fromarray(np.dstack([photo, a8])).save(folder / "rgba8.png")
    pal = Image.fromarray(photo).quantize(32)
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    expanded = np.array(Image.open(folder / "palette.png").convert("RGBA"))
    Image.fromarray(photo).save(folder / "photo.jpg", quality=95)
    jpeg = np.array(Image.open(folder / "photo.jpg"))
    _tiff16(folder / "rgb16.tif", wide)
    return {
        "rgb16.png": (wide, None), "rgba16.png": (wide, a16), "grey16.png": (grey, None),
        "rgba8.png": (photo, a8), "palette.png": (expanded[..., :3], expanded[..., 3]),
        "photo.jpg": (jpeg, None), "rgb16.tif": (wide, None),
    }


def _read_back(path: Path) -> tuple[np.ndarray, int]:
    """(samples HxWxC, bits) by a decoder that is not reprfn's: by hand for PNG and TIFF, else Pillow."""
    if path.suffix == ".png":
        samples, depth, _ = _decode_png(path)
        if depth == 8:  # Pillow agrees on 8-bit files
            im = np.array(Image.open(path))
            assert np.array_equal(im.reshape(samples.shape), samples)
        return samples, depth
    if path.suffix == ".tif":
        return _decode_tiff(path)
    im = np.array(Image.open(path))
    return (im[..., None] if im.ndim == 2 else im), 8


def _check_output(path: Path, model: nn.Module, colour: np.ndarray, alpha: np.ndarray | None) -> None:
    samples, bits = _read_back(path)
    assert bits == colour.dtype.itemsize * 8, f"{path.name}: {bits} bits"
    channels = (1 if colour.ndim == 2 else 3) + (alpha is not None)
    assert samples.shape == (colour.shape[0] * 2, colour.shape[1] * 2, channels), path.name
    ref = _reference(model, colour)
    got = samples[..., 0] if colour.ndim == 2 else samples[..., :3]
    if path.suffix == ".jpg":  # lossy: close, not equal
        assert np.abs(got.astype(float) - ref).mean() < 3.0, path.name
    else:
        assert _close(got, ref), f"{path.name}: max diff {np.abs(got.astype(float) - ref).max()}"
    if alpha is not None:
        assert np.array_equal(samples[..., -1], _reference_alpha(alpha, 2)), path.name


# --------------------------------------------------------------------- every kind, end to end


def test_cli_writes_every_kind_at_its_bit_depth(tmp_path, photo, model):
    kinds = _inputs(tmp_path / "in", photo)
    out = tmp_path / "out"
    assert cli.main(["upscale", "-i", str(tmp_path / "in"), "-o", str(out), "-s", "2", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(kinds)
    for name, (colour, alpha) in kinds.items():
        _check_output(out / name, model, colour, None if name.endswith(".jpg") else alpha)
    assert Image.open(out / "rgba8.png").mode == "RGBA" and Image.open(out / "palette.png").mode == "RGBA"
    assert Image.open(out / "photo.jpg").format == "JPEG"


def test_api_writes_every_kind_at_its_bit_depth(tmp_path, photo, model):
    kinds = _inputs(tmp_path / "in", photo)
    for name, (colour, alpha) in kinds.items():
        dst = tmp_path / "out" / (Path(name).stem + ("_x2.png" if name.endswith(".jpg") else "_x2" + Path(name).suffix))
        assert upscale_file(model, tmp_path / "in" / name, dst) == dst
        _check_output(dst, model, colour, alpha)


def test_16_bit_into_every_format(tmp_path, photo, model):
    """16-bit RGBA in, each output format: PNG/TIFF keep 16 bits, the others hold 8 (rounded)."""
    src = _png(tmp_path / "rgba16.png", np.dstack([_wide(photo), _alpha(photo.shape[:2], np.uint16)]))
    ref = _reference(model, _wide(photo))
    for suffix, bits in ((".png", 16), (".tif", 16), (".webp", 8), (".bmp", 8), (".jpg", 8)):
        dst = upscale_file(model, src, tmp_path / f"o{suffix}")
        samples, got_bits = _read_back(dst)
        assert got_bits == bits and samples.shape[:2] == (48, 40), suffix
        diff = np.abs(samples[..., :3].astype(float) - (ref if bits == 16 else np.rint(ref / 257)))
        assert (diff.mean() < 3.0) if suffix == ".jpg" else (diff.max() <= 1), suffix
        assert samples.shape[2] == (3 if suffix == ".jpg" else 4), suffix


# ------------------------------------------------------------- our PNG writer, an independent decoder


def _filter_exercise(dtype, channels: int) -> np.ndarray:
    """Rows that make each PNG filter the cheapest somewhere: noise, ramps, repeats, planes."""
    h, w = 24, 13
    y, x = np.mgrid[0:h, 0:w]
    top = np.iinfo(dtype).max
    img = np.zeros((h, w, channels), np.int64)
    img[0:6] = np.random.default_rng(channels).integers(0, top + 1, (6, w, channels))  # None
    img[6:12] = (x * (top // 16))[6:12, :, None]                                          # Sub
    img[12:15] = img[11]                                                                  # Up
    img[15:24] = ((x * 3 + y * 5) * (top // 200))[15:24, :, None] + np.arange(channels)   # Average, Paeth
    return img.astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_writer_reads_back_exactly_with_a_decoder_from_the_spec(tmp_path, dtype, channels):
    """reprfn.images.png16 against ``_decode_png`` (the PNG specification's unfilter, no reprfn or
    Pillow code), in blocks of a few rows so the row above a block boundary is carried too."""
    from reprfn.images.png16 import write_png16
    from reprfn.images.samples import Samples

    samples = _filter_exercise(dtype, channels)
    alpha = samples[..., -1] if channels in (2, 4) else None
    colour = samples[..., 0] if channels <= 2 else samples[..., :3]
    exif = Image.Exif()
    exif[0x010F] = "ReprCam"
    with open(tmp_path / "f.png", "wb") as fp:
        write_png16(fp, Samples(colour, alpha), b"not really a profile", exif.tobytes(), block_bytes=200)
    back, depth, ctype = _decode_png(tmp_path / "f.png")
    assert depth == 8 * np.dtype(dtype).itemsize and ctype == {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    assert np.array_equal(back, samples)
    data = (tmp_path / "f.png").read_bytes()
    assert data.count(b"iCCP") == 1 and data.count(exif.tobytes()[6:]) == 1  # eXIf holds it without "Exif\0\0"
    idat, pos = b"", 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        idat += data[pos + 8:pos + 8 + n] if data[pos + 4:pos + 8] == b"IDAT" else b""
        pos += 12 + n
    stride = 1 + samples.shape[1] * channels * np.dtype(dtype).itemsize
    kinds = set(zlib.decompress(idat)[::stride])
    assert len(kinds) >= 3, kinds  # several filters chosen, each decoded right above
    if channels >= 3:
        assert kinds == {0, 1, 2, 3, 4}, kinds


# ------------------------------------------------------------------ writers and non-contiguous input


def _layouts(dtype) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Views as the pipeline makes them: channel slices, flips, transposes of CHW, alpha from a stack."""
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, top + 1, (19, 23, 4), dtype=dtype)
    chw = np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1))
    return [
        ("channel slice + alpha view", rgba[..., :3], rgba[..., 3]),
        ("flipped", rgba[:, ::-1, :3], None),
        ("transposed CHW", np.transpose(chw, (1, 2, 0)), None),
        ("transposed CHW + alpha", np.transpose(chw, (1, 2, 0)), rgba[::-1, :, 3]),
        ("grey, strided", rgba[:, :, 1], None),
        ("grey + alpha, strided", rgba[:, ::-1, 0], rgba[:, :, 2]),
    ]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp", ".webp"])
def test_writers_take_non_contiguous_arrays(tmp_path, dtype, suffix):
    for i, (what, pixels, alpha) in enumerate(_layouts(dtype)):
        assert not (pixels.flags.c_contiguous and (alpha is None or alpha.flags.c_contiguous))
        path = save_picture(Picture(pixels, alpha), tmp_path / f"{i}{suffix}")
        samples, bits = _read_back(path)
        colour = pixels[..., None] if pixels.ndim == 2 else pixels
        expected = colour if alpha is None else np.dstack([colour, alpha])
        if bits == 8 and dtype == np.uint16:
            expected = ((expected.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)
        if samples.shape[2] != expected.shape[2]:  # formats without grey(+alpha) write RGB(A)
            expected = np.concatenate([np.repeat(expected[..., :1], 3, axis=2), expected[..., 1:]], axis=2)
        assert np.array_equal(samples, expected), f"{suffix} {dtype.__name__}: {what}"


def test_jpeg_and_eval_writer_take_non_contiguous_arrays(tmp_path):
    rgb = np.ascontiguousarray(np.broadcast_to(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (30, 40, 3)))
    view = np.transpose(np.ascontiguousarray(rgb.transpose(2, 0, 1)), (1, 2, 0))
    save_picture(Picture(view), tmp_path / "a.jpg")
    assert np.abs(np.array(Image.open(tmp_path / "a.jpg")).astype(int) - rgb).max() <= 4
    write_png(view[:, ::-1], tmp_path / "b.png")
    assert np.array_equal(np.array(Image.open(tmp_path / "b.png")), rgb[:, ::-1])


def test_formats_refuse_what_they_cannot_hold_before_any_work(tmp_path):
    wide = Image.fromarray(np.zeros((4, 9000, 3), np.uint8))
    wide.save(tmp_path / "wide.png")
    calls = []

    class Counting(Nearest):
        def forward(self, x):
            calls.append(x.shape)
            return super().forward(x)

    with pytest.raises(ImageError, match=r"o\.webp: cannot write 18000x8 as WEBP \(at most 16,383"):
        upscale_file(Counting(2), tmp_path / "wide.png", tmp_path / "o.webp")
    Image.fromarray(np.zeros((4, 33000), np.uint8)).save(tmp_path / "wider.png")
    with pytest.raises(ImageError, match=r"o\.jpg: cannot write 66000x8 as JPEG"):
        upscale_file(Counting(2), tmp_path / "wider.png", tmp_path / "o.jpg")
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["wide.png", "wider.png"]


# ------------------------------------------------------------------------------ bounded memory


class Nearest(nn.Module):
    """Nearest-neighbour upscaling: costs no time, so a test can measure the pipeline's memory."""

    in_channels = 3

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.scale, -1).repeat_interleave(self.scale, -2)


PEAK_CHILD = r"""
import sys
from torch import nn
from reprfn.api import upscale_file

class Nearest(nn.Module):
    in_channels, scale = 3, 2
    def forward(self, x):
        return x.repeat_interleave(2, -1).repeat_interleave(2, -2)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
upscale_file(Nearest(), sys.argv[3], sys.argv[2], tile=250)  # a small one first: imports, caches
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current RSS
except OSError:  # older kernels: the peak then also covers start-up, which is below the RSS now
    pass
base = status("VmRSS:")
upscale_file(Nearest(), sys.argv[1], sys.argv[2], tile=250, overwrite=True)
print(base, status("VmHWM:"))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS read from /proc")
def test_peak_memory_is_bounded_by_the_output(tmp_path):
    """1500x1500 RGBA at x2 in tiles: the output (3000x3000x4 = 36 MB) is held once, as uint8.

    Before, float32 copies of the colour (four at once while quantizing) and float64 copies of the
    alpha took the peak past 10x the output (7.1 GB for a 4000x3000 RGB photo at x4)."""
    y, x = np.mgrid[0:1500, 0:1500]
    rgba = np.stack([x % 256, y % 256, (x + y) % 256, (x * y) % 251], axis=2).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "big.png")
    Image.fromarray(rgba[:40, :40]).save(tmp_path / "small.png")
    out = tmp_path / "big_x2.png"
    run = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(tmp_path / "big.png"), str(out),
                          str(tmp_path / "small.png")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    base, peak = map(int, run.stdout.split())
    output_bytes = 3000 * 3000 * 4
    # measured: ~2.5x (the output, the input, allocator slack); one float32 copy more would pass 4x
    assert peak - base < 4 * output_bytes, f"peak grew by {(peak - base) / 2**20:.0f} MB"
    back = np.array(Image.open(out))
    assert back.shape == (3000, 3000, 4) and np.array_equal(back[::2, ::2, :3], rgba[..., :3])


@pytest.mark.parametrize("scale", [2, 3, (2, 3), (3, 2), 0.5])
@pytest.mark.parametrize("dtype", [np.float64, np.uint8])
def test_bands_of_rows_are_the_whole_resize(scale, dtype):
    """Alpha is resized a band of rows at a time: the same numbers as the whole image."""
    img = np.random.default_rng(3).random((37, 29)) * (255 if dtype == np.uint8 else 1)
    img = img.astype(dtype)
    whole = imresize(img, scale)
    bands = [imresize_rows(img, scale, y, y + 7) for y in range(0, whole.shape[0], 7)]
    assert np.array_equal(np.concatenate(bands), whole)


def test_alpha_in_bands_equals_the_reference():
    alpha = (np.random.default_rng(4).random((50, 3000)) * 65535).astype(np.uint16)  # 5 bands at x2
    assert np.array_equal(upscale_alpha(alpha, 2), _reference_alpha(alpha, 2))


def test_over_limit_request_is_refused_in_one_line_and_nothing_written(tmp_path, photo, monkeypatch, capsys):
    big = np.array(Image.fromarray(photo).resize((1000, 800)))
    Image.fromarray(big).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    monkeypatch.setattr(memory, "available_memory", lambda device: 64 * 2**20)
    code = cli.main(["upscale", "-i", str(tmp_path / "photo.png"), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"reprfn: error: {tmp_path / 'photo.png'}: the x4 output would be 4000x3200 (13 megapixels)")
    assert "--scale" in err and "alloc" not in err.lower() and "MemoryError" not in err
    assert not out.exists() or list(out.iterdir()) == []


def test_a_whole_image_forward_too_large_suggests_a_tile_that_fits(tmp_path, photo, monkeypatch):
    Image.fromarray(np.array(Image.fromarray(photo).resize((600, 400)))).save(tmp_path / "p.png")
    monkeypatch.setattr(memory, "available_memory", lambda device: 300 * 2**20)
    with pytest.raises(ResourceError) as info:
        upscale_file(Nearest(4), tmp_path / "p.png", tmp_path / "o.png", tile=0)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'p.png'}: a whole-image forward needs about 343 MB")
    assert not (tmp_path / "o.png").exists()
    tile = int(message.split("--tile ")[1].split()[0])
    assert upscale_file(Nearest(4), tmp_path / "p.png", tmp_path / "o.png", tile=tile).exists()
    assert np.array(Image.open(tmp_path / "o.png")).shape == (1600, 2400, 3)


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 4000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
def test_allocation_failures_are_one_line_not_allocator_text(tmp_path, photo, monkeypatch, capsys, failure):
    class Failing(Nearest):
        def forward(self, x):
            raise failure

    Image.fromarray(photo).save(tmp_path / "p.png")
    monkeypatch.setattr(cli_commands, "_upscale_model", lambda args, device: Failing(4))
    code = cli.main(["upscale", "-i", str(tmp_path / "p.png"), "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"reprfn: error: {tmp_path / 'p.png'}: out of memory") and "--tile" in err
    assert "DefaultCPUAllocator" not in err and "internal error" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


# ---------------------------------------------------------------------------- non-finite outputs


class Poisoned(nn.Module):
    """A model with one output value replaced (NaN, or inf as an fp16 overflow gives)."""

    def __init__(self, model: nn.Module, value: float, where: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.value, self.where = model, value, where
        self.scale, self.in_channels = model.scale, 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x).clone()
        if y.shape[-2] > self.where[0] and y.shape[-1] > self.where[1]:
            y[..., 1, self.where[0], self.where[1]] = self.value
        return y


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_output_is_refused_naming_the_file(tmp_path, photo, value):
    _inputs(tmp_path / "in", photo)
    for kind in ("rgb16.png", "grey16.png", "rgba8.png", "photo.jpg", "rgb16.tif"):
        src, dst = tmp_path / "in" / kind, tmp_path / "out" / kind
        with pytest.raises(ReprfnError, match="non-finite") as info:  # one value, in one tile of four
            upscale_file(Poisoned(Nearest(2), value, (40, 30)), src, dst, tile=12)
        assert str(info.value).startswith(f"{src}: the model produced non-finite values")
        assert not dst.parent.exists() or list(dst.parent.iterdir()) == []


def test_non_finite_output_through_the_cli_and_every_api(tmp_path, photo, model, monkeypatch, capsys):
    Image.fromarray(photo).save(tmp_path / "a.png")
    Image.fromarray(photo[::-1]).save(tmp_path / "b.png")
    poisoned = Poisoned(model, float("nan"), (3, 3))
    monkeypatch.setattr(cli_commands, "_upscale_model", lambda args, device: poisoned)
    out = tmp_path / "out"
    assert cli.main(["upscale", "-i", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = [f"reprfn: error: {tmp_path / n}" for n in ("a.png", "b.png")]
    assert [line.split(": the model")[0] for line in lines] == expected
    assert not out.exists() or list(out.iterdir()) == []
    for image in (photo, photo[..., 0], Image.fromarray(photo), np.dstack([photo, photo[..., 0]])):
        with pytest.raises(ReprfnError, match="non-finite"):
            reprfn.upscale(image, model=poisoned, scale=2)
    with pytest.raises(ReprfnError, match="non-finite"):
        to_uint8(torch.tensor([[[0.5, float("nan")]]]))


def test_weights_poisoned_after_loading_are_refused(tmp_path, photo):
    net = reprfn.load_model(bundled_weights(2))
    with torch.no_grad():
        next(p for p in net.parameters() if p.dim() == 1).fill_(float("inf"))
    Image.fromarray(photo).save(tmp_path / "a.png")
    with pytest.raises(ReprfnError, match="non-finite"):
        upscale_file(net, tmp_path / "a.png", tmp_path / "a_x2.png")
    assert not (tmp_path / "a_x2.png").exists()


# ---------------------------------------------------------------- tensors and arrays the model cannot take


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_output_of_a_tensor_is_refused(model, value):
    """The tensor path clamped its output: +inf came back white, NaN as NaN, without a word; eval,
    which runs the same way, scored such images."""
    x = torch.rand(3, 24, 20)
    for tile in (0, 12):
        with pytest.raises(ReprfnError, match="non-finite"):
            reprfn.upscale(x, model=Poisoned(model, value, (3, 3)), scale=2, tile=tile, device="cpu", precision="fp32")


@pytest.mark.parametrize("tensor, message", [
    (torch.full((3, 8, 8), float("nan")), "the input holds NaN or infinite values"),
    (torch.full((1, 3, 8, 8), float("inf")), "the input holds NaN or infinite values"),
    (torch.rand(1, 8, 8), "a 1-channel tensor for a model of 3 input channels"),
    (torch.rand(2, 4, 8, 8), "a 4-channel tensor for a model of 3 input channels"),
    (torch.rand(3, 0, 8), "an empty image (8x0 pixels)"),
])
def test_tensors_the_model_cannot_take_are_usage_errors(model, tensor, message):
    """These were a NaN image returned as a result, or PyTorch's conv and pooling errors."""
    with pytest.raises(UsageError) as info:
        reprfn.upscale(tensor, model=model, scale=2, device="cpu", precision="fp32")
    assert str(info.value) == message


@pytest.mark.parametrize("image", [np.zeros((0, 8, 3), np.uint8), np.zeros((8, 0), np.uint16),
                                   np.zeros((0, 0, 4), np.uint8), Image.new("RGB", (0, 0))])
def test_empty_images_are_usage_errors(model, image):
    """np.pad's "can't extend empty axis" escaped as a bare ValueError."""
    with pytest.raises(UsageError, match=r"an empty image \(\d+x\d+ pixels\)"):
        reprfn.upscale(image, model=model, scale=2, device="cpu", precision="fp32")


@pytest.mark.parametrize("tile, pad", [(1, 0), (6, 0), (6, 6), (12, 0), (7, 0)])
def test_tiny_tiles_with_little_context_run(tmp_path, photo, model, capsys, tile, pad):
    """A first tile narrower than ESA's minimum could not widen backwards and failed inside the
    pooling ("internal error: ... Output size is too small")."""
    src = tmp_path / "a.png"
    Image.fromarray(photo).save(src)  # 24x20: a first tile of 6 or 12 pixels and a window of 6..18
    x = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    out = reprfn.upscale(x, model=model, scale=2, tile=tile, pad=pad, device="cpu", precision="fp32")
    assert out.shape == (3, 48, 40)
    assert cli.main(["upscale", "-i", str(src), "-o", str(tmp_path / "b.png"), "-s", "2", "--quiet",
                     "--device", "cpu", "--tile", str(tile), "--tile-pad", str(pad)]) == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "b.png").size == (40, 48)


def _tiff16_planar(path: Path, rgb: np.ndarray) -> Path:
    """As ``_tiff16``, with the three colour planes stored apart (PlanarConfiguration 2), a strip each."""
    h, w, _ = rgb.shape
    planes = [rgb[..., c].astype("<u2").tobytes() for c in range(3)]
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 3, None), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 3, None), (284, 3, 1, 2)]
    bps_at = 8 + 2 + 12 * len(tags) + 4
    offsets_at, counts_at = bps_at + 6, bps_at + 6 + 12
    data_at = counts_at + 12
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        value = {258: bps_at, 273: offsets_at, 279: counts_at}.get(tag, value)
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<I", value) if kind == 4 or tag == 258
                                                         else struct.pack("<H2x", value))
    starts = [data_at + sum(len(p) for p in planes[:c]) for c in range(3)]
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + struct.pack("<3H", 16, 16, 16)
                     + struct.pack("<3I", *starts) + struct.pack("<3I", *map(len, planes)) + b"".join(planes))
    return path


def test_16_bit_planar_tiff_is_refused_not_misread(tmp_path, photo, model, capsys):
    """Pillow unpacks 16-bit samples in separate planes as 8-bit ones: a picture of noise was
    upscaled (and measured by eval) with exit 0."""
    src = _tiff16_planar(tmp_path / "planar.tif", _wide(photo))
    with Image.open(src) as im:  # the layout the guard is for: opened without complaint, decoded wrongly
        assert im.mode == "RGB" and np.abs(np.asarray(im).astype(int) - (_wide(photo) >> 8)).max() > 64
    message = f"{src}: a 16-bit TIFF with separate colour planes, which Pillow decodes wrongly"
    with pytest.raises(ImageError, match="separate colour planes") as info:
        upscale_file(model, src, tmp_path / "out.tif")
    assert str(info.value).startswith(message) and not (tmp_path / "out.tif").exists()
    with pytest.raises(ImageError, match="separate colour planes"):
        read_image(src)  # eval and training
    assert cli.main(["upscale", "-i", str(src), "-o", str(tmp_path / "out.png"), "--quiet", "-s", "2"]) == 2
    assert capsys.readouterr().err.startswith(f"reprfn: error: {message}")
    _tiff16(tmp_path / "chunky.tif", _wide(photo))  # the same samples interleaved still load, 16 bits exactly
    assert np.array_equal(load_picture(tmp_path / "chunky.tif").pixels, _wide(photo))


@pytest.mark.parametrize("suffix, kind", [(".png", "PNG"), (".webp", "WebP")])
def test_an_animation_is_refused_and_the_batch_goes_on(tmp_path, capsys, suffix, kind):
    """Its first frame alone was upscaled and written as a still image, with exit 0."""
    frames = [Image.new("RGB", (20, 16), (60 * i, 90, 30)) for i in range(3)]
    folder = tmp_path / "in"
    folder.mkdir()
    frames[0].save(folder / f"anim{suffix}", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(folder / "still.png")
    with pytest.raises(ImageError, match=f"an animated {kind} of 3 frames"):
        load_picture(folder / f"anim{suffix}")
    out = tmp_path / "out"
    assert cli.main(["upscale", "-i", str(folder), "-o", str(out), "--quiet", "--device", "cpu", "-s", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"anim{suffix}: an animated {kind}" in err[0]
    assert [p.name for p in out.iterdir()] == ["still.png"]
    single = tmp_path / "one.png"
    frames[0].save(single, save_all=True, append_images=frames[:1], duration=100)  # one frame: a still image
    assert load_picture(single).pixels.shape == (16, 20, 3)


def test_a_tiff_pillow_cannot_decode_is_called_a_tiff(tmp_path):
    """A 16-bit grey + alpha or a float TIFF read "not a PNG, JPEG, WebP, BMP or TIFF file"."""
    import tifffile  # the dev extra's: Pillow writes neither layout

    grey_alpha, floats = tmp_path / "la16.tif", tmp_path / "f32.tif"
    tifffile.imwrite(grey_alpha, np.zeros((8, 8, 2), np.uint16), photometric="minisblack",
                     extrasamples=["unassalpha"], planarconfig="contig")
    tifffile.imwrite(floats, np.zeros((8, 8, 3), np.float32), photometric="rgb")
    for path in (grey_alpha, floats):
        with pytest.raises(ImageError, match=r"not a readable image \(a TIFF whose samples Pillow cannot decode"):
            load_picture(path)
        with pytest.raises(ImageError, match="a TIFF whose samples"):
            load_picture(io.BytesIO(path.read_bytes()), name=path.name)
    (tmp_path / "text.tif").write_text("not a picture")
    with pytest.raises(ImageError, match=r"not a PNG, JPEG, WebP, BMP or TIFF file"):
        load_picture(tmp_path / "text.tif")
