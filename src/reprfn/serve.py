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
413 for an upload or an image over the limits, 415 for a file that is not a PNG, JPEG, WebP, BMP
or TIFF image or cannot be decoded. Decoding and upscaling run in a worker thread, one image at a
time (a CPU-bound job would otherwise stall the event loop and several would fight for the cores
and memory). The server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Callable

from torch import nn

from .io import INPUT_FORMATS, ImageError, load_picture, save_picture

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # the whole request body
MAX_PIXELS = 2_500_000  # input pixels: about 1920x1300; x4 gives 40 megapixels out
MAX_SIDE = 4096  # input width or height
SCALES = (2, 3, 4)
WEB_DIR = Path(__file__).parent / "web"
FORMATS_TEXT = "PNG, JPEG, WebP, BMP or TIFF"


class UploadError(Exception):
    """A request the server refuses: an HTTP status and a one-line message for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _BodyTooLarge(Exception):
    pass


@dataclass
class Upscaled:
    png: bytes
    size_in: tuple[int, int]  # (width, height)
    size_out: tuple[int, int]
    seconds: float


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n:,} pixels"


def _size_text(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def check_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE) -> tuple[str, tuple[int, int]]:
    """The format and size of an encoded image, read from its header only (nothing decoded).

    ``UploadError`` 415 for anything that is not one of the formats read, 413 when too large.
    """
    from PIL import Image

    if not data:
        raise UploadError(400, "the uploaded file is empty")
    try:
        with Image.open(BytesIO(data), formats=INPUT_FORMATS) as im:
            fmt, (w, h) = ("JPEG" if im.format == "MPO" else str(im.format)), im.size
    except Image.DecompressionBombError:
        raise UploadError(413, f"the image is too large; the limit is {_megapixels(max_pixels)}") from None
    except Exception:
        raise UploadError(415, f"not an image this server reads: send a {FORMATS_TEXT} file") from None
    if w * h > max_pixels or max(w, h) > max_side:
        raise UploadError(
            413, f"the image is {w}x{h} ({_megapixels(w * h)}); this server takes up to "
                 f"{_megapixels(max_pixels)} and {max_side} pixels a side"
        )
    return fmt, (w, h)


def upscale_bytes(data: bytes, model: nn.Module, *, name: str = "upload", max_pixels: int = MAX_PIXELS,
                  max_side: int = MAX_SIDE, device=None) -> Upscaled:
    """Decode an uploaded file, upscale it with ``model``, encode the result as PNG.

    ``reprfn.io.load_picture`` reads paths, so the bytes go through a private temporary folder.
    """
    import torch

    from .api import upscale_picture

    fmt, size_in = check_image(data, max_pixels=max_pixels, max_side=max_side)
    start = time.perf_counter()
    suffix = {"JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}.get(fmt, ".png")
    with tempfile.TemporaryDirectory(prefix="reprfn-serve-") as tmp:
        src, dst = Path(tmp) / f"in{suffix}", Path(tmp) / "out.png"
        src.write_bytes(data)
        try:
            pic = load_picture(src, max_pixels=max_pixels)
        except ImageError as exc:  # corrupt or truncated: say so without the temporary path
            reason = str(exc).replace(f"{src}: ", "", 1)
            raise UploadError(415, f"{name}: {reason}") from None
        out = upscale_picture(model, pic, tile="auto", device=device or torch.device("cpu"))
        save_picture(out, dst)
        png = dst.read_bytes()
    h, w = out.pixels.shape[:2]
    return Upscaled(png, size_in, (w, h), time.perf_counter() - start)


class Models:
    """The bundled model of each scale, loaded on first use (thread-safe)."""

    def __init__(self, device=None, loader: Callable[[int], nn.Module] | None = None) -> None:
        import torch

        self.device = device or torch.device("cpu")
        self._loader = loader
        self._models: dict[int, nn.Module] = {}
        self._lock = threading.Lock()

    def __call__(self, scale: int) -> nn.Module:
        with self._lock:
            if scale not in self._models:
                if self._loader is not None:
                    self._models[scale] = self._loader(scale)
                else:
                    from .api import resolve_model

                    self._models[scale] = resolve_model(None, scale, self.device)
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
               max_side: int = MAX_SIDE, device=None, models: Callable[[int], nn.Module] | None = None):
    """The Starlette application. ``models(scale)`` gives the model of a scale (default: bundled)."""
    import anyio
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    model_for = models or Models(device)
    one_at_a_time = anyio.CapacityLimiter(1)
    page = page_html(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, max_side=max_side)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def info(request: Request) -> Response:
        return JSONResponse({"scales": list(SCALES), "max_upload_bytes": max_upload_bytes,
                             "max_pixels": max_pixels, "max_side": max_side})

    async def upscale(request: Request) -> Response:
        too_big = f"the upload is over the limit of {_size_text(max_upload_bytes)}"
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload_bytes:
            return error(413, too_big)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(400, "send a multipart/form-data form with the file in field 'image' and 'scale'")
        received = 0

        async def limited_receive():
            nonlocal received
            message = await request.receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_upload_bytes:
                    raise _BodyTooLarge
            return message

        form = None
        try:
            form = await Request(request.scope, limited_receive).form(max_files=1, max_fields=8)
            upload, scale_text = form.get("image"), form.get("scale", "4")
            if upload is None or isinstance(upload, str):
                return error(400, "no file in the form field 'image'")
            if scale_text not in [str(s) for s in SCALES]:
                return error(400, f"scale must be 2, 3 or 4, not {str(scale_text)[:20]!r}")
            data = await upload.read()
            name = os.path.basename(upload.filename or "upload")[:200] or "upload"
            scale = int(scale_text)

            def work() -> Upscaled:
                return upscale_bytes(data, model_for(scale), name=name, max_pixels=max_pixels,
                                     max_side=max_side, device=device)

            result = await anyio.to_thread.run_sync(work, limiter=one_at_a_time)
        except _BodyTooLarge:
            return error(413, too_big)
        except UploadError as exc:
            return error(exc.status, str(exc))
        except HTTPException as exc:  # Starlette's answer to a malformed multipart body
            return error(exc.status_code, f"malformed form: {exc.detail}")
        except MultiPartException as exc:
            return error(400, f"malformed form: {exc.message}")
        except (RuntimeError, MemoryError) as exc:  # out of memory while upscaling
            line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            return error(500, f"upscaling failed: {line}")
        finally:
            if form is not None:
                await form.close()
        stem = Path(name).stem or "image"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:100]
        return Response(result.png, media_type="image/png", headers={
            "Content-Disposition": f'attachment; filename="{safe}_x{scale}.png"',
            "X-Reprfn-Input-Size": "{}x{}".format(*result.size_in),
            "X-Reprfn-Output-Size": "{}x{}".format(*result.size_out),
            "X-Reprfn-Seconds": f"{result.seconds:.3f}",
            "Cache-Control": "no-store",
        })

    return Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/api/info", info, methods=["GET"]),
        Route("/api/upscale", upscale, methods=["POST"]),
    ])


def serve(host: str = "127.0.0.1", port: int = 8000, **kw) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(**kw)
    uvicorn.run(app, host=host, port=port, log_level="info")
