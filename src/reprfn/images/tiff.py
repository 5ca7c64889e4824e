"""A baseline TIFF writer: 8 or 16 bits, deflate with horizontal prediction, EXIF tags in IFD0.

Why not a library: Pillow cannot write 16-bit colour, and its compressed (libtiff) writer fails
on EXIF with sub-IFDs; tifffile (2026.3) writes 16-bit colour, alpha and ICC, but refuses the
ExifIFD and GPS pointer tags ("not writing extratag 34665"), so a photo's Exif sub-IFD
(DateTimeOriginal, exposure, GPS) would be lost. So the pixel layout is ours and the directory is
serialised by Pillow's ``TiffImagePlugin.ImageFileDirectory_v2``, which writes sub-IFDs.

Strips are compressed and written one at a time (memory: one strip): the IFD goes first with
placeholder strip offsets and sizes (fixed-size LONGs) and is written again, the same length,
once they are known.
"""

from __future__ import annotations

import os
import zlib
from typing import BinaryIO

import numpy as np
from PIL import Image, TiffImagePlugin

from .metadata import EXIF_IFD, GPS_IFD, nested_ifd
from .samples import Samples

# TIFF tags that describe the pixel layout: never copied from EXIF into a TIFF we write.
_TIFF_LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320,
    322, 323, 324, 325, 338, 339, 340, 341, 347, 513, 514, 529, 530, 531, 532, 34675,
})


def write_tiff(fp: BinaryIO, samples: Samples | np.ndarray, icc: bytes | None, exif: bytes | None, *,
               big_endian: bool = False, compress: bool = True) -> None:
    """Write ``samples`` (uint8 or uint16, 1..4 channels, alpha unassociated) to a seekable ``fp``."""
    if isinstance(samples, np.ndarray):
        samples = Samples(samples)
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
        rows = samples.rows(y0, y1, order)
        if compress:
            rows[:, 1:] -= rows[:, :-1].copy()
        data = zlib.compress(rows.tobytes(), 6) if compress else rows.tobytes()
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
            if tag in (EXIF_IFD, GPS_IFD):
                value = nested_ifd(parsed, tag)
                if not value:
                    continue
            if _tiff_serialisable(tag, value):
                tags[tag] = value
        return tags
    except Exception:  # EXIF we cannot follow is left out rather than failing the write
        return {}


def _tiff_serialisable(tag: int, value: object) -> bool:
    """Whether Pillow can write this tag, so one odd EXIF value never fails a whole write."""
    probe = TiffImagePlugin.ImageFileDirectory_v2()
    try:
        probe[tag] = value
        probe.tobytes()
    except Exception:
        return False
    return True
