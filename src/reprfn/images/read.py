"""Measurement reads: image files -> uint8 arrays, and the array <-> tensor conventions.

Arrays are ``uint8`` HxWx3 (RGB) or HxW (greyscale) on 0..255; tensors are float
``(1, C, H, W)`` in ``[0, 1]``. This is the path of eval and training: always 8 bits, alpha
dropped, as the SR benchmarks measure (``load_picture`` is the full-fidelity path of upscale).
Every decoding failure is an ``ImageError`` whose one-line message names the file, so callers
can report it and move on to the next file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import ImageError, ReprfnError, UsageError, one_line
from ..files import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA", "La")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


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


def refuse_misread(im: Image.Image, path: str | os.PathLike) -> None:
    """Refuse a layout Pillow opens without complaint but decodes wrongly (checked up to Pillow 13.0).

    A TIFF of 16-bit samples stored as separate colour planes (PlanarConfiguration 2) is unpacked
    as 8-bit planes: each plane's first half of bytes, read as samples, a picture of noise that was
    upscaled and written with exit 0. Call before ``load()``.
    """
    tags = getattr(im, "tag_v2", None)
    if im.format != "TIFF" or tags is None or tags.get(284, 1) != 2:
        return
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    if len(bits) > 1 and max(bits) > 8:
        raise ImageError(f"{path}: a {max(bits)}-bit TIFF with separate colour planes, which Pillow decodes "
                         "wrongly; save it with interleaved samples (PlanarConfiguration 1)")


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
            refuse_misread(im, path)
            im.load()  # decode now, so a truncated file fails here and not later
            im = ImageOps.exif_transpose(im)
            return np.ascontiguousarray(_to_8bit(im, path))
    except ImageError:
        raise
    except Exception as exc:  # not an image, truncated, corrupt, decompression bomb, bad EXIF
        raise ImageError(f"{path}: not a readable image ({one_line(exc)[:200]})") from None


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
    plausible and is wrong. Bad weights and fp16 overflow are the usual causes. One sum tells:
    NaN and infinities propagate through it. Arrays are summed in float64, which float32 values
    cannot overflow; tensors (model outputs) in float32, four times faster on a 720p output (a
    float32 sum overflows only past 3e38, for outputs no image can come from: refused too).
    """
    if isinstance(values, np.ndarray):
        total = float(values.sum(dtype=np.float64))
    else:
        total = float(values.detach().sum(dtype=torch.float32))
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
    """Write a uint8 HxW or HxWx3 array (any strides) as a PNG, atomically (eval's outputs)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(tmp, format="PNG")
    return path
