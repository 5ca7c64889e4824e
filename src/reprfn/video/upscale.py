"""``reprfn.upscale_video``: a video file in, its upscaled video out, audio and subtitles copied."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import ReprfnError, ResourceError, UsageError
from ..files import atomic_path, check_writable
from ..outputs import refuse_collisions
from ..runtime.hardware import PrecisionChoice
from ..runtime.memory import DEFAULT_PAD
from ..runtime.prepare import Backend
from .paths import container_of

if TYPE_CHECKING:
    import numpy as np

    from ..api import ModelLike

INSTALL = 'pip install "reprfn[video]"'
# Bytes the output side holds per output pixel besides the model's run: the upscaled RGB frames
# waiting for the encoder (two in ``pipeline.Serial`` and one converting, 3 bytes a pixel) and
# x264's look-ahead (about 40 frames of 4:2:0, 1.5 bytes a pixel).
ENCODER_BYTES_PER_PIXEL = 3 * 3 + 60
MAX_CRF = 63  # the largest any codec with a crf takes (VP9 and AV1)
# Lower ceilings: x264 and x265 clamp a larger crf to 51 without a word, so it is refused here.
CODEC_MAX_CRF = {"libx264": 51, "libx264rgb": 51, "libx265": 51}
# Higher floors: SVT-AV1 reads crf 0 as "not set" and encodes at its default (35) without a word.
CODEC_MIN_CRF = {"libsvtav1": 1}
# FFmpeg's format names that pick an encoder (``--codec h264`` is libx264): resolved by PyAV when
# it is there; these are its choices in the PyPI wheels, for the check before PyAV is imported.
CODEC_ALIASES = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"}


def encoder_name(codec: str | None) -> str:
    """The encoder ``codec`` names (``h264`` -> ``libx264``), so that the limits of an encoder apply
    whatever name it is asked by; ``codec`` itself when PyAV does not know it."""
    codec = codec or ""
    try:
        import av

        return str(av.codec.Codec(codec, "w").name)
    except Exception:  # no PyAV, or no such encoder (refused later, by ``pick_codec``)
        return CODEC_ALIASES.get(codec, codec)


def check_crf(crf: object, name: str = "crf", codec: str | None = None) -> int:
    """A whole number in 0..63, or 0..51 for x264 and x265 and 1..63 for SVT-AV1, whatever name
    ``codec`` gives them (PyAV not needed: the command line checks it before the batch)."""
    if not isinstance(crf, int) or isinstance(crf, bool) or not 0 <= crf <= MAX_CRF:
        raise UsageError(f"{name} must be a whole number from 0 (lossless with x264) to {MAX_CRF}, got {crf!r}")
    encoder = encoder_name(codec)
    low, top = CODEC_MIN_CRF.get(encoder, 0), CODEC_MAX_CRF.get(encoder, MAX_CRF)
    label = codec if encoder == codec else f"{codec} ({encoder})"
    if crf > top:
        raise UsageError(f"{name} {crf}: {label} takes 0 to {top} (it would quietly use {top})")
    if crf < low:
        raise UsageError(f"{name} {crf}: {label} takes {low} to {MAX_CRF} (it would quietly use its default)")
    return crf


def check_encoder(codec: str, default: str = "libx264") -> str:
    """A ``codec`` other than the default that PyAV's FFmpeg cannot encode, refused once before a
    batch (it failed on each video, after the model had loaded); without PyAV, each video says so."""
    if codec != default:
        try:
            import av  # noqa: F401
        except ImportError:
            return codec
        from .streams import pick_codec

        pick_codec(codec, default)
    return codec


def check_max_pixels(max_pixels: int | None) -> int | None:
    """None (the images' default), 0 (no limit) or a positive whole number: a negative or fractional
    limit would refuse every frame after the model had loaded, as "over the limit of -5"."""
    if max_pixels is not None and (not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 0):
        raise UsageError(f"max_pixels must be a whole number of pixels, 0 for no limit, or None, got {max_pixels!r}")
    return max_pixels


def require_av() -> ModuleType:
    """PyAV (FFmpeg's libraries, bundled in its wheels), or one line saying how to install it."""
    try:
        import av
    except ImportError:
        raise UsageError(f"videos need PyAV, which is not installed: {INSTALL}") from None
    return av


def upscale_video(src: str | os.PathLike, dst: str | os.PathLike, scale: int | None = 4, model: ModelLike = None, *,
                  tile: int | str = "auto", device: str | Any = "auto", precision: PrecisionChoice = "auto",
                  pad: int = DEFAULT_PAD, backend: Backend = "auto", crf: int = 18, codec: str = "libx264",
                  pix_fmt: str | None = None, progress: bool = False, overwrite: bool = False,
                  max_pixels: int | None = None) -> Path:
    """Upscale the video stream of ``src`` frame by frame into ``dst`` (.mp4, .m4v, .mov, .mkv or
    .webm) and copy its audio and subtitle streams untouched; return ``dst``.

    Kept: every frame's timestamp and duration (variable frame rates too), the frame rate, the
    colour matrix and range (decoded with them, encoded and tagged with them), the rotation
    (display matrix, carried as metadata: pixels are never rotated), the sample aspect ratio,
    language and title tags. Written with ``codec`` (default libx264; a fallback with a warning
    when PyAV's FFmpeg lacks it) at constant quality ``crf`` (codecs that have it: x264, x265,
    VP9, SVT-AV1) in ``pix_fmt`` (default yuv420p, where the codec takes it); an odd output size in
    a format with halved chroma gets its last row or column repeated (docs/inference.md, "Video").

    ``scale``, ``model``, ``tile``, ``device``, ``precision``, ``pad`` and ``backend`` are those of
    ``reprfn.upscale``; the model is prepared once and runs on every frame (tiles when a frame is
    too large for memory). Refused before any work: ``dst`` being ``src``, an existing ``dst``
    unless ``overwrite``, a container reprfn does not write, an unknown codec, a ``crf`` the codec
    does not take. Refused before any frame is upscaled (``frame_guard``): frames over
    ``max_pixels`` (default that of images, 200 million; 0 lifts it), or too large for memory
    once upscaled and encoded. The file is written to a temporary name and renamed at the end: a
    failure or an interrupt leaves no ``dst``, and an earlier ``dst`` (with ``overwrite``)
    untouched. ``progress``: a bar on stderr (frames, frames/s, time left).
    """
    from ..api import check_pad, check_tile, resolve_model
    from ..runtime.hardware import resolve_device
    from ..runtime.prepare import prepare

    src, dst = Path(src), Path(dst)
    tile, pad, max_pixels = check_tile(tile), check_pad(pad), check_max_pixels(max_pixels)
    require_av()
    from .pipeline import transcode
    from .streams import output_pix_fmt, pick_codec

    check_crf(crf, codec=codec)
    refuse_collisions([(src, dst)])
    container = container_of(dst)
    if dst.exists() and not overwrite:
        raise UsageError(f"{dst}: exists; pass overwrite=True to replace it (once the new one is complete)")
    check_writable(dst, "video")
    chosen = pick_codec(codec)
    pix = output_pix_fmt(chosen, pix_fmt)
    dev = resolve_device(device)
    net = prepare(resolve_model(model, scale, dev), dev, precision, backend)
    upscale = frame_upscaler(net, tile=tile, pad=pad, device=dev, precision=precision)
    with ExitStack() as stack, atomic_path(dst) as tmp:
        try:
            transcode(src, tmp, dst, container, chosen, pix, crf, net.info.scale, upscale,
                      lambda inp, vin: _bar(stack, inp, vin, src, progress),
                      frame_guard(net, src, max_pixels=max_pixels, tile=tile, pad=pad))
        except MemoryError:
            raise ResourceError(f"{src}: out of memory upscaling a frame: use a smaller --tile or --scale") from None
        except ReprfnError as exc:  # the model's refusals (non-finite output, memory) name the file
            message = str(exc)
            raise type(exc)(message if str(src) in message or str(dst) in message else f"{src}: {message}") from None
    return dst


def frame_guard(net: Any, src: Path, *, max_pixels: int | None, tile: int | str,
                pad: int) -> Callable[[int, int], None]:
    """The check of a frame size (width, height), run on the size the header states before any
    frame is decoded, and on the first frame's (a header can lie): frames over ``max_pixels`` (a
    small file of huge frames, as a decompression bomb) or whose upscaled frame, encoder frames and
    smallest forward do not fit in memory are refused (``ResourceError``) before any is upscaled."""
    from ..images import DEFAULT_MAX_PIXELS
    from ..runtime.memory import MIN_TILE, check_memory

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels or None
    scale = net.info.scale

    def check(width: int, height: int) -> None:
        pixels = width * height
        if limit is not None and pixels > limit:
            raise ResourceError(f"{src}: its {width}x{height} frames are {pixels:,} pixels, over the limit of "
                                f"{limit:,} that guards against decompression bombs; raise it with --max-pixels "
                                "if you trust the file")
        out = pixels * scale ** 2
        check_memory(height, width, scale, out * 3, tile=MIN_TILE if tile == "auto" else int(tile), pad=pad,
                     device=net.device, bytes_per_pixel=net.bytes_per_pixel, reserve=out * ENCODER_BYTES_PER_PIXEL)

    return check


def frame_upscaler(net: Any, **kw: Any) -> Callable[[np.ndarray], np.ndarray]:
    """What runs on each frame: ``api.upscale_pixels`` with the prepared model (tiles when needed)."""
    from ..api import upscale_pixels

    return lambda rgb: upscale_pixels(net, rgb, **kw)


def _bar(stack: ExitStack, inp: Any, vin: Any, src: Path, enabled: bool) -> Callable[[], object]:
    """A tqdm bar over the frames (its total from the container, when it says), closed with ``stack``."""
    from tqdm import tqdm

    from .streams import expected_frames

    bar = stack.enter_context(tqdm(total=expected_frames(inp, vin), unit="frame", desc=src.name, file=sys.stderr,
                                   disable=not enabled, dynamic_ncols=True, leave=False))
    return bar.update
