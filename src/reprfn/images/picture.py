"""The full-fidelity path of ``reprfn upscale``: a ``Picture`` keeps what the output file should.

Colour plus a separate alpha, 8 or 16 bits as in the file, the ICC profile and the EXIF
(orientation applied to the pixels and reset), from PNG, JPEG, WebP, BMP or TIFF, read from a
path or from memory. Images over a pixel limit are refused from their header, before any pixel is
decoded (a decompression-bomb guard that ``--max-pixels`` moves).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError, UsageError, one_line
from .metadata import ORIENTATION, exif_orientation, icc_space, kept_exif, orient, read_exif
from .read import SIXTEEN_BIT_MODES, refuse_misread
from .samples import interleave, round_to_8bit
from .wide import WIDE_RAWMODES, decode_wide, tile_rawmode

DEFAULT_MAX_PIXELS = 200_000_000
"""Inputs with more pixels than this are refused (decompression-bomb guard); ``None`` lifts it."""

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")  # Pillow may report a JPEG as "MPO"
_PILLOW_LIMIT_LOCK = threading.Lock()


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


def load_picture(source: str | os.PathLike | BinaryIO, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 name: str | None = None) -> Picture:
    """Decode ``source`` without losing what an output file should keep (see ``Picture``).

    ``source`` is a path, or a seekable binary file read from its start (e.g. the ``BytesIO`` of
    an upload, decoded without a round trip through the disk); messages then name ``name``.
    8 vs 16 bits follows the file's sample format: 16-bit greyscale, RGB and RGBA PNG/TIFF give
    ``uint16``. Palette and CMYK become RGB (palette transparency becomes alpha; a CMYK ICC profile
    is used to convert to sRGB when present). An animated PNG or WebP is refused (``refuse_animation``);
    of a multi-picture JPEG (MPO) or a multi-page TIFF, the first picture is the image.
    Images over ``max_pixels`` are refused before any pixel is decoded; ``None`` lifts the guard.
    Every failure is an ``ImageError`` whose one-line message names the file.
    """
    _check_max_pixels(max_pixels)
    src: Path | BinaryIO
    label: Path | str
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
        with own_pixel_limit():
            return _load(src, label, max_pixels)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not a readable image ({_unidentified(src)})") from None
    except Exception as exc:  # truncated, corrupt, an unsupported layout
        raise ImageError(f"{label}: not a readable image ({one_line(exc)[:200]})") from None


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def _unidentified(src: Path | BinaryIO) -> str:
    """Why Pillow named no format: a TIFF whose header it reads but whose samples it cannot decode
    (16-bit grey + alpha, floating point) is a TIFF all the same, and "not a TIFF" misled."""
    if isinstance(src, Path):
        with open(src, "rb") as fh:
            head = fh.read(4)
    else:
        src.seek(0)
        head = src.read(4)
    if head in TIFF_MAGIC:
        return ("a TIFF whose samples Pillow cannot decode (such as 16-bit grey with alpha, or floating "
                "point); save it as 8- or 16-bit grey, RGB or RGBA")
    return "not a PNG, JPEG, WebP, BMP or TIFF file"


def _check_max_pixels(max_pixels: int | None) -> None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels < 1):
        raise UsageError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")


@contextmanager
def own_pixel_limit() -> Iterator[None]:
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


def _open(src: Path | BinaryIO) -> Image.Image:
    """Open ``src`` (a file object from its start, so that it can be decoded again) unloaded."""
    if not isinstance(src, Path):
        src.seek(0)
    return Image.open(src, formats=INPUT_FORMATS)


def refuse_animation(im: Image.Image, label: str | Path) -> None:
    """Refuse an animated PNG or WebP: its first frame alone, upscaled and written as a still
    image with exit 0, would drop the rest of the animation without a word. (A camera's MPO
    holds a preview after the picture, a TIFF may hold pages: their first picture is the image.)"""
    if im.format in ("PNG", "WEBP") and getattr(im, "is_animated", False):
        kind, frames = {"PNG": "PNG", "WEBP": "WebP"}[str(im.format)], getattr(im, "n_frames", 2)
        raise ImageError(f"{label}: an animated {kind} of {frames} frames; reprfn upscales still images, "
                         "so every frame after the first would be lost: convert it to a video to upscale them all")


def _load(src: Path | BinaryIO, label: str | Path, max_pixels: int | None) -> Picture:
    with _open(src) as im:
        _check_size(label, im.size, max_pixels)
        refuse_misread(im, label)
        refuse_animation(im, label)
        fmt = "JPEG" if im.format == "MPO" else str(im.format)
        rawmode = tile_rawmode(im)  # before load(), which empties im.tile
        tiff = im.format == "TIFF"
        exif_obj = read_exif(im) if tiff else None  # older Pillow closes a TIFF once loaded
        tagged = exif_obj is not None and ORIENTATION in exif_obj
        im.load()  # decode now, so a truncated file fails here (and not inside getexif)
        if not tiff:
            exif_obj = read_exif(im)
            tagged = exif_obj is not None and ORIENTATION in exif_obj
        # read after load: newer Pillow applies a TIFF's orientation while loading, dropping the tag
        orientation = exif_orientation(exif_obj)
        exif = kept_exif(im, exif_obj, tagged)
        icc = im.info.get("icc_profile") or None
        if rawmode in WIDE_RAWMODES:
            pixels, alpha = decode_wide(lambda: _open(src), im, rawmode)
            if alpha is None:
                alpha = _key_alpha(pixels, im.info.get("transparency"))
        else:
            pixels, alpha, icc = _to_arrays(im, icc, label)
    return _upright(pixels, alpha, orientation, icc, exif, fmt)


def _upright(pixels: np.ndarray, alpha: np.ndarray | None, orientation: int, icc: bytes | None,
             exif: bytes | None, fmt: str) -> Picture:
    """A Picture of the decoded arrays with the EXIF orientation applied, C-contiguous."""
    pixels = np.ascontiguousarray(orient(pixels, orientation))
    alpha = None if alpha is None else np.ascontiguousarray(orient(alpha, orientation))
    return Picture(pixels, alpha, icc, exif, fmt)


def picture_from_pil(im: Image.Image) -> Picture:
    """An in-memory Pillow image as a Picture, with the modes and the EXIF orientation handling of
    ``load_picture`` (a photo opened with ``Image.open`` comes out upright, as from a file)."""
    im.load()  # first: newer Pillow applies a TIFF's orientation while loading, dropping the tag
    orientation = exif_orientation(read_exif(im))
    pixels, alpha, icc = _to_arrays(im, im.info.get("icc_profile") or None, Path("<PIL image>"))
    return _upright(pixels, alpha, orientation, icc, None, im.format or "PNG")


def picture_to_pil(pic: Picture) -> Image.Image:
    """A Picture as a Pillow image: L, I;16 (16-bit grey), RGB, LA or RGBA.

    Pillow holds no 16-bit colour; 16-bit colour comes back as 8-bit (use the numpy API for it).
    """
    pixels, alpha = pic.pixels, pic.alpha
    if pixels.dtype == np.uint16 and (pixels.ndim == 3 or alpha is not None):
        pixels, alpha = round_to_8bit(pixels), None if alpha is None else round_to_8bit(alpha)
    samples = interleave(pixels, alpha)
    im = Image.fromarray(np.ascontiguousarray(samples[..., 0] if samples.shape[2] == 1 else samples))
    if pic.icc_profile:
        im.info["icc_profile"] = pic.icc_profile
    return im


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


def _key_alpha(pixels: np.ndarray, key: object) -> np.ndarray | None:
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


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """CMYK -> RGB through its own ICC profile when it has one (then tagged sRGB), else naively.

    A CMYK profile never describes the RGB result, so it is not kept either way.
    """
    if icc is not None and icc_space(icc) == b"CMYK":
        try:
            from PIL import ImageCms

            srgb = ImageCms.createProfile("sRGB")
            rgb = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(BytesIO(icc)), srgb,
                                            outputMode="RGB")
            if rgb is not None:  # always, as not converted in place
                return rgb, ImageCms.ImageCmsProfile(srgb).tobytes()
        except Exception:  # no littlecms, or a broken profile: fall back to Pillow's formula
            pass
    return im.convert("RGB"), None
