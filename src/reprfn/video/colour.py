"""Frames to RGB for the model and back, with the stream's own colour matrix and range.

A YUV frame decoded with the wrong matrix shifts every colour (BT.601 read as BT.709 turns skin
orange and greens blue, about 30 levels on saturated colours), so the matrix and range are read
from the first frame, used to decode every frame, and written back unchanged: the output is
converted with the same matrix and range and tagged with them. A frame that does not say its
matrix is read the way players guess (BT.709 above 1024x576, else BT.601), and the output is then
tagged explicitly, because players guess from the size and the upscaled size would make them
guess BT.709 for what was decoded as BT.601. Primaries and transfer tags are copied as they are
(they describe the light, which upscaling does not change).
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import Interpolation

# AVColorSpace (the stream's tag) -> swscale's matrix name; others (unspecified, YCgCo) are guessed.
MATRICES = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
TAG_OF_GUESS = {"ITU709": 1, "ITU601": 6}  # BT.709, SMPTE 170M (BT.601 525 lines, FFmpeg's usual tag)
LIMITED, FULL = 1, 2  # AVColorRange: MPEG (16-235) and JPEG (0-255)
RGB_SPACE = 0  # AVCOL_SPC_RGB: what an RGB output is tagged
# bilinear chroma, with rounding as exact as swscale does it (a 1280x720 frame: about 3 ms a way)
FLAGS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND


@dataclass(frozen=True)
class Colour:
    """How a stream's frames map to RGB: ``matrix`` (swscale's name), the ``space`` and ``range``
    tags written to the output, and the ``primaries`` / ``trc`` tags copied from the input."""

    matrix: str
    space: int
    range: int
    primaries: int
    trc: int
    rgb: bool = False  # the input is RGB already (PNG or FFV1 RGB streams): no matrix to read


def guess_matrix(width: int, height: int) -> str:
    """What players assume for an untagged frame: BT.709 for HD sizes, BT.601 for SD."""
    return "ITU709" if width > 1024 or height > 576 else "ITU601"


def colour_of(frame: av.VideoFrame) -> Colour:
    """The matrix and range of ``frame`` (its tags, else the guess of ``guess_matrix``); an RGB
    input is given BT.709, limited range, for a YUV output."""
    primaries, trc = int(frame.color_primaries), int(frame.color_trc)
    if frame.format.is_rgb:
        return Colour("ITU709", 1, LIMITED, primaries, trc, rgb=True)
    space = int(frame.colorspace)
    matrix = MATRICES.get(space) or guess_matrix(frame.width, frame.height)
    full = int(frame.color_range) == FULL or frame.format.name.startswith("yuvj")
    return Colour(matrix, space if space in MATRICES else TAG_OF_GUESS[matrix], FULL if full else LIMITED,
                  primaries, trc)


def to_rgb(frame: av.VideoFrame, colour: Colour) -> np.ndarray:
    """HxWx3 uint8 RGB of ``frame``, decoded with ``colour``'s matrix and range (10-bit and deeper
    frames are rounded to 8 bits; alpha is dropped)."""
    if colour.rgb and frame.format.is_rgb:
        return frame.to_ndarray(format="rgb24")
    rgb = frame.reformat(format="rgb24", src_colorspace=colour.matrix, src_color_range=colour.range,
                         dst_color_range=FULL, interpolation=FLAGS)
    return rgb.to_ndarray()


def subsampled(pix_fmt: str) -> tuple[bool, bool]:
    """Whether ``pix_fmt`` halves chroma (width, height): such frames need even sizes."""
    fmt = av.VideoFormat(pix_fmt)
    return fmt.chroma_width(2) == 1, fmt.chroma_height(2) == 1


def even_size(height: int, width: int, pix_fmt: str) -> tuple[int, int]:
    """The encoded size of a ``height`` x ``width`` output: rounded up to even where ``pix_fmt``
    halves chroma (4:2:0 halves both, 4:2:2 the width), unchanged otherwise."""
    wide, tall = subsampled(pix_fmt)
    return height + (tall and height % 2), width + (wide and width % 2)


def from_rgb(pixels: np.ndarray, colour: Colour, pix_fmt: str) -> av.VideoFrame:
    """An encoder's frame of ``pixels`` (HxWx3 uint8) in ``pix_fmt``: converted and tagged with
    ``colour``'s matrix and range. A size that ``pix_fmt`` cannot hold (odd, with halved chroma)
    gets its last row or column repeated (``even_size``)."""
    height, width = even_size(pixels.shape[0], pixels.shape[1], pix_fmt)
    if (height, width) != pixels.shape[:2]:
        pixels = np.pad(pixels, ((0, height - pixels.shape[0]), (0, width - pixels.shape[1]), (0, 0)), mode="edge")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
    if av.VideoFormat(pix_fmt).is_rgb:
        out = frame.reformat(format=pix_fmt)
        out.colorspace = RGB_SPACE
    else:
        out = frame.reformat(format=pix_fmt, dst_colorspace=colour.matrix, src_color_range=FULL,
                             dst_color_range=colour.range, interpolation=FLAGS)
        out.colorspace, out.color_range = colour.space, colour.range
    out.color_primaries, out.color_trc = colour.primaries, colour.trc
    return out
