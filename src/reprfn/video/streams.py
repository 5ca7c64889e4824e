"""The containers and streams of a video upscale: what is read, what is copied, how the encoder is set.

Every FFmpeg failure is turned into one ``VideoError`` line that names the file (``reading`` for
the input, ``writing`` for the output): PyAV's own errors never reach the user.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.container import InputContainer, OutputContainer
from av.stream import Disposition

from ..errors import UsageError, VideoError
from .colour import Colour

# Codecs with a constant-quality knob named crf (FFmpeg's private option); others keep their defaults.
CRF_CODECS = ("libx264", "libx264rgb", "libx265", "libvpx", "libvpx-vp9", "libsvtav1", "libaom-av1")
# If the default is missing from the FFmpeg PyAV was built with: H.264 by another encoder, else MPEG-4.
FALLBACKS = ("libx264", "libopenh264", "mpeg4")
STREAM_TAGS = ("language", "title", "handler_name")  # per-stream metadata worth keeping; not stale statistics
DROPPED_TAGS = ("major_brand", "minor_version", "compatible_brands", "encoder")  # the new file's own


def _why(exc: Exception) -> str:
    """FFmpeg's reason, without PyAV's errno and path decoration."""
    return str(getattr(exc, "strerror", None) or exc).strip().rstrip(".").lower() or type(exc).__name__


@contextmanager
def reading(src: Path) -> Iterator[None]:
    """Demuxing and decoding ``src``: an FFmpeg failure is a corrupt or truncated input."""
    try:
        yield
    except av.FFmpegError as exc:
        raise VideoError(f"{src}: corrupt or truncated video ({_why(exc)}); nothing written") from None


@contextmanager
def writing(dst: Path) -> Iterator[None]:
    """Encoding and muxing into ``dst``: an FFmpeg failure names the output."""
    try:
        yield
    except av.FFmpegError as exc:
        raise VideoError(f"{dst}: cannot write the video ({_why(exc)}); nothing written") from None


def open_input(src: Path) -> InputContainer:
    """``src`` opened for reading; anything FFmpeg cannot open is one line."""
    try:
        return av.open(str(src), metadata_errors="replace")
    except av.FFmpegError as exc:
        if isinstance(exc, FileNotFoundError):
            raise VideoError(f"{src}: no such file") from None
        raise VideoError(f"{src}: not a video FFmpeg can read, or corrupt ({_why(exc)})") from None


IMAGE_DEMUXERS = {"png_pipe": ".png", "jpeg_pipe": ".jpg", "webp_pipe": ".webp", "bmp_pipe": ".bmp",
                  "tiff_pipe": ".tif"}
"""FFmpeg's readers of a single still image: a file they open is a photo under a video's name."""


def video_stream(inp: InputContainer, src: Path) -> av.VideoStream:
    """The video stream to upscale: the first that is not cover art (an attached picture). A
    still image under a video's name (``photo.png`` renamed ``photo.mp4``) is refused: upscaled,
    it would become a one-frame video, not the image its owner meant."""
    suffix = IMAGE_DEMUXERS.get(inp.format.name)
    if suffix is not None:
        raise VideoError(f"{src}: a still image ({inp.format.name.removesuffix('_pipe').upper()}), not a video; "
                         f"rename it to {suffix} to upscale it as an image")
    streams = [s for s in inp.streams.video if not s.disposition & Disposition.attached_pic]
    if not streams:
        kinds = ", ".join(sorted({str(s.type) for s in inp.streams})) or "no streams at all"
        raise VideoError(f"{src}: no video stream to upscale (it holds {kinds})")
    stream = streams[0]
    stream.thread_type = "AUTO"
    return stream


def copied_streams(inp: InputContainer) -> list[av.stream.Stream]:
    """Audio and subtitle streams: copied packet by packet, untouched (data streams and other
    video streams, such as cover art, are left out)."""
    return [s for s in inp.streams if s.type in ("audio", "subtitle")]


def check_copies(copies: list[av.stream.Stream], out: OutputContainer, src: Path, dst: Path) -> None:
    """Refuse, before any work, a stream ``dst``'s container cannot hold (Vorbis in MP4, SubRip in MP4)."""
    for s in copies:
        name = s.codec_context.codec.canonical_name if s.codec_context is not None else "unknown"
        if name not in out.supported_codecs:
            hint = src.suffix.lower() if src.suffix.lower() in (".mkv", ".mp4", ".mov") else ".mkv"
            raise VideoError(f"{src}: its {s.type} stream #{s.index} ({name}) cannot be copied into a "
                             f"{dst.suffix.lower()} file; write a {hint} file instead")


def check_codec(out: OutputContainer, codec: str, dst: Path) -> None:
    """Refuse, before any frame, an encoder whose video ``dst``'s container cannot hold (H.264 in
    WebM, PNG in Matroska), naming the containers that can."""
    from .paths import CONTAINERS

    name = av.codec.Codec(codec, "w").canonical_name
    if name in out.supported_codecs:
        return
    able = [suffix for suffix, fmt in CONTAINERS.items() if _holds(fmt, name)]
    where = f"write a {' or '.join(able)} file" if able else "choose another --codec"
    hint = " or pass --codec libvpx-vp9 (WebM holds VP9 and AV1 only)" if dst.suffix.lower() == ".webm" else ""
    raise UsageError(f"{dst}: a {dst.suffix.lower()} file cannot hold {codec} video; {where}{hint}")


def _holds(fmt: str, codec: str) -> bool:
    with av.open(io.BytesIO(), "w", format=fmt) as probe:
        return codec in probe.supported_codecs


def pick_codec(name: str, default: str = "libx264") -> str:
    """``name`` if this FFmpeg has its encoder; for the default a fallback, said in a warning."""
    available = set(av.codecs_available)
    if name in available and _encodes(name):
        return name
    if name != default:
        raise UsageError(f"--codec {name}: no such video encoder in PyAV's FFmpeg (try libx264, libx265, "
                         "libvpx-vp9, libsvtav1, ffv1)")
    for fallback in FALLBACKS:
        if fallback in available and _encodes(fallback):
            warnings.warn(f"{default} is not in PyAV's FFmpeg: writing {fallback} instead", stacklevel=3)
            return fallback
    raise UsageError("PyAV's FFmpeg has no H.264 or MPEG-4 encoder: name one with --codec")


def _encodes(name: str) -> bool:
    try:
        return av.codec.Codec(name, "w").type == "video"
    except (ValueError, av.FFmpegError):
        return False


def output_pix_fmt(codec: str, pix_fmt: str | None) -> str:
    """yuv420p (what every player plays) where ``codec`` takes it, else its first format; a
    ``pix_fmt`` given must be one ``codec`` takes."""
    formats = [f.name for f in av.codec.Codec(codec, "w").video_formats or []]
    if pix_fmt is None:
        return "yuv420p" if "yuv420p" in formats or not formats else formats[0]
    if formats and pix_fmt not in formats:
        raise UsageError(f"pix_fmt {pix_fmt!r}: {codec} takes {', '.join(formats)}")
    return pix_fmt


def frame_rate(stream: av.VideoStream) -> Fraction:
    """The stream's frame rate for the encoder's rate control (the timestamps themselves are copied)."""
    return Fraction(stream.average_rate or stream.guessed_rate or stream.base_rate or 25)


def add_video(out: OutputContainer, vin: av.VideoStream, codec: str) -> av.VideoStream:
    """The output video stream, first in the file; configured on the first frame (``configure``)."""
    ovs = out.add_stream(codec, rate=frame_rate(vin))
    assert isinstance(ovs, av.VideoStream) and vin.time_base is not None
    ovs.time_base = vin.time_base
    ovs.codec_context.time_base = vin.time_base
    _copy_tags(vin, ovs)
    return ovs


def configure(ovs: av.VideoStream, vin: av.VideoStream, first: av.VideoFrame, size: tuple[int, int],
              pix_fmt: str, colour: Colour, crf: int) -> None:
    """Size, format, colour tags, quality, aspect and rotation of the encoder, from the first frame,
    before anything is written (the file's header is written with the first packet)."""
    cc = ovs.codec_context
    cc.height, cc.width = size
    cc.pix_fmt = pix_fmt
    rgb = av.VideoFormat(pix_fmt).is_rgb
    cc.colorspace = 0 if rgb else colour.space
    cc.color_range = colour.range if not rgb else 2
    cc.color_primaries, cc.color_trc = colour.primaries, colour.trc
    if vin.sample_aspect_ratio:
        cc.sample_aspect_ratio = Fraction(vin.sample_aspect_ratio)
    if cc.name in CRF_CODECS:
        cc.bit_rate = 0
        cc.options = {"crf": str(crf), **({"b": "0"} if cc.name.startswith("libvpx") else {})}
    elif cc.name == "mpeg4":  # constant quantizer 3: the fallback should not be FFmpeg's 200 kb/s default
        cc.qscale = True
        cc.global_quality = 3 * 118  # FF_QP2LAMBDA
    matrix = display_matrix(first)
    if matrix is not None:
        ovs.set_display_matrix(matrix)


def display_matrix(frame: av.VideoFrame) -> list[int] | None:
    """The frame's display matrix (rotation and flips, from the container's ``rotate`` tag or its
    display-matrix side data): carried to the output as it is; the pixels are never rotated."""
    data = frame.side_data.get("DISPLAYMATRIX")
    if data is None:
        return None
    return np.frombuffer(memoryview(data), dtype=np.int32)[:9].tolist()  # type: ignore[arg-type]


def add_copies(out: OutputContainer, copies: list[av.stream.Stream]) -> dict[int, av.stream.Stream]:
    """An output stream for each stream copied, from the input's as a template; by input index."""
    mapped = {}
    for s in copies:
        o = out.add_stream_from_template(s)
        _copy_tags(s, o)
        o.disposition = s.disposition
        mapped[s.index] = o
    return mapped


def copy_metadata(inp: InputContainer, out: OutputContainer) -> None:
    """The file's own tags (title, date, ...); not the brand and encoder tags of the old file."""
    out.metadata.update({k: v for k, v in inp.metadata.items() if k not in DROPPED_TAGS})


def _copy_tags(src: av.stream.Stream, dst: av.stream.Stream) -> None:
    dst.metadata.update({k: v for k, v in src.metadata.items() if k in STREAM_TAGS})


def expected_frames(inp: InputContainer, vin: av.VideoStream) -> int | None:
    """Frames the container announces (exact in MP4 and MOV), else its duration times the rate:
    the progress bar's total; None when neither is known."""
    if vin.frames:
        return int(vin.frames)
    if vin.duration and vin.time_base:
        return round(vin.duration * vin.time_base * frame_rate(vin))
    if inp.duration:
        return round(Fraction(inp.duration, av.time_base) * frame_rate(vin))
    return None
