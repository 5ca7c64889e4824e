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
MAX_CRF = 63  # the largest any codec with a crf takes (x264: 51; VP9 and AV1: 63), checked by the encoder


def check_crf(crf: object, name: str = "crf") -> int:
    """A whole number in 0..63 (PyAV not needed: the command line checks it before the batch)."""
    if not isinstance(crf, int) or isinstance(crf, bool) or not 0 <= crf <= MAX_CRF:
        raise UsageError(f"{name} must be a whole number from 0 (lossless with x264) to {MAX_CRF}, got {crf!r}")
    return crf


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
                  pix_fmt: str | None = None, progress: bool = False, overwrite: bool = False) -> Path:
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
    unless ``overwrite``, a container reprfn does not write, an unknown codec. The file is written
    to a temporary name and renamed at the end: a failure or an interrupt leaves no ``dst``, and
    an earlier ``dst`` (with ``overwrite``) untouched. ``progress``: a bar on stderr (frames,
    frames/s, time left).
    """
    from ..api import check_pad, check_tile, resolve_model
    from ..runtime.hardware import resolve_device
    from ..runtime.prepare import prepare

    src, dst = Path(src), Path(dst)
    tile, pad = check_tile(tile), check_pad(pad)
    require_av()
    from .pipeline import transcode
    from .streams import output_pix_fmt, pick_codec

    check_crf(crf)
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
                      lambda inp, vin: _bar(stack, inp, vin, src, progress))
        except MemoryError:
            raise ResourceError(f"{src}: out of memory upscaling a frame: use a smaller --tile or --scale") from None
        except ReprfnError as exc:  # the model's refusals (non-finite output, memory) name the file
            message = str(exc)
            raise type(exc)(message if str(src) in message or str(dst) in message else f"{src}: {message}") from None
    return dst


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
