"""16-bit colour decoding: the one place that uses a private part of Pillow (``Image.tile``).

Pillow has no 16-bit colour mode (checked up to Pillow 13.0: ``Image.MODES`` holds 16-bit
greyscale only). It opens a 16-bit RGB or RGBA PNG or TIFF as 8-bit RGB(A), keeping the high byte
of each sample, and no public call gives the low byte. Decoding the same file a second time with
the opposite byte order in the tile's rawmode yields the low bytes through the same C decoder
(PNG filters, interlacing, TIFF compression all handled), so the 16 bits come back exactly.

The private parts used: ``im.tile`` (a list of ``(codec, extents, offset, args)``, ``args`` a
rawmode or a tuple starting with one) and that assigning it before ``load()`` changes the unpacker.
tests/test_images.py checks both against the installed Pillow, and fails if Pillow stops needing
this (a 16-bit colour mode) or changes the tile layout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFile


def tile_rawmode(im: Image.Image) -> str | None:
    """The rawmode Pillow will decode the file's samples with: it tells the file's bit depth.

    Call before ``load()``, which empties ``im.tile``.
    """
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
    other byte); the opposite byte order takes the others. "LA;16B" (16-bit grey+alpha PNG) is
    decoded once as 4 raw bytes per pixel instead.
    """
    table: dict[str, tuple[str, bool, bool]] = {}
    for base, alpha in (("RGB", False), ("RGBX", False), ("RGBA", True)):
        for order in "BLN":
            low = "L" if _native(order) == "B" else "B"
            table[f"{base};16{order}"] = (f"{base};16{low}", alpha, False)
    table["LA;16B"] = ("RGBA", True, True)
    return table


WIDE_RAWMODES = _wide_rawmodes()


def _with_rawmode(tile: ImageFile._Tile, rawmode: str) -> ImageFile._Tile:
    args = tile[3]
    args = (rawmode, *args[1:]) if isinstance(args, tuple) else rawmode
    if hasattr(tile, "_replace"):  # a named tuple (recent Pillow)
        return tile._replace(args=args)
    return (*tile[:3], args)  # type: ignore[return-value]  # a plain tuple (older Pillow)


def _decode_with_rawmode(reopen: Callable[[], Image.Image], rawmode: str) -> np.ndarray:
    """Decode the file again, telling Pillow to unpack its samples with ``rawmode``."""
    with reopen() as im:
        im.tile = [_with_rawmode(t, rawmode) for t in im.tile]
        im.load()
        return np.asarray(im)


def decode_wide(reopen: Callable[[], Image.Image], im: Image.Image,
                rawmode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """16-bit colour (RGB, RGBA, grey+alpha) -> uint16 pixels and alpha (None for RGB).

    ``im`` is the file decoded by Pillow (high bytes), ``rawmode`` its tile's rawmode before it
    was loaded (a key of ``WIDE_RAWMODES``); ``reopen()`` opens the same file again, unloaded.
    """
    low_rawmode, has_alpha, grey = WIDE_RAWMODES[rawmode]
    low = _decode_with_rawmode(reopen, low_rawmode)
    if grey:  # raw bytes per pixel: L high, L low, A high, A low
        wide = (low[..., 0::2].astype(np.uint16) << 8) | low[..., 1::2]
        return wide[..., 0], wide[..., 1]
    high = np.asarray(im)
    if high.shape != low.shape:
        raise ValueError("16-bit decode gave inconsistent planes")
    wide = (high.astype(np.uint16) << 8) | low
    return wide[..., :3], (wide[..., 3] if has_alpha else None)
