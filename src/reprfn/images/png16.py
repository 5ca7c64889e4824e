"""A PNG writer of our own: 8 or 16 bits, grey, grey+alpha, RGB, RGBA, a block of rows at a time.

Pillow cannot write 16-bit RGB or RGBA PNG (it has no 16-bit colour mode, up to 13.0 at least), and
for 8 bits it would first copy the whole picture into an image of its own (4 bytes per RGB pixel):
the largest array of an upscale, once more. This writer filters and compresses a block of rows at
a time from arrays of any strides. It is checked against a decoder written from the PNG
specification in tests/test_hostile_images.py, and against Pillow.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

from .metadata import EXIF_PREFIX
from .samples import BLOCK_BYTES, Samples


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
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


def write_png16(fp: BinaryIO, samples: Samples, icc: bytes | None, exif: bytes | None, *,
                block_bytes: int = BLOCK_BYTES) -> None:
    """Write ``samples`` (uint8 or uint16, 1..4 channels) to ``fp`` as a non-interlaced PNG.

    The ICC profile goes in iCCP, the EXIF (with or without its ``Exif\\0\\0`` prefix) in eXIf.
    Rows are filtered, compressed and written ``block_bytes`` of samples at a time.
    """
    h, w, c = samples.shape
    size = samples.dtype.itemsize
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    ihdr = struct.pack(">IIBBBBB", w, h, 8 * size, colour_type, 0, 0, 0)  # no interlacing
    fp.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr))
    if icc:
        fp.write(png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    if exif:
        fp.write(png_chunk(b"eXIf", exif[len(EXIF_PREFIX):] if exif.startswith(EXIF_PREFIX) else exif))
    compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 8, zlib.Z_FILTERED)  # as libpng and Pillow
    above = np.zeros(w * c * size, np.uint8)
    pending = b""
    for start, stop in samples.blocks(block_bytes):
        data = samples.rows(start, stop, samples.dtype.newbyteorder(">")).view(np.uint8).reshape(stop - start, -1)
        pending += compressor.compress(_png_filter(data, above, c * size))
        above = data[-1].copy()
        if len(pending) >= 1 << 18:
            fp.write(png_chunk(b"IDAT", pending))
            pending = b""
    fp.write(png_chunk(b"IDAT", pending + compressor.flush()))
    fp.write(png_chunk(b"IEND", b""))
