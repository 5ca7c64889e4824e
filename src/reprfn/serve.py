"""``reprfn serve``: a small local web page and HTTP API that upscale an image with the bundled model.

Starlette (ASGI) served by uvicorn; both come with the ``serve`` extra (``pip install
'reprfn[serve]'``). The page (``GET /``) is one self-contained HTML file: drag-and-drop or pick a
file, choose x2/x3/x4, watch the upload and the work progress, compare before and after with a
slider, download the PNG. The API:

* ``POST /api/upscale``, a multipart form with the file in field ``image`` and ``scale`` (2, 3 or
  4; default 4), answers the upscaled image as PNG (``image/png``; 16-bit, greyscale and alpha are
  kept, as ``reprfn upscale`` keeps them), with ``Content-Disposition: attachment``.
* ``GET /api/info`` answers the limits and scales as JSON.

Errors answer JSON ``{"error": "<one line>"}``: 400 for a malformed request (no file, bad scale),
413 for an upload or an image over the limits (the image's size is read from its header, before
any pixel is decoded), 415 for a file that is not a PNG, JPEG, WebP, BMP or TIFF image or that the
pipeline cannot decode or write, 503 with ``Retry-After`` when the queue is full, 500 for a bug
(logged here with its traceback). Decoding and upscaling run in a worker thread, one image at a
time, with at most ``max_queue`` more waiting: a CPU-bound job would otherwise stall the event
loop, several would fight for the cores and memory, and an unbounded queue would let a few small
uploads hold the server for minutes. The server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import errno
import html
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from torch import nn

from .errors import ImageError, ReprfnError, ResourceError, UsageError, one_line
from .images import INPUT_FORMATS, Picture, encode_picture, load_picture, own_pixel_limit

if TYPE_CHECKING:
    import torch
    from starlette.applications import Starlette
    from starlette.types import ASGIApp, Message

    from .runtime.hardware import PrecisionChoice
    from .runtime.prepare import Runner

    ModelFor = Callable[[int], "nn.Module | Runner"]  # the model of a scale

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # the whole request body
MAX_PIXELS = 300_000  # input pixels (about 630x470): 4.8 megapixels out at x4
MAX_SIDE = 4096  # input width or height
MAX_QUEUE = 2  # uploads that may wait while one is upscaled
SCALES = (2, 3, 4)
WEB_DIR = Path(__file__).parent / "web"
FORMATS_TEXT = "PNG, JPEG, WebP, BMP or TIFF"

log = logging.getLogger(__name__)
T = TypeVar("T")


class UploadError(Exception):
    """A request the server refuses: an HTTP status and a one-line message for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class QueueFull(UploadError):
    """503: as many uploads as allowed are being upscaled or waiting; ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(503, message)
        self.retry_after = retry_after


class _BodyTooLarge(Exception):
    pass


@dataclass
class Upscaled:
    png: bytes
    size_in: tuple[int, int]  # (width, height), as decoded (EXIF orientation applied)
    size_out: tuple[int, int]
    seconds: float


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n:,} pixels"


def _size_text(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def _check_count(name: str, value: int, minimum: int) -> None:
    """Limits are integers: a float or a bool would slip through comparisons and mean nothing."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer of at least {minimum}, got {value!r}")


def check_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE) -> tuple[str, tuple[int, int]]:
    """The format and size of an encoded image, read from its header only (nothing decoded).

    ``UploadError`` 415 for anything that is not one of the formats read, 413 when too large: a
    3 KB PNG can claim a megapixel of black, so the size is judged before any pixel is decoded.
    """
    from PIL import Image

    if not data:
        raise UploadError(400, "the uploaded file is empty")
    try:
        with own_pixel_limit(), Image.open(BytesIO(data), formats=INPUT_FORMATS) as im:  # our limit, not Pillow's
            fmt, (w, h) = ("JPEG" if im.format == "MPO" else str(im.format)), im.size
    except Exception:
        raise UploadError(415, f"not an image this server reads: send a {FORMATS_TEXT} file") from None
    if w * h > max_pixels or max(w, h) > max_side:
        raise UploadError(
            413, f"the image is {w}x{h} ({_megapixels(w * h)}); this server takes up to "
                 f"{_megapixels(max_pixels)} and {max_side} pixels a side (reprfn serve --max-pixels)"
        )
    return fmt, (w, h)


def result_name(name: str, scale: int) -> str:
    """The download's file name: the upload's stem in ASCII (a header holds Latin-1 only), ``_x4.png``."""
    stem = Path(name).stem or "image"
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in stem)[:100]
    return f"{safe}_x{scale}.png"


def encode_png(pic: Picture, name: str) -> bytes:
    """``pic`` as PNG bytes, encoded in memory (16-bit colour included, which Pillow cannot
    write); a failure is the ``ReprfnError`` of ``encode_picture``, naming ``name``."""
    return encode_picture(pic, name)


def upscale_bytes(data: bytes, model: nn.Module | Runner, *, name: str = "upload", max_pixels: int = MAX_PIXELS,
                  device: torch.device | None = None) -> Upscaled:
    """Decode an uploaded file from memory, upscale it with ``model``, encode the result as PNG.

    Callers check the header first (``check_image``); ``max_pixels`` guards the decoder again.
    Every failure of the input is a ``ReprfnError`` whose one line names ``name``.
    """
    import torch

    from .api import upscale_picture
    from .runtime.info import describe

    start = time.perf_counter()
    pic = load_picture(BytesIO(data), max_pixels=max_pixels, name=name)
    out = upscale_picture(model, pic, tile="auto", device=device or torch.device("cpu"))
    png = encode_png(out, result_name(name, describe(model).scale))
    (h, w), (oh, ow) = pic.pixels.shape[:2], out.pixels.shape[:2]
    return Upscaled(png, (w, h), (ow, oh), time.perf_counter() - start)


FORM_FIELDS = ("image", "scale")


def form_problem(items: Sequence[tuple[str, object]]) -> str | None:
    """Why a form cannot be answered as asked, or None: a field the API does not read (``scal=2``,
    a typo, gave x4 with 200) or ``scale`` given twice (one of them was used, unsaid)."""
    names = [key for key, _ in items]
    unknown = next((key for key in names if key not in FORM_FIELDS), None)
    if unknown is not None:
        return f"unknown form field {unknown[:40]!r}: the form takes 'image' (the file) and 'scale' (2, 3 or 4)"
    if names.count("scale") > 1:
        return "the form field 'scale' is given more than once"
    return None


def status_for(exc: ReprfnError) -> int:
    """The HTTP status of an input the pipeline refuses: 413 over a limit, 415 an image it cannot
    decode or write, 422 anything else; all are about the upload, none is the server's fault."""
    if isinstance(exc, ResourceError):
        return 413
    if isinstance(exc, ImageError):
        return 415
    return 422


class WorkQueue:
    """Jobs run one at a time in a worker thread, at most ``waiting`` more queued; the rest refused.

    An upscale holds the cores for seconds, so an unbounded queue would let a handful of small
    uploads keep every later one waiting for minutes; refusing at once, with the time to wait, is
    the honest answer. The counters change on the event loop thread only, so they need no lock.
    """

    def __init__(self, waiting: int) -> None:
        import anyio

        _check_count("max_queue", waiting, 0)
        self.max_waiting = waiting
        self.running = 0
        self.waiting = 0
        self.seconds = 5.0  # how long the last job took: the wait Retry-After suggests
        self._one = anyio.CapacityLimiter(1)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: about the time of one job."""
        return max(1, math.ceil(self.seconds))

    async def run(self, job: Callable[[], T]) -> T:
        """``job()`` in a worker thread once its turn comes; ``QueueFull`` at once when full."""
        import anyio

        if self.running + self.waiting > self.max_waiting:
            wait = self.retry_after()
            raise QueueFull(f"the server is busy ({self.running} upscale running, {self.waiting} waiting); "
                            f"try again in {wait} s", wait)
        self.waiting += 1
        try:
            await self._one.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        start = time.perf_counter()
        try:
            return await anyio.to_thread.run_sync(job)
        finally:
            self.seconds = time.perf_counter() - start
            self.running -= 1
            self._one.release()


class Models:
    """The bundled model of each scale, loaded and prepared (``runtime.prepare``: the engines of
    ``reprfn upscale``, in ``precision``) on first use (thread-safe)."""

    def __init__(self, device: torch.device | None = None, loader: ModelFor | None = None,
                 precision: PrecisionChoice = "auto") -> None:
        import torch

        self.device = device or torch.device("cpu")
        self.precision = precision
        self._loader = loader
        self._models: dict[int, Runner] = {}
        self._lock = threading.Lock()

    def __call__(self, scale: int) -> Runner:
        with self._lock:
            if scale not in self._models:
                from .api import prepare, resolve_model

                model = self._loader(scale) if self._loader is not None else resolve_model(None, scale, self.device)
                self._models[scale] = prepare(model, self.device, self.precision)
            return self._models[scale]


def page_html(*, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
              max_side: int = MAX_SIDE) -> str:
    """The page, with its CSS and JS inlined and the limits filled in."""
    config = {"maxUploadBytes": max_upload_bytes, "maxPixels": max_pixels, "maxSide": max_side, "scales": list(SCALES)}
    limits = (f"{FORMATS_TEXT} · up to {_size_text(max_upload_bytes)}, {_megapixels(max_pixels)}, "
              f"{max_side} pixels a side")
    text = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    for key, value in {
        "{{slider_css}}": (WEB_DIR / "slider.css").read_text(encoding="utf-8"),
        "{{slider_js}}": (WEB_DIR / "slider.js").read_text(encoding="utf-8"),
        "{{config}}": json.dumps(config),
        "{{limits}}": html.escape(limits),
    }.items():
        text = text.replace(key, value)
    return text



def create_app(*, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
               max_side: int = MAX_SIDE, max_queue: int = MAX_QUEUE, device: torch.device | None = None,
               models: ModelFor | None = None) -> Starlette:
    """The Starlette application. ``models(scale)`` gives the model of a scale (default: bundled).

    ``max_pixels`` and ``max_side`` bound the input image, ``max_queue`` the uploads waiting while
    one is upscaled (503 beyond); invalid limits are a ``UsageError``.
    """
    import anyio
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    for key, value, minimum in (("max_upload_bytes", max_upload_bytes, 1), ("max_pixels", max_pixels, 1),
                                ("max_side", max_side, 1)):
        _check_count(key, value, minimum)
    queue = WorkQueue(max_queue)
    model_for = models or Models(device)
    page = page_html(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, max_side=max_side)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def info(request: Request) -> Response:
        return JSONResponse({"scales": list(SCALES), "max_upload_bytes": max_upload_bytes,
                             "max_pixels": max_pixels, "max_side": max_side, "max_queue": max_queue,
                             "running": queue.running, "waiting": queue.waiting})

    async def upscale(request: Request) -> Response:
        too_big = f"the upload is over the limit of {_size_text(max_upload_bytes)}"
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload_bytes:
            return error(413, too_big)
        if request.query_params:  # ``?scale=2`` was ignored: the default x4 came back with 200
            return error(400, f"unexpected query parameter {next(iter(request.query_params))[:40]!r}: "
                              "send 'image' and 'scale' as fields of the form")
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return error(400, "send a multipart/form-data form with the file in field 'image' and 'scale'")
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await request.receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_upload_bytes:
                    raise _BodyTooLarge
            return message

        form, name = None, "upload"
        try:
            form = await Request(request.scope, limited_receive).form(max_files=1, max_fields=8)
            upload, scale_text = form.get("image"), form.get("scale", "4")
            problem = form_problem(form.multi_items())
            if problem:
                return error(400, problem)
            if upload is None or isinstance(upload, str):
                return error(400, "no file in the form field 'image'")
            if scale_text not in [str(s) for s in SCALES]:
                return error(400, f"scale must be 2, 3 or 4, not {str(scale_text)[:20]!r}")
            data = await upload.read()
            name = os.path.basename(upload.filename or "upload")[:200] or "upload"
            scale = int(scale_text)
            await anyio.to_thread.run_sync(lambda: check_image(data, max_pixels=max_pixels, max_side=max_side))
            result = await queue.run(lambda: upscale_bytes(data, model_for(scale), name=name,
                                                           max_pixels=max_pixels, device=device))
        except _BodyTooLarge:
            return error(413, too_big)
        except QueueFull as exc:
            return error(exc.status, str(exc), {"Retry-After": str(exc.retry_after)})
        except UploadError as exc:
            return error(exc.status, str(exc))
        except HTTPException as exc:  # Starlette's answer to a malformed multipart body
            return error(exc.status_code, f"malformed form: {exc.detail}")
        except MultiPartException as exc:
            return error(400, f"malformed form: {exc.message}")
        except ReprfnError as exc:  # the pipeline refuses this input (undecodable, unwritable...)
            return error(status_for(exc), one_line(exc)[:300])
        except Exception as exc:  # a bug, or out of memory: the person gets one line, the log the rest
            log.exception("upscaling %s failed", name)
            return error(500, f"internal error while upscaling {name}: {type(exc).__name__}: {one_line(exc)[:200]}")
        finally:
            if form is not None:
                await form.close()
        return Response(result.png, media_type="image/png", headers={
            "Content-Disposition": f'attachment; filename="{result_name(name, scale)}"',
            "X-Reprfn-Input-Size": "{}x{}".format(*result.size_in),
            "X-Reprfn-Output-Size": "{}x{}".format(*result.size_out),
            "X-Reprfn-Seconds": f"{result.seconds:.3f}",
            "Cache-Control": "no-store",
        })

    async def http_error(request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (404 for an unknown path, 405 for ``GET /api/upscale``) in JSON
        too: a script reading ``error`` got a bare text page."""
        assert isinstance(exc, HTTPException)
        where = f"{request.method} {request.url.path[:100]}"
        return error(exc.status_code, f"{where}: {exc.detail}", dict(exc.headers or {}))

    async def internal_error(request: Request, exc: Exception) -> Response:
        """Any other bug answers JSON too (Starlette logs it with its traceback)."""
        return error(500, f"internal error: {type(exc).__name__}")

    return Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/api/info", info, methods=["GET"]),
        Route("/api/upscale", upscale, methods=["POST"]),
    ], exception_handlers={HTTPException: http_error, Exception: internal_error})


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, for ``serve``.

    Bound here, before anything announces "serving on", so that a port in use, a privileged port
    or an address of another machine is one line (``UsageError``) rather than uvicorn's traceback
    after the announcement.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UsageError(f"--port must be a TCP port number, 1..65535, got {port!r}")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart at once after a stop
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(_bind_problem(host, port, exc)) from None
    return sock


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    """One line for a failed bind, naming the flag that changes it."""
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host!r}: {exc.strerror or one_line(exc)} (see --host)"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use (another server listens there; choose another with --port)"
    if exc.errno == errno.EACCES:
        return f"port {port} on {host} needs privileges (use a port above 1023 with --port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: not an address of this machine (see --host)"
    return f"cannot listen on port {port} on {host}: {exc.strerror or one_line(exc)}"


def serve(app: ASGIApp, sock: socket.socket, *, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn on ``sock`` (from ``listen_socket``) until interrupted."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])
