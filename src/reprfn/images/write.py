"""Writing a ``Picture``: PNG, JPEG, WebP, BMP or TIFF, atomically, with its memory known beforehand.

PNG, TIFF and BMP with alpha are written by our own block-by-block writers (``png16``, ``tiff``,
``bmp``: each says why Pillow or tifffile cannot do it); JPEG, WebP and BMP without alpha by
Pillow. ``write_memory`` tells, before an upscale, what a write will need and refuses what a format
cannot hold, so a long upscale never ends in a refusal.
"""

from __future__ import annotations

import os
import struct
import zlib
from contextlib import nullcontext
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..errors import ImageError, UsageError, one_line
from ..files import atomic_path
from .bmp import write_bmp_rgba
from .metadata import icc_fits
from .picture import Picture
from .png16 import write_png16
from .samples import BLOCK_BYTES, Samples, interleave, round_to_8bit
from .tiff import write_tiff

_SUFFIX_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
    ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
}
_FORMAT_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
_STREAMED_FORMATS = ("PNG", "TIFF", "BMP")  # our own block-by-block writers (BMP: with alpha only)
_MAX_SIDE = {"JPEG": 65_535, "WEBP": 16_383}  # what the format (or its encoder) can hold
_MAX_FILE = {"TIFF": 2**32 - 1, "BMP": 2**32 - 1}  # 32-bit offsets and size fields
_PILLOW_BYTES = {1: 1, 2: 4, 3: 4, 4: 4}  # bytes per pixel of a Pillow image (L, LA, RGB, RGBA)
_WRITE_ERRORS = (OSError, ValueError, RuntimeError, struct.error, zlib.error)


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
    fmt, pixels, alpha, icc, exif = _prepared(pic, path, quality)
    if path.is_dir():
        raise ImageError(f"{path}: cannot write, a directory is in the way")
    try:
        with atomic_path(path) as tmp:
            _write(tmp, fmt, pixels, alpha, icc, exif, quality)
    except _WRITE_ERRORS as exc:
        raise _cannot_write(path, exc) from None
    return path


def encode_picture(pic: Picture, name: str, *, quality: int = 95) -> bytes:
    """``pic`` encoded as ``save_picture`` would write a file called ``name``, in memory.

    The suffix of ``name`` gives the format, and messages name ``name`` (no path of the server's
    own ever appears in them). The encoded bytes are held in memory besides the picture: for
    results of a bounded size, as the web server's.
    """
    fmt, pixels, alpha, icc, exif = _prepared(pic, Path(name), quality)
    buffer = BytesIO()
    try:
        _write(buffer, fmt, pixels, alpha, icc, exif, quality)
    except _WRITE_ERRORS as exc:
        raise _cannot_write(name, exc) from None
    return buffer.getvalue()


def _prepared(pic: Picture, path: Path,
              quality: int) -> tuple[str, np.ndarray, np.ndarray | None, bytes | None, bytes | None]:
    """Everything checked before a byte is written: (format, pixels, alpha, ICC, EXIF) to write.

    The picture, the quality and the format's limits (``write_memory``); then the samples as the
    format holds them and the ICC profile only if it fits them.
    """
    fmt = _format_of(path)
    _check_picture(pic)
    if not (isinstance(quality, int) and 1 <= quality <= 100):
        raise UsageError(f"quality must be an integer in 1..100, got {quality!r}")
    colour = 1 if pic.pixels.ndim == 2 else 3
    write_memory(path, *pic.pixels.shape[:2], colour=colour, alpha=pic.alpha is not None, dtype=pic.pixels.dtype)
    pixels, alpha = _for_format(pic.pixels, pic.alpha, fmt)
    icc = pic.icc_profile if icc_fits(pic.icc_profile, pixels) else None
    return fmt, pixels, alpha, icc, pic.exif or None


def _cannot_write(label: str | Path, exc: Exception) -> ImageError:
    """One line naming the file asked for; an OSError's own text would name the temporary file,
    its strerror says what went wrong."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)[:200]
    return ImageError(f"{label}: cannot write ({reason})")


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
        return 32 * BLOCK_BYTES  # a block of rows, its filters and their temporaries
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


def _for_format(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str) -> tuple[np.ndarray, np.ndarray | None]:
    """What the target format can hold: bit depth, alpha and greyscale, reduced as documented."""
    if fmt in ("JPEG", "WEBP", "BMP"):
        pixels = round_to_8bit(pixels)
        alpha = None if alpha is None else round_to_8bit(alpha)
    if fmt == "JPEG":
        alpha = None
    if pixels.ndim == 2 and (fmt == "WEBP" or (fmt == "BMP" and alpha is not None)):
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if fmt == "TIFF" and pixels.ndim == 2 and alpha is not None and pixels.dtype == np.uint16:
        pixels = np.repeat(pixels[..., None], 3, axis=2)  # Pillow cannot read 16-bit grey+alpha TIFF
    return pixels, alpha


def _write(target: Path | BinaryIO, fmt: str, pixels: np.ndarray, alpha: np.ndarray | None,
           icc: bytes | None, exif: bytes | None, quality: int) -> None:
    """Encode to ``target``, a path or a seekable binary file: our block writers, else Pillow."""
    if fmt in _STREAMED_FORMATS and (fmt != "BMP" or alpha is not None):
        samples = Samples(pixels, alpha)
        with open(target, "wb") if isinstance(target, Path) else nullcontext(target) as fp:
            if fmt == "PNG":
                write_png16(fp, samples, icc, exif)
            elif fmt == "TIFF":
                write_tiff(fp, samples, icc, exif)
            else:
                write_bmp_rgba(fp, samples)
        return
    whole = interleave(pixels, alpha)
    im = Image.fromarray(whole[..., 0] if whole.shape[2] == 1 else whole)
    options: dict[str, object] = {}
    if fmt != "BMP":
        options.update({k: v for k, v in (("icc_profile", icc), ("exif", exif)) if v})
    if fmt == "JPEG":
        options["quality"] = quality
        if exif and len(exif) > 65533:  # one APP1 segment; Pillow refuses larger
            del options["exif"]
    elif fmt == "WEBP":
        options.update(lossless=True, exact=True)  # exact: keep colour under transparent pixels
    im.save(target, format=fmt, **options)
