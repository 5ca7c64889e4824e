"""Decode -> upscale -> encode, one frame at a time, with the other streams copied alongside.

Memory is bounded whatever the length: one decoded frame, a few upscaled ones waiting for the
encoder (``Serial``), and what the encoder keeps for its own look-ahead (x264: about 40 frames at
the output size) are held at a time; audio and subtitle packets are muxed as they are read
(FFmpeg's interleaving buffer orders them), except for the few read before the first frame is
decoded, which wait until the encoder is set up.

The output side (YUV conversion, encoding, muxing) runs on one thread of its own, in order, while
the model upscales the next frame: at 720p it takes about a third of the time per frame. With a
core to spare (the model on one thread of two cores) video ran at 0.89x the frames/s of the
image path instead of 0.69x; with the model on every core, level (0.74x vs 0.73x).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.container import InputContainer, OutputContainer

from ..errors import VideoError
from .colour import Colour, colour_of, even_size, from_rgb, to_rgb
from .streams import (
    add_copies,
    add_video,
    check_codec,
    check_copies,
    configure,
    copied_streams,
    copy_metadata,
    frame_rate,
    open_input,
    reading,
    video_stream,
    writing,
)

Upscaler = Callable[[np.ndarray], np.ndarray]  # HxWx3 uint8 -> (sH)x(sW)x3 uint8
SizeCheck = Callable[[int, int], None]  # (width, height) of the frames: raises if they cannot be upscaled
# Formats whose header states a duration the packets must reach (else the file was cut short).
EXACT_DURATION = ("matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2")


class Serial:
    """Calls run on one worker thread in the order given; at most ``depth`` wait at a time (the
    caller waits for the oldest beyond that), and the first failure is raised in the caller."""

    def __init__(self, depth: int = 2) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reprfn-encode")
        self.pending: deque[Future] = deque()
        self.depth = depth

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > self.depth:
            self.pending.popleft().result()

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        """Drop what has not started, wait for what runs: nothing touches the output after this."""
        for future in self.pending:
            future.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True)


@dataclass
class Encoder:
    """The output side: the muxer, its video stream once configured, and what waits for it."""

    out: OutputContainer
    video: av.VideoStream
    dst: Path
    pix_fmt: str
    crf: int
    scale: int
    check: SizeCheck = lambda width, height: None
    colour: Colour | None = None
    size: tuple[int, int] | None = None  # the input frames' (height, width)
    last_pts: int | None = None
    waiting: list[av.Packet] = field(default_factory=list)
    serial: Serial = field(default_factory=Serial)  # the output side's own thread

    def mux(self, packets: list[av.Packet]) -> None:
        with writing(self.dst):
            for p in packets:
                self.out.mux(p)

    def copy(self, packet: av.Packet, stream: av.stream.Stream) -> None:
        """A packet of a copied stream: into its output stream (timestamps rescaled by the muxer)."""
        packet.stream = stream
        if self.colour is None:
            self.waiting.append(packet)
        else:
            self.serial.submit(self.mux, [packet])

    def write(self, frame: av.VideoFrame, vin: av.VideoStream, src: Path, upscale: Upscaler) -> None:
        """Upscale one decoded frame and encode it with the input's timestamp and duration."""
        rgb = to_rgb(frame, self._setup(frame, vin))
        if self.size is not None and rgb.shape[:2] != self.size:
            raise VideoError(f"{src}: the frame size changes from {self.size[1]}x{self.size[0]} to "
                             f"{rgb.shape[1]}x{rgb.shape[0]} within the video; not supported")
        self.serial.submit(self._encode, upscale(rgb), self._pts(frame.pts, vin), vin.time_base, frame.duration)

    def _encode(self, rgb: np.ndarray, pts: int, time_base: Fraction, duration: int | None) -> None:
        """On the output side's thread: to the output's YUV, encoded, muxed."""
        assert self.colour is not None
        out = from_rgb(rgb, self.colour, self.pix_fmt)
        out.pts, out.time_base = pts, time_base
        if duration is not None:
            out.duration = duration
        self.mux(self.video.encode(out))

    def _setup(self, frame: av.VideoFrame, vin: av.VideoStream) -> Colour:
        """On the first frame: the colour, the output size and the encoder; then the packets that
        waited for it."""
        if self.colour is None:
            self.check(frame.width, frame.height)
            self.size = (frame.height, frame.width)
            colour = colour_of(frame)
            out_size = even_size(frame.height * self.scale, frame.width * self.scale, self.pix_fmt)
            with writing(self.dst):
                configure(self.video, vin, frame, out_size, self.pix_fmt, colour, self.crf)
            self.colour = colour
            self.mux(self.waiting)
            self.waiting = []
        return self.colour

    def _pts(self, pts: int | None, vin: av.VideoStream) -> int:
        """The input's timestamp (variable frame rates too); a missing or repeated one (raw
        streams, broken files) becomes one frame after the last, since encoders need increasing
        timestamps."""
        if pts is None or (self.last_pts is not None and pts <= self.last_pts):
            step = max(1, round(1 / (frame_rate(vin) * vin.time_base))) if vin.time_base else 1
            pts = 0 if self.last_pts is None else self.last_pts + (step if pts is None else 1)
        self.last_pts = pts
        return pts

    def finish(self) -> None:
        self.serial.drain()
        with writing(self.dst):
            self.mux(self.video.encode(None))


@dataclass
class Counts:
    """What was read: video packets and frames, and the latest end time of any packet (seconds).

    A packet that does not state its duration (Matroska's audio blocks often do not) is taken to
    last as long as the gap from the previous packet of its stream (one frame at the video's rate
    for the first), so that a complete file is never taken for a cut one."""

    interval: Fraction  # one frame at the video's rate
    packets: int = 0
    frames: int = 0
    end: Fraction = Fraction(0)
    first: Fraction | None = None  # the earliest start (before 0 with an audio encoder's delay)
    last: dict[int, tuple[Fraction, Fraction]] = field(default_factory=dict)  # stream -> (start, gap)

    def packet(self, packet: av.Packet, video: bool) -> None:
        self.packets += video
        if packet.pts is None or not packet.time_base:
            return
        start = packet.pts * packet.time_base
        before, gap = self.last.get(packet.stream.index, (None, self.interval))
        gap = start - before if before is not None and start > before else gap
        self.last[packet.stream.index] = (start, gap)
        self.first = start if self.first is None else min(self.first, start)
        self.end = max(self.end, start + (packet.duration * packet.time_base if packet.duration else gap))


def transcode(src: Path, tmp: Path, dst: Path, container: str, codec: str, pix_fmt: str, crf: int, scale: int,
              upscale: Upscaler, bar: Callable[[InputContainer, av.VideoStream], Callable[[], object]],
              check: SizeCheck = lambda width, height: None) -> int:
    """Upscale the video stream of ``src`` into ``tmp`` (muxer ``container``; ``dst`` is the name
    errors give), copying audio and subtitles; return the number of frames. ``bar(inp, stream)``
    gives the function called after each frame; ``check(width, height)`` refuses a frame size,
    before anything is decoded (the header's size) and on the first frame."""
    with open_input(src) as inp:
        vin = video_stream(inp, src)
        if vin.codec_context.width and vin.codec_context.height:
            check(vin.codec_context.width, vin.codec_context.height)
        copies = copied_streams(inp)
        options = {"movflags": "+faststart"} if container in ("mp4", "mov") else {}
        with writing(dst), av.open(str(tmp), "w", format=container, options=options) as out:
            check_codec(out, codec, dst)
            check_copies(copies, out, src, dst)
            enc = Encoder(out, add_video(out, vin, codec), dst, pix_fmt, crf, scale, check)
            try:
                mapped = add_copies(out, copies)
                copy_metadata(inp, out)
                counts = _run(inp, vin, mapped, enc, src, upscale, bar(inp, vin))
                _check_complete(inp, vin, counts, src)
                enc.finish()
            finally:
                enc.serial.close()  # before the output is closed, on any exit (Ctrl-C included)
    return counts.frames


def _run(inp: InputContainer, vin: av.VideoStream, mapped: dict[int, av.stream.Stream], enc: Encoder,
         src: Path, upscale: Upscaler, tick: Callable[[], object]) -> Counts:
    counts = Counts(1 / frame_rate(vin))
    demuxed = inp.demux()  # every stream, so that the end of the longest is known (``_check_complete``)
    while True:
        with reading(src):
            packet = next(demuxed, None)
            if packet is None:
                frames = vin.decode(None)  # the decoder's last frames
            elif packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            elif packet.stream.index != vin.index:
                counts.packet(packet, video=False)
                if packet.stream.index in mapped and packet.dts is not None:  # FFmpeg's remuxing drops those too
                    enc.copy(packet, mapped[packet.stream.index])
                continue
            else:
                if packet.is_corrupt:
                    raise VideoError(f"{src}: corrupt or truncated video (a damaged packet at "
                                     f"{float(packet.pts * packet.time_base) if packet.pts is not None else '?'} s); "
                                     "nothing written")
                counts.packet(packet, video=True)
                frames = vin.decode(packet)
        for frame in frames:
            enc.write(frame, vin, src, upscale)
            counts.frames += 1
            tick()
        if packet is None:
            return counts


def _check_complete(inp: InputContainer, vin: av.VideoStream, counts: Counts, src: Path) -> None:
    """Refuse an input that decoded without error but is shorter than its header says (a cut
    file): fewer video packets than an MP4 counts, or packets that cover less than a Matroska or
    MP4 duration by more than half a second (leeway for durations estimated, or counted from an
    audio encoder's delay). Without this a truncated file would give a shorter video and exit
    status 0."""
    if counts.frames == 0:
        raise VideoError(f"{src}: no frame of its video could be decoded (corrupt or truncated); nothing written")
    if vin.frames and counts.packets < vin.frames:
        raise VideoError(f"{src}: truncated: {counts.packets} of the {vin.frames} video frames its header "
                         "counts are in the file; nothing written")
    if inp.format.name in EXACT_DURATION and inp.duration:
        start = Fraction(inp.start_time or 0, av.time_base)
        stated = Fraction(inp.duration, av.time_base)
        covered = counts.end - min(start, start if counts.first is None else counts.first)
        if covered < stated - max(2 * counts.interval, Fraction(1, 2)):
            raise VideoError(f"{src}: truncated: its packets cover {float(covered):.2f} s, but its header "
                             f"says {float(stated):.2f} s; nothing written")
