"""Image files in and out: decoding to uint8 arrays, and the array <-> tensor conventions.

Arrays are ``uint8`` HxWx3 (RGB) or HxW (greyscale) on 0..255; tensors are float
``(1, C, H, W)`` in ``[0, 1]``. Every decoding failure is an ``ImageError`` whose one-line
message names the file, so callers can report it and move on to the next file.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA", "La")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class ImageError(ValueError):
    """A file that cannot be used as an image; the message is one line naming the file."""


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


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Float (1, C, H, W) or (C, H, W) tensor in [0, 1] -> uint8 HxWxC (HxW when C is 1).

    Clamped, scaled by 255 and rounded: the 8-bit output every SR benchmark measures.
    """
    t = tensor.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
        t = t[0]
    arr = t.float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy().transpose(1, 2, 0)
    return np.ascontiguousarray(arr[..., 0] if arr.shape[2] == 1 else arr)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename.

    Readers never see a half-written file, and a failure leaves any old file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_png(img: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 HxW or HxWx3 array as a PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(tmp, format="PNG")
    return path
