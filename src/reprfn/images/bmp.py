"""A 32-bit BMP writer with an explicit alpha mask (BITMAPV4HEADER, BI_BITFIELDS).

Pillow writes RGBA as a plain 32-bit BI_RGB BMP whose fourth byte readers ignore: Pillow itself
(checked with 13.0) reads such a file back as RGB, so the alpha would be lost. BMP holds no ICC
profile or EXIF here. Rows are stored bottom-up, so the blocks are written last first.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from .samples import Samples


def write_bmp_rgba(fp: BinaryIO, samples: Samples) -> None:
    """Write 8-bit RGBA ``samples`` to ``fp`` as a bottom-up BGRA BMP with an alpha mask."""
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
