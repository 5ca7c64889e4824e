"""What a picture carries besides its pixels: EXIF (orientation applied, then reset), ICC profiles.

The orientation is applied to the pixels once, on load, and the kept EXIF says 1, so an output is
never rotated twice. The EXIF is written back byte for byte where possible (maker notes and other
offset-sensitive data survive); a TIFF source keeps the photo tags of its first IFD, not the tags
that describe its own pixel layout.
"""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

EXIF_PREFIX = b"Exif\x00\x00"
ORIENTATION = 0x0112
EXIF_IFD, GPS_IFD, INTEROP_IFD = 0x8769, 0x8825, 0xA005
# IFD0 tags of a TIFF source that are photo metadata (EXIF), not the file's own pixel layout.
_TIFF_METADATA_TAGS = (270, 271, 272, 274, 282, 283, 296, 305, 306, 315, 316, 33432, EXIF_IFD, GPS_IFD)


def read_exif(im: Image.Image) -> Image.Exif | None:
    """Pillow's view of the EXIF, as ImageOps.exif_transpose reads it; None when unreadable."""
    try:
        return im.getexif()
    except Exception:  # unreadable EXIF: treat the photo as having none
        return None


def exif_orientation(exif_obj: Image.Exif | None) -> int:
    """The EXIF orientation 1..8 still to apply to the decoded pixels (1 for anything else)."""
    value = exif_obj.get(ORIENTATION, 1) if exif_obj is not None else 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def kept_exif(im: Image.Image, exif_obj: Image.Exif | None, tagged: bool) -> bytes | None:
    """The EXIF bytes to write back, orientation reset to 1; the original bytes where possible.

    ``tagged``: the file had an orientation tag (Pillow may since have removed it).
    """
    if exif_obj is None:
        return None
    raw = im.info.get("exif")
    if isinstance(raw, bytes) and raw:
        raw = raw if raw.startswith(EXIF_PREFIX) else EXIF_PREFIX + raw
        patched = patch_orientation(raw)
        if patched is not None:
            return patched
    elif im.format == "TIFF":
        exif_obj = _tiff_metadata(exif_obj)
    elif "Raw profile type exif" not in im.info:  # no EXIF, at most an XMP orientation
        return None
    try:
        if tagged or ORIENTATION in exif_obj:
            exif_obj[ORIENTATION] = 1
        return exif_obj.tobytes() if len(exif_obj) else None
    except Exception:
        return None


def _tiff_metadata(exif_obj: Image.Exif) -> Image.Exif:
    """The photo metadata of a TIFF's first IFD, without the tags describing its pixel layout."""
    out = Image.Exif()
    for tag in _TIFF_METADATA_TAGS:
        if tag in (EXIF_IFD, GPS_IFD):
            sub = exif_obj.get_ifd(tag)
            if sub:
                out[tag] = nested_ifd(exif_obj, tag)
        elif tag in exif_obj:
            out[tag] = exif_obj[tag]
    return out


def nested_ifd(exif_obj: Image.Exif, tag: int) -> dict:
    """A sub-IFD as a dict, its own Interop pointer (an offset) replaced by that IFD's content."""
    sub = dict(exif_obj.get_ifd(tag))
    if INTEROP_IFD in sub and not isinstance(sub[INTEROP_IFD], dict):
        interop = exif_obj.get_ifd(INTEROP_IFD)
        if interop:
            sub[INTEROP_IFD] = dict(interop)
        else:
            del sub[INTEROP_IFD]
    return sub


def patch_orientation(exif: bytes) -> bytes | None:
    """Set the orientation entry of IFD0 to 1 in place, keeping every other byte as it was.

    Rewriting in place keeps maker notes and other offset-sensitive data intact. Bytes without an
    orientation entry come back unchanged; None means they could not be followed (or the entry is
    not the standard one SHORT), so the caller must re-serialise.
    """
    body = exif[len(EXIF_PREFIX):]
    order = {b"II": "<", b"MM": ">"}.get(body[:2])
    if order is None:
        return None
    try:
        (ifd,) = struct.unpack_from(order + "I", body, 4)
        (count,) = struct.unpack_from(order + "H", body, ifd)
        for i in range(count):
            entry = ifd + 2 + 12 * i
            tag, kind, n = struct.unpack_from(order + "HHI", body, entry)
            if tag == ORIENTATION:
                if kind != 3 or n != 1:
                    return None
                value = struct.pack(order + "H", 1)
                return EXIF_PREFIX + body[:entry + 8] + value + body[entry + 10:]
    except struct.error:
        return None
    return exif


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
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


def icc_space(icc: bytes | None) -> bytes | None:
    """The colour space signature of an ICC profile (b"RGB ", b"GRAY", b"CMYK"...), or None."""
    if icc and len(icc) >= 40 and icc[36:40] == b"acsp":
        return icc[16:20]
    return None


def icc_fits(icc: bytes | None, pixels: np.ndarray) -> bool:
    """False for a profile of another colour space than the pixels (e.g. a GRAY one on RGB)."""
    if not icc:
        return False
    space = icc_space(icc)
    return space is None or space == (b"GRAY" if pixels.ndim == 2 else b"RGB ")
