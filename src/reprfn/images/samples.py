"""Pixel samples as writers take them: colour and alpha interleaved a block of rows at a time.

Interleaving a whole picture first would copy the largest array of an upscale once more, and the
pipeline hands over views (channel slices, flips, transposes). These helpers make each block a new
C-contiguous array in the dtype and byte order a format wants, whatever the strides given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK_BYTES = 1 << 18  # writers and converters work a block of rows of about this size at a time


def round_to_8bit(arr: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 by rounding x / 257 (65535 -> 255, 257 -> 1); uint8 passes through.

    A block of rows at a time, so the uint32 arithmetic never holds a copy of a whole picture.
    """
    if arr.dtype == np.uint8:
        return arr
    out = np.empty(arr.shape, np.uint8)
    rows = max(1, BLOCK_BYTES // max(1, arr[:1].size * 4))
    for y in range(0, arr.shape[0], rows):
        out[y:y + rows] = (arr[y:y + rows].astype(np.uint32) * 2 + 257) // 514
    return out


@dataclass(frozen=True)
class Samples:
    """Colour (HxW or HxWxC) and an optional HxW alpha seen as HxWxC' samples, alpha last."""

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

    def blocks(self, block_bytes: int = BLOCK_BYTES) -> list[tuple[int, int]]:
        """(start, stop) row ranges of about ``block_bytes`` each, covering the picture."""
        h, w, c = self.shape
        n = max(1, block_bytes // (w * c * self.dtype.itemsize))
        return [(y, min(y + n, h)) for y in range(0, h, n)]


def interleave(pixels: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """HxW[x3] + HxW alpha -> one C-contiguous HxWxC array, C in 1..4 (for Pillow).

    Contiguous pixels without alpha are returned as they are (a view), not copied.
    """
    if alpha is None and pixels.flags.c_contiguous:
        return pixels[..., None] if pixels.ndim == 2 else pixels
    return Samples(pixels, alpha).rows(0, pixels.shape[0])
