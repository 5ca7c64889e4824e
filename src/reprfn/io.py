"""Image files in and out: decoding to uint8 arrays, and the array <-> tensor conventions.

Arrays are ``uint8`` HxWx3 (RGB) or HxW (greyscale) on 0..255; tensors are float
``(1, C, H, W)`` in ``[0, 1]``. Every decoding failure is an ``ImageError`` whose one-line
message names the file, so callers can report it and move on to the next file.

``read_image`` is the measuring path (eval, training): always 8 bits, alpha dropped.
``load_picture`` / ``save_picture`` are the full-fidelity path (``upscale``): a ``Picture`` keeps
the file's bit depth, alpha, ICC profile and EXIF, and any of PNG/JPEG/WebP/BMP/TIFF is written
(PNG, TIFF and BMP with alpha by our own writers, a block of rows at a time, from arrays of any
strides).
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, ReprfnError, UsageError
from .files import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA", "La")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _to_8bit(im: Image.Image, path: Path) -> np.ndarray:
    """Pillow image of any common mode -> uint8 RGB or L; alpha is dropped (colour kept as is)."""
    if im.mode in SIXTEEN_BIT_MODES:  # Pillow's own convert('L') clips at 255 instead of scaling
        grey = np.asarray(im, dtype=np.float64) / 257.0
        return np.floor(np.clip(grey, 0, 255) + 0.5).astype(np.uint8)
    if im.mode in GREY_MODES:
        return np.asarray(im.convert("L"))
    if im.mode == "F":
        raise ImageError(f"{path}: floating-point images are not supported")
    if im.mode in ("P", "PA"):  # palette: expand through RGBA so transparency entries are honoured
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB, or HxW for greyscale files, EXIF-oriented.

    Palette, CMYK and alpha images become RGB (alpha dropped), LA becomes L, and 16-bit greyscale
    is scaled to 8 bits (16-bit RGB files are reduced to 8 bits by Pillow when decoded).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and not later
            im = ImageOps.exif_transpose(im)
            return np.ascontiguousarray(_to_8bit(im, path))
    except ImageError:
        raise
    except Exception as exc:  # not an image, truncated, corrupt, decompression bomb, bad EXIF
        raise ImageError(f"{path}: not a readable image ({_reason(exc)})") from None


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (not in subfolders), by suffix, sorted by name.

    Hidden files and files with other suffixes are ignored.
    """
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxW or HxWxC array -> float32 (1, C, H, W) in [0, 1]."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32)).div_(255.0).unsqueeze(0)


def check_finite(values: torch.Tensor | np.ndarray) -> None:
    """Refuse a model output holding NaN or infinity before it is quantized.

    Clamping would turn +inf into white and NaN into an arbitrary level: an image that looks
    plausible and is wrong. Bad weights and fp16 overflow are the usual causes. One float64 sum
    tells: NaN and infinities propagate through it, and float32 values cannot overflow it.
    """
    if isinstance(values, np.ndarray):
        total = float(values.sum(dtype=np.float64))
    else:
        total = float(values.detach().sum(dtype=torch.float64))
    if not np.isfinite(total):
        raise ReprfnError("the model produced non-finite values (NaN or infinity); nothing written "
                          "(check the weights, or try --precision fp32)")


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Float (1, C, H, W) or (C, H, W) tensor in [0, 1] -> uint8 HxWxC (HxW when C is 1).

    Clamped, scaled by 255 and rounded: the 8-bit output every SR benchmark measures. Non-finite
    values are refused (``check_finite``).
    """
    t = tensor.detach()
    check_finite(t)
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise UsageError(f"expected one image, got a batch of {t.shape[0]}")
        t = t[0]
    arr = t.float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy().transpose(1, 2, 0)
    return np.ascontiguousarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def write_png(img: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 HxW or HxWx3 array (any strides) as a PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(tmp, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------
# Full-fidelity pictures for `reprfn upscale`: colour + separate alpha, 8 or 16 bits as in the
# file, ICC profile and EXIF kept, orientation applied, any of PNG/JPEG/WebP/BMP/TIFF in and out.
# ---------------------------------------------------------------------------------------------

DEFAULT_MAX_PIXELS = 200_000_000
"""Inputs with more pixels than this are refused (decompression-bomb guard); ``None`` lifts it."""

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")  # Pillow may report a JPEG as "MPO"
_SUFFIX_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
    ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
}
_FORMAT_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
_EXIF_PREFIX = b"Exif\x00\x00"
_ORIENTATION = 0x0112
_EXIF_IFD, _GPS_IFD, _INTEROP_IFD = 0x8769, 0x8825, 0xA005
# IFD0 tags of a TIFF source that are photo metadata (EXIF), not the file's own pixel layout.
_TIFF_METADATA_TAGS = (270, 271, 272, 274, 282, 283, 296, 305, 306, 315, 316, 33432, _EXIF_IFD, _GPS_IFD)
# TIFF tags that describe the pixel layout: never copied from EXIF into a TIFF we write.
_TIFF_LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320,
    322, 323, 324, 325, 338, 339, 340, 341, 347, 513, 514, 529, 530, 531, 532, 34675,
})
_PILLOW_LIMIT_LOCK = threading.Lock()
_BLOCK_BYTES = 1 << 18  # writers and converters work a block of rows of about this size at a time
_STREAMED_FORMATS = ("PNG", "TIFF", "BMP")  # our own block-by-block writers (BMP: with alpha only)
_MAX_SIDE = {"JPEG": 65_535, "WEBP": 16_383}  # what the format (or its encoder) can hold
_MAX_FILE = {"TIFF": 2**32 - 1, "BMP": 2**32 - 1}  # 32-bit offsets and size fields
_PILLOW_BYTES = {1: 1, 2: 4, 3: 4, 4: 4}  # bytes per pixel of a Pillow image (L, LA, RGB, RGBA)


@dataclass
class Picture:
    """A decoded image with everything `upscale` must carry from the input file to the output.

    ``pixels`` is HxWx3 RGB or HxW greyscale, ``uint8`` or ``uint16`` as in the file; ``alpha``
    is HxW of the same dtype, or None. ``exif`` starts with ``b"Exif\\0\\0"`` and its orientation
    tag is 1: the orientation has been applied to ``pixels`` and ``alpha`` already. ``format`` is
    the Pillow format of the source ("PNG", "JPEG", "WEBP", "BMP", "TIFF").
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str = "PNG"


# ----------------------------------------------------------------------------------- loading


def load_picture(source: str | os.PathLike | BinaryIO, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 name: str | None = None) -> Picture:
    """Decode ``source`` without losing what an output file should keep (see ``Picture``).

    ``source`` is a path, or a seekable binary file read from its start (e.g. the ``BytesIO`` of
    an upload, decoded without a round trip through the disk); messages then name ``name``.
    8 vs 16 bits follows the file's sample format: 16-bit greyscale, RGB and RGBA PNG/TIFF give
    ``uint16``. Palette and CMYK become RGB (palette transparency becomes alpha; a CMYK ICC profile
    is used to convert to sRGB when present). Only the first frame of an animation is read.
    Images over ``max_pixels`` are refused before any pixel is decoded; ``None`` lifts the guard.
    Every failure is an ``ImageError`` whose one-line message names the file.
    """
    _check_max_pixels(max_pixels)
    if isinstance(source, (str, os.PathLike)):
        src = label = Path(source)
        if not src.is_file():
            raise ImageError(f"{src}: no such file")
        size = src.stat().st_size
    else:
        src, label = source, name or "<stream>"
        size = source.seek(0, os.SEEK_END)
    if size == 0:
        raise ImageError(f"{label}: empty file, not an image")
    try:
        with _own_pixel_limit():
            return _load(src, label, max_pixels)
    except ImageError:
        raise
    except UnidentifiedImageError:
        reason = "not a PNG, JPEG, WebP, BMP or TIFF file"
        raise ImageError(f"{label}: not a readable image ({reason})") from None
    except Exception as exc:  # truncated, corrupt, an unsupported layout
        raise ImageError(f"{label}: not a readable image ({_reason(exc)})") from None


def _check_max_pixels(max_pixels: int | None) -> None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels < 1):
        raise UsageError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")


@contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Switch Pillow's global bomb check off while we decode, because we apply our own.

    Pillow warns above 89 Mpx and refuses above 179 Mpx, a process-wide setting that would cut
    below our documented limit and could not be lifted per call (``--max-pixels``). The lock makes
    concurrent loads take turns, so the setting is restored exactly.
    """
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _check_size(path: str | Path, size: tuple[int, int], max_pixels: int | None) -> None:
    pixels = size[0] * size[1]
    if max_pixels is not None and pixels > max_pixels:
        raise ImageError(
            f"{path}: {size[0]}x{size[1]} is {pixels:,} pixels, over the limit of {max_pixels:,} "
            "that guards against decompression bombs; raise it with --max-pixels if you trust the file"
        )


def _rewound(src: Path | BinaryIO) -> Path | BinaryIO:
    """A path as it is; a file object sought back to its start, so that it can be decoded again."""
    if not isinstance(src, Path):
        src.seek(0)
    return src


def _load(src: Path | BinaryIO, label: str | Path, max_pixels: int | None) -> Picture:
    with Image.open(_rewound(src), formats=INPUT_FORMATS) as im:
        _check_size(label, im.size, max_pixels)
        fmt = "JPEG" if im.format == "MPO" else str(im.format)
        rawmode = _tile_rawmode(im)  # before load(), which empties im.tile
        tiff = im.format == "TIFF"
        exif_obj = _read_exif(im) if tiff else None  # older Pillow closes a TIFF once loaded
        tagged = exif_obj is not None and _ORIENTATION in exif_obj
        im.load()  # decode now, so a truncated file fails here (and not inside getexif)
        if not tiff:
            exif_obj = _read_exif(im)
            tagged = exif_obj is not None and _ORIENTATION in exif_obj
        # read after load: newer Pillow applies a TIFF's orientation while loading, dropping the tag
        orientation = _orientation(exif_obj)
        exif = _kept_exif(im, exif_obj, tagged)
        icc = im.info.get("icc_profile") or None
        if rawmode in _WIDE_RAWMODES:
            pixels, alpha = _decode_wide(src, im, rawmode)
        else:
            pixels, alpha, icc = _to_arrays(im, icc, label)
    pixels, alpha = _orient(pixels, orientation), None if alpha is None else _orient(alpha, orientation)
    return Picture(np.ascontiguousarray(pixels), None if alpha is None else np.ascontiguousarray(alpha),
                   icc, exif, fmt)


def picture_from_pil(im: Image.Image) -> Picture:
    """An in-memory Pillow image as a Picture, with the modes and the EXIF orientation handling of
    ``load_picture`` (a photo opened with ``Image.open`` comes out upright, as from a file)."""
    im.load()  # first: newer Pillow applies a TIFF's orientation while loading, dropping the tag
    orientation = _orientation(_read_exif(im))
    pixels, alpha, icc = _to_arrays(im, im.info.get("icc_profile") or None, Path("<PIL image>"))
    pixels, alpha = _orient(pixels, orientation), None if alpha is None else _orient(alpha, orientation)
    return Picture(np.ascontiguousarray(pixels), None if alpha is None else np.ascontiguousarray(alpha),
                   icc, None, im.format or "PNG")


def picture_to_pil(pic: Picture) -> Image.Image:
    """A Picture as a Pillow image: L, I;16 (16-bit grey), RGB, LA or RGBA.

    Pillow holds no 16-bit colour; 16-bit colour comes back as 8-bit (use the numpy API for it).
    """
    pixels, alpha = pic.pixels, pic.alpha
    if pixels.dtype == np.uint16 and (pixels.ndim == 3 or alpha is not None):
        pixels, alpha = _to_8bit16(pixels), None if alpha is None else _to_8bit16(alpha)
    samples = _with_alpha(pixels, alpha)
    im = Image.fromarray(np.ascontiguousarray(samples[..., 0] if samples.shape[2] == 1 else samples))
    if pic.icc_profile:
        im.info["icc_profile"] = pic.icc_profile
    return im


def _tile_rawmode(im: Image.Image) -> str | None:
    """The rawmode Pillow will decode the file's samples with: it tells the file's bit depth."""
    tile = getattr(im, "tile", None)
    if not tile:
        return None
    args = tile[0][3]
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return args if isinstance(args, str) else None


def _native(order: str) -> str:
    return ("L" if sys.byteorder == "little" else "B") if order == "N" else order


def _wide_rawmodes() -> dict[str, tuple[str, bool, bool]]:
    """16-bit colour rawmodes -> (rawmode giving the low bytes, has alpha, is greyscale).

    Pillow keeps only the high byte of 16-bit colour samples (its "RGB;16B" unpacker takes every
    other byte). Decoding the same file a second time with the opposite byte order yields the low
    bytes through the same C decoder (PNG filters, interlacing, TIFF compression all handled).
    "LA;16B" (16-bit grey+alpha PNG) is decoded once as 4 raw bytes per pixel instead.
    """
    table: dict[str, tuple[str, bool, bool]] = {}
    for base, alpha in (("RGB", False), ("RGBX", False), ("RGBA", True)):
        for order in "BLN":
            low = "L" if _native(order) == "B" else "B"
            table[f"{base};16{order}"] = (f"{base};16{low}", alpha, False)
    table["LA;16B"] = ("RGBA", True, True)
    return table


_WIDE_RAWMODES = _wide_rawmodes()


def _decode_with_rawmode(src: Path | BinaryIO, rawmode: str) -> np.ndarray:
    """Decode ``src`` again, telling Pillow to unpack its samples with ``rawmode``."""
    with Image.open(_rewound(src), formats=INPUT_FORMATS) as im:
        im.tile = [_with_rawmode(t, rawmode) for t in im.tile]
        im.load()
        return np.asarray(im)


def _with_rawmode(tile, rawmode: str):
    args = tile[3]
    args = (rawmode, *args[1:]) if isinstance(args, tuple) else rawmode
    return tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)


def _decode_wide(src: Path | BinaryIO, im: Image.Image, rawmode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """16-bit colour (RGB, RGBA, grey+alpha) -> uint16 pixels and alpha."""
    low_rawmode, has_alpha, grey = _WIDE_RAWMODES[rawmode]
    low = _decode_with_rawmode(src, low_rawmode)
    if grey:  # raw bytes per pixel: L high, L low, A high, A low
        wide = (low[..., 0::2].astype(np.uint16) << 8) | low[..., 1::2]
        return wide[..., 0], wide[..., 1]
    high = np.asarray(im)
    if high.shape != low.shape:
        raise ValueError("16-bit decode gave inconsistent planes")
    wide = (high.astype(np.uint16) << 8) | low
    if has_alpha:
        return wide[..., :3], wide[..., 3]
    return wide[..., :3], _key_alpha(wide[..., :3], im.info.get("transparency"))


def _to_arrays(
    im: Image.Image, icc: bytes | None, path: str | Path
) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    """A loaded Pillow image of any supported mode -> (pixels, alpha, ICC profile that fits)."""
    key = im.info.get("transparency")
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode in ("La", "RGBa"):
        im, mode = im.convert(mode.upper()), mode.upper()
    elif mode in ("RGBX", "YCbCr"):
        im, mode = im.convert("RGB"), "RGB"
    elif mode in ("P", "PA"):
        mode = "RGBA" if mode == "PA" or key is not None else "RGB"
        im, key = im.convert(mode), None
    elif mode == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc)
        mode, key = "RGB", None
    if mode in SIXTEEN_BIT_MODES:
        arr = np.asarray(im)
        if mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageError(f"{path}: integer samples outside 0..65535 are not supported")
        pixels = arr.astype(np.uint16)
        return pixels, _key_alpha(pixels, key), icc
    if mode in ("L", "RGB"):
        pixels = np.asarray(im)
        return pixels, _key_alpha(pixels, key), icc
    if mode in ("LA", "RGBA"):
        arr = np.asarray(im)
        pixels = arr[..., 0] if mode == "LA" else arr[..., :3]
        return pixels, arr[..., -1], icc
    raise ImageError(f"{path}: unsupported image mode {mode!r}")


def _key_alpha(pixels: np.ndarray, key) -> np.ndarray | None:
    """A colour-key transparency (PNG tRNS for grey/RGB) -> an alpha plane, else None."""
    if key is None or isinstance(key, bytes):
        return None
    opaque = np.iinfo(pixels.dtype).max
    if pixels.ndim == 2 and isinstance(key, int):
        hit = pixels == key
    elif pixels.ndim == 3 and isinstance(key, tuple) and len(key) == pixels.shape[2]:
        hit = np.all(pixels == np.asarray(key, dtype=np.int64), axis=2)
    else:
        return None
    return np.where(hit, 0, opaque).astype(pixels.dtype)


def _icc_space(icc: bytes | None) -> bytes | None:
    """The colour space signature of an ICC profile (b"RGB ", b"GRAY", b"CMYK"...), or None."""
    if icc and len(icc) >= 40 and icc[36:40] == b"acsp":
        return icc[16:20]
    return None


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """CMYK -> RGB through its own ICC profile when it has one (then tagged sRGB), else naively.

    A CMYK profile never describes the RGB result, so it is not kept either way.
    """
    if _icc_space(icc) == b"CMYK":
        try:
            from PIL import ImageCms

            srgb = ImageCms.createProfile("sRGB")
            rgb = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(BytesIO(icc)), srgb,
                                            outputMode="RGB")
            return rgb, ImageCms.ImageCmsProfile(srgb).tobytes()
        except Exception:  # no littlecms, or a broken profile: fall back to Pillow's formula
            pass
    return im.convert("RGB"), None


def _read_exif(im: Image.Image) -> Image.Exif | None:
    """Pillow's view of the EXIF, as ImageOps.exif_transpose reads it; None when unreadable."""
    try:
        return im.getexif()
    except Exception:  # unreadable EXIF: treat the photo as having none
        return None


def _orientation(exif_obj: Image.Exif | None) -> int:
    """The EXIF orientation 1..8 still to apply to the decoded pixels (1 for anything else)."""
    value = exif_obj.get(_ORIENTATION, 1) if exif_obj is not None else 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _kept_exif(im: Image.Image, exif_obj: Image.Exif | None, tagged: bool) -> bytes | None:
    """The EXIF bytes to write back, orientation reset to 1; the original bytes where possible.

    ``tagged``: the file had an orientation tag (Pillow may since have removed it).
    """
    if exif_obj is None:
        return None
    raw = im.info.get("exif")
    if isinstance(raw, bytes) and raw:
        raw = raw if raw.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + raw
        patched = _patch_orientation(raw)
        if patched is not None:
            return patched
    elif im.format == "TIFF":
        exif_obj = _tiff_metadata(exif_obj)
    elif "Raw profile type exif" not in im.info:  # no EXIF, at most an XMP orientation
        return None
    try:
        if tagged or _ORIENTATION in exif_obj:
            exif_obj[_ORIENTATION] = 1
        return exif_obj.tobytes() if len(exif_obj) else None
    except Exception:
        return None


def _tiff_metadata(exif_obj) -> Image.Exif:
    """The photo metadata of a TIFF's first IFD, without the tags describing its pixel layout."""
    out = Image.Exif()
    for tag in _TIFF_METADATA_TAGS:
        if tag in (_EXIF_IFD, _GPS_IFD):
            sub = exif_obj.get_ifd(tag)
            if sub:
                out[tag] = _nested_ifd(exif_obj, tag)
        elif tag in exif_obj:
            out[tag] = exif_obj[tag]
    return out


def _nested_ifd(exif_obj, tag: int) -> dict:
    """A sub-IFD as a dict, its own Interop pointer (an offset) replaced by that IFD's content."""
    sub = dict(exif_obj.get_ifd(tag))
    if _INTEROP_IFD in sub and not isinstance(sub[_INTEROP_IFD], dict):
        interop = exif_obj.get_ifd(_INTEROP_IFD)
        if interop:
            sub[_INTEROP_IFD] = dict(interop)
        else:
            del sub[_INTEROP_IFD]
    return sub


def _patch_orientation(exif: bytes) -> bytes | None:
    """Set the orientation entry of IFD0 to 1 in place, keeping every other byte as it was.

    Rewriting in place keeps maker notes and other offset-sensitive data intact. Bytes without an
    orientation entry come back unchanged; None means they could not be followed (or the entry is
    not the standard one SHORT), so the caller must re-serialise.
    """
    body = exif[len(_EXIF_PREFIX):]
    order = {b"II": "<", b"MM": ">"}.get(body[:2])
    if order is None:
        return None
    try:
        (ifd,) = struct.unpack_from(order + "I", body, 4)
        (count,) = struct.unpack_from(order + "H", body, ifd)
        for i in range(count):
            entry = ifd + 2 + 12 * i
            tag, kind, n = struct.unpack_from(order + "HHI", body, entry)
            if tag == _ORIENTATION:
                if kind != 3 or n != 1:
                    return None
                value = struct.pack(order + "H", 1)
                return _EXIF_PREFIX + body[:entry + 8] + value + body[entry + 10:]
    except struct.error:
        return None
    return exif


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an HxW or HxWxC array, as ImageOps.exif_transpose."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


# ----------------------------------------------------------------------------------- saving


def output_format(input_format: str, ext: str = "auto") -> str:
    """The suffix to write, e.g. ".png": the input's own format for "auto", else ``ext`` checked.

    "auto" keeps PNG, JPEG, WebP, BMP and TIFF (so a JPEG stays a JPEG rather than growing tenfold
    as a PNG); any other input format gives ".png", which loses nothing.
    """
    if ext.lower() == "auto":
        fmt = "JPEG" if input_format.upper() == "MPO" else input_format.upper()
        return _FORMAT_SUFFIXES.get(fmt, ".png")
    suffix = ext.lower() if ext.startswith(".") else "." + ext.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise UsageError(
            f"unknown output format {ext!r}: use auto, png, jpg, jpeg, webp, bmp, tif or tiff"
        )
    return suffix


def save_picture(pic: Picture, path: str | os.PathLike, *, quality: int = 95) -> Path:
    """Write ``pic`` in the format its suffix names, atomically; returns the path.

    PNG and TIFF keep everything (16 bits, alpha, ICC, EXIF). JPEG, WebP and BMP hold 8 bits, so
    16-bit pictures are rounded to 8 there; JPEG drops alpha (and EXIF over its 64 KB limit);
    WebP is written losslessly (``quality`` applies to JPEG only) and has no greyscale, so grey
    becomes RGB; BMP keeps alpha (32-bit BGRA), turning grey+alpha into RGB, but no ICC or EXIF.
    An ICC profile for another colour space than the written pixels is not written.
    A path that cannot be written is an ``ImageError`` naming it; nothing is left behind.
    """
    path = Path(path)
    fmt = _format_of(path)
    _check_picture(pic)
    if not (isinstance(quality, int) and 1 <= quality <= 100):
        raise UsageError(f"quality must be an integer in 1..100, got {quality!r}")
    colour = 1 if pic.pixels.ndim == 2 else 3
    write_memory(path, *pic.pixels.shape[:2], colour=colour, alpha=pic.alpha is not None, dtype=pic.pixels.dtype)
    pixels, alpha = _for_format(pic.pixels, pic.alpha, fmt)
    icc = pic.icc_profile if _icc_fits(pic.icc_profile, pixels) else None
    exif = pic.exif or None
    if path.is_dir():
        raise ImageError(f"{path}: cannot write, a directory is in the way")
    try:
        with atomic_path(path) as tmp:
            _write(tmp, fmt, pixels, alpha, icc, exif, quality)
    except (OSError, ValueError, RuntimeError, struct.error, zlib.error) as exc:
        # an OSError's own text names the temporary file; its strerror says what went wrong
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _reason(exc)
        raise ImageError(f"{path}: cannot write ({reason})") from None
    return path


def _format_of(path: Path) -> str:
    """The format a path's suffix names; ImageError for any other suffix."""
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image extension {path.suffix!r} "
                         "(use .png, .jpg, .jpeg, .webp, .bmp, .tif or .tiff)")
    return fmt


def write_memory(path: str | os.PathLike, height: int, width: int, *, colour: int, alpha: bool,
                 dtype: np.dtype | type) -> int:
    """Bytes of memory that writing an HxW picture to ``path`` needs besides the picture itself.

    Called before an upscale, so that a request the format cannot hold is refused before any
    work: an ``ImageError`` naming the file when a side is over the format's limit (JPEG 65,535
    pixels, WebP 16,383) or the file would be over 4 GB (TIFF, BMP). PNG, TIFF and BMP with alpha
    are written a block of rows at a time (about 256 KB); JPEG, WebP and BMP without alpha go
    through Pillow, which needs the whole picture as an image of its own (4 bytes per colour
    pixel), after an 8-bit (or greyscale-to-RGB) copy where the format asks for one; WebP's
    encoder makes one more 4-byte copy.
    """
    path = Path(path)
    fmt = _format_of(path)
    itemsize = np.dtype(dtype).itemsize
    if fmt in ("JPEG", "WEBP", "BMP"):
        itemsize = 1
    alpha = alpha and fmt != "JPEG"
    if colour == 1 and (fmt == "WEBP" or (fmt == "BMP" and alpha)
                        or (fmt == "TIFF" and alpha and itemsize == 2)):
        colour = 3
    channels, pixels = colour + alpha, height * width
    limit = _MAX_SIDE.get(fmt)
    if limit is not None and max(height, width) > limit:
        raise ImageError(f"{path}: cannot write {width}x{height} as {fmt} (at most {limit:,} pixels "
                         "a side); write a .png or .tif instead")
    row = -(-width * colour // 4) * 4 if fmt == "BMP" and not alpha else width * channels * itemsize
    if fmt in _MAX_FILE and height * row > _MAX_FILE[fmt] - (1 << 20):
        raise ImageError(f"{path}: cannot write {width}x{height} as {fmt} (a {fmt} file holds at "
                         "most 4 GB); write a .png instead")
    if fmt in _STREAMED_FORMATS and (fmt != "BMP" or alpha):
        return 32 * _BLOCK_BYTES  # a block of rows, its filters and their temporaries
    converted = pixels * channels if (np.dtype(dtype).itemsize == 2 or fmt == "WEBP") else 0
    interleaved = pixels * channels if alpha else 0
    encoder = pixels * 4 if fmt == "WEBP" else 0
    return converted + interleaved + pixels * _PILLOW_BYTES[channels] + encoder


def _check_picture(pic: Picture) -> None:
    """Programming errors (wrong shapes or dtypes) are ValueErrors before any file is touched."""
    px, alpha = pic.pixels, pic.alpha
    if not isinstance(px, np.ndarray) or px.dtype not in (np.uint8, np.uint16):
        raise UsageError(f"pixels must be a uint8 or uint16 array, got {getattr(px, 'dtype', type(px))}")
    if not (px.ndim == 2 or (px.ndim == 3 and px.shape[2] == 3)) or px.shape[0] < 1 or px.shape[1] < 1:
        raise UsageError(f"pixels must be HxW or HxWx3, got shape {px.shape}")
    if alpha is not None and (not isinstance(alpha, np.ndarray) or alpha.dtype != px.dtype
                              or alpha.shape != px.shape[:2]):
        raise UsageError("alpha must be an HxW array of the same dtype as pixels")


def _to_8bit16(arr: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 by rounding x / 257 (65535 -> 255, 257 -> 1); uint8 passes through.

    A block of rows at a time, so the uint32 arithmetic never holds a copy of a whole picture.
    """
    if arr.dtype == np.uint8:
        return arr
    out = np.empty(arr.shape, np.uint8)
    rows = max(1, _BLOCK_BYTES // max(1, arr[:1].size * 4))
    for y in range(0, arr.shape[0], rows):
        out[y:y + rows] = (arr[y:y + rows].astype(np.uint32) * 2 + 257) // 514
    return out


def _for_format(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str):
    """What the target format can hold: bit depth, alpha and greyscale, reduced as documented."""
    if fmt in ("JPEG", "WEBP", "BMP"):
        pixels = _to_8bit16(pixels)
        alpha = None if alpha is None else _to_8bit16(alpha)
    if fmt == "JPEG":
        alpha = None
    if pixels.ndim == 2 and (fmt == "WEBP" or (fmt == "BMP" and alpha is not None)):
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if fmt == "TIFF" and pixels.ndim == 2 and alpha is not None and pixels.dtype == np.uint16:
        pixels = np.repeat(pixels[..., None], 3, axis=2)  # Pillow cannot read 16-bit grey+alpha TIFF
    return pixels, alpha


def _icc_fits(icc: bytes | None, pixels: np.ndarray) -> bool:
    """False for a profile of another colour space than the pixels (e.g. a GRAY one on RGB)."""
    if not icc:
        return False
    space = _icc_space(icc)
    return space is None or space == (b"GRAY" if pixels.ndim == 2 else b"RGB ")


@dataclass(frozen=True)
class _Samples:
    """Colour (HxW or HxWxC) and an optional HxW alpha seen as HxWxC' samples, alpha last.

    Writers take it a block of rows at a time: interleaving the whole picture first would copy
    the largest array of an upscale once more. Each block is a new C-contiguous array in the byte
    order the format wants, whatever the strides of the arrays given (views, flips, transposes).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        h, w = self.pixels.shape[:2]
        colour = 1 if self.pixels.ndim == 2 else self.pixels.shape[2]
        return h, w, colour + (self.alpha is not None)

    @property
    def dtype(self) -> np.dtype:
        return self.pixels.dtype

    def rows(self, start: int, stop: int, dtype: np.dtype | str | None = None) -> np.ndarray:
        """Rows ``start:stop`` as a new C-contiguous (rows, W, C) array of ``dtype`` (default: as stored)."""
        colour = self.pixels[start:stop]
        _, w, c = self.shape
        out = np.empty((colour.shape[0], w, c), dtype=dtype or self.dtype)
        out[..., :c - (self.alpha is not None)] = colour[..., None] if colour.ndim == 2 else colour
        if self.alpha is not None:
            out[..., -1] = self.alpha[start:stop]
        return out

    def blocks(self, block_bytes: int = _BLOCK_BYTES) -> list[tuple[int, int]]:
        """(start, stop) row ranges of about ``block_bytes`` each, covering the picture."""
        h, w, c = self.shape
        n = max(1, block_bytes // (w * c * self.dtype.itemsize))
        return [(y, min(y + n, h)) for y in range(0, h, n)]


def _with_alpha(pixels: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """HxW[x3] + HxW alpha -> one C-contiguous HxWxC array, C in 1..4 (for Pillow).

    Contiguous pixels without alpha are returned as they are (a view), not copied.
    """
    if alpha is None and pixels.flags.c_contiguous:
        return pixels[..., None] if pixels.ndim == 2 else pixels
    return _Samples(pixels, alpha).rows(0, pixels.shape[0])


def _write(tmp: Path, fmt: str, pixels: np.ndarray, alpha: np.ndarray | None,
           icc: bytes | None, exif: bytes | None, quality: int) -> None:
    samples = _Samples(pixels, alpha)
    if fmt in _STREAMED_FORMATS and (fmt != "BMP" or alpha is not None):
        writer = {"TIFF": _write_tiff, "PNG": _write_png, "BMP": _write_bmp_rgba}[fmt]
        with open(tmp, "wb") as fp:
            writer(fp, samples, icc, exif)
        return
    whole = _with_alpha(pixels, alpha)
    im = Image.fromarray(whole[..., 0] if whole.shape[2] == 1 else whole)
    options: dict = {}
    if fmt != "BMP":
        options.update({k: v for k, v in (("icc_profile", icc), ("exif", exif)) if v})
    if fmt == "JPEG":
        options["quality"] = quality
        if exif and len(exif) > 65533:  # one APP1 segment; Pillow refuses larger
            del options["exif"]
    elif fmt == "WEBP":
        options.update(lossless=True, exact=True)  # exact: keep colour under transparent pixels
    im.save(tmp, format=fmt, **options)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_filter(rows: np.ndarray, above: np.ndarray, bpp: int) -> bytes:
    """Filter rows of bytes for PNG, choosing per row the filter with the smallest output.

    The minimum-sum-of-absolute-differences choice is libpng's heuristic; all five filters are
    computed from the unfiltered bytes, so the whole block is vectorised. Filters are bytes
    modulo 256, so they are computed in uint8 (wrapping); only Average's sum and Paeth's
    distances need 16 bits.
    """
    x = rows
    up = np.vstack([above[None], rows[:-1]])
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    corner = np.zeros_like(x)
    corner[:, bpp:] = up[:, :-bpp]
    l16, u16, c16 = left.astype(np.int16), up.astype(np.int16), corner.astype(np.int16)
    pa, pb, pc = np.abs(u16 - c16), np.abs(l16 - c16), np.abs(l16 + u16 - 2 * c16)  # |p - left|, |p - up|, |p - corner|
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
    average = ((l16 + u16) >> 1).astype(np.uint8)
    candidates = [x, x - left, x - up, x - average, x - paeth]
    # |byte as int8| summed per row: min(b, 256 - b), accumulated in 32 bits without a 32-bit copy
    cost = np.stack([np.add.reduce(np.minimum(c, np.negative(c)), axis=1, dtype=np.uint32) for c in candidates])
    best = cost.argmin(axis=0)
    out = np.empty((len(rows), 1 + rows.shape[1]), np.uint8)
    out[:, 0] = best
    for kind, candidate in enumerate(candidates):
        chosen = best == kind
        out[chosen, 1:] = candidate[chosen]
    return out.tobytes()


def _write_png(fp, samples: _Samples, icc: bytes | None, exif: bytes | None) -> None:
    """A PNG of 8 or 16 bits (grey, grey+alpha, RGB, RGBA), filtered and compressed block by block.

    Ours rather than Pillow's: Pillow cannot write 16-bit colour PNGs, and for 8 bits it would
    first copy the whole picture into an image of its own (4 bytes per RGB pixel).
    """
    h, w, c = samples.shape
    size = samples.dtype.itemsize
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    ihdr = struct.pack(">IIBBBBB", w, h, 8 * size, colour_type, 0, 0, 0)  # no interlacing
    fp.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr))
    if icc:
        fp.write(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    if exif:
        fp.write(_png_chunk(b"eXIf", exif[len(_EXIF_PREFIX):] if exif.startswith(_EXIF_PREFIX) else exif))
    compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 8, zlib.Z_FILTERED)  # as libpng and Pillow
    above = np.zeros(w * c * size, np.uint8)
    pending = b""
    for start, stop in samples.blocks():
        data = samples.rows(start, stop, samples.dtype.newbyteorder(">")).view(np.uint8).reshape(stop - start, -1)
        pending += compressor.compress(_png_filter(data, above, c * size))
        above = data[-1].copy()
        if len(pending) >= 1 << 18:
            fp.write(_png_chunk(b"IDAT", pending))
            pending = b""
    fp.write(_png_chunk(b"IDAT", pending + compressor.flush()))
    fp.write(_png_chunk(b"IEND", b""))


def _write_tiff(fp, samples: _Samples | np.ndarray, icc: bytes | None, exif: bytes | None, *,
                big_endian: bool = False, compress: bool = True) -> None:
    """A baseline TIFF, 8 or 16 bits, deflate with horizontal prediction, EXIF tags in IFD0.

    Ours rather than Pillow's: Pillow cannot write 16-bit colour, and its compressed (libtiff)
    writer fails on EXIF with sub-IFDs. Strips are compressed and written one at a time: the IFD
    goes first with placeholder strip offsets and sizes (fixed-size LONGs) and is written again,
    the same length, once they are known.
    """
    from PIL import TiffImagePlugin

    if isinstance(samples, np.ndarray):
        samples = _Samples(samples)
    h, w, c = samples.shape
    bits = samples.dtype.itemsize * 8
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"MM" if big_endian else b"II")
    for tag, value in _exif_tiff_tags(exif).items():
        ifd[tag] = value
    ifd[256], ifd[257] = w, h
    ifd[258] = (bits,) * c
    ifd[259] = 8 if compress else 1  # Adobe deflate or none
    ifd[262] = 1 if c <= 2 else 2  # BlackIsZero or RGB
    ifd[277] = c
    ifd[284] = 1  # contiguous samples
    if c in (2, 4):
        ifd[338] = (2,)  # unassociated alpha
    if icc:
        ifd[34675] = icc
    if compress:
        ifd[317] = 2  # horizontal differencing: much smaller deflate output for photos
    strips = samples.blocks(1 << 18)
    ifd[278] = strips[0][1]
    ifd[273] = ifd[279] = (0,) * len(strips)
    start = fp.tell()
    end = ifd.save(fp)  # header and IFD; Pillow adds ``end`` to the strip offsets
    offsets, sizes = [], []
    order = samples.dtype.newbyteorder(">" if big_endian else "<")
    for y0, y1 in strips:
        data = samples.rows(y0, y1, order)
        if compress:
            data[:, 1:] -= data[:, :-1].copy()
        data = zlib.compress(data.tobytes(), 6) if compress else data.tobytes()
        offsets.append(fp.tell() - end)
        sizes.append(len(data))
        fp.write(data)
    ifd[273], ifd[279] = tuple(offsets), tuple(sizes)
    fp.seek(start)
    if ifd.save(fp) != end:
        raise ValueError("TIFF directory changed size")
    fp.seek(0, os.SEEK_END)


def _exif_tiff_tags(exif: bytes | None) -> dict:
    """EXIF bytes -> TIFF IFD0 tags (sub-IFDs as dicts), without any pixel-layout tag."""
    if not exif:
        return {}
    parsed = Image.Exif()
    try:
        parsed.load(exif)
        tags = {}
        for tag, value in parsed.items():
            if tag in _TIFF_LAYOUT_TAGS:
                continue
            if tag in (_EXIF_IFD, _GPS_IFD):
                value = _nested_ifd(parsed, tag)
                if not value:
                    continue
            if _tiff_serialisable(tag, value):
                tags[tag] = value
        return tags
    except Exception:  # EXIF we cannot follow is left out rather than failing the write
        return {}


def _tiff_serialisable(tag: int, value) -> bool:
    """Whether Pillow can write this tag, so one odd EXIF value never fails a whole write."""
    from PIL import TiffImagePlugin

    probe = TiffImagePlugin.ImageFileDirectory_v2()
    try:
        probe[tag] = value
        probe.tobytes()
    except Exception:
        return False
    return True


def _write_bmp_rgba(fp, samples: _Samples, icc: bytes | None = None, exif: bytes | None = None) -> None:
    """A 32-bit BMP with an explicit alpha mask (BITMAPV4HEADER, BI_BITFIELDS); no ICC or EXIF.

    Pillow writes RGBA as plain 32-bit BI_RGB, whose fourth byte readers (Pillow included) ignore.
    Rows are stored bottom-up, so the blocks are written last first.
    """
    h, w, _ = samples.shape
    size = h * w * 4
    header = struct.pack(
        "<IiiHHIIiiII4I4s36s3I", 108, w, h, 1, 32, 3, size, 2835, 2835, 0, 0,
        0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000, b"BGRs", b"\0" * 36, 0, 0, 0,
    )
    offset = 14 + len(header)
    fp.write(b"BM" + struct.pack("<IHHI", offset + size, 0, 0, offset) + header)
    for y0, y1 in reversed(samples.blocks()):
        fp.write(samples.rows(y0, y1)[::-1][..., [2, 1, 0, 3]].tobytes())  # bottom-up BGRA
