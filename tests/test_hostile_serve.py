"""``reprfn serve`` under hostile or unlucky input: a bounded queue (503 + Retry-After), work
bounded per request (413 from the header), every pipeline failure a JSON one-liner, a port that
cannot be used refused before "serving on", uploads decoded from memory.

Server states are made deterministic with a model that blocks on an Event; timeouts are only
guards against a hang, never the thing measured.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

from starlette.testclient import TestClient  # noqa: E402

import reprfn.serve  # noqa: E402
from reprfn.cli import main  # noqa: E402
from reprfn.errors import ImageError, ResourceError  # noqa: E402
from reprfn.images import Picture, encode_picture, load_picture, save_picture  # noqa: E402
from reprfn.serve import MAX_QUEUE, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GUARD = 30  # seconds: only a guard against a hang


class Nearest(nn.Module):
    """Nearest-neighbour x2: a model that costs nothing, counting its calls."""

    scale, in_channels, arch = 2, 3, "nearest"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.interpolate(x, scale_factor=2, mode="nearest")


class Blocking(Nearest):
    """Holds every job until ``release`` is set, after counting it in ``entries`` and setting ``entered``."""

    def __init__(self) -> None:
        super().__init__()
        self.entries = 0
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entries += 1
        self.entered.set()
        assert self.release.wait(GUARD), "the test never released the model"
        return super().forward(x)


class Failing(Nearest):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.exc


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _small() -> bytes:
    return _png(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3))


def _post(client: TestClient, data: bytes, name: str = "x.png"):
    return client.post("/api/upscale", files={"image": (name, data, "image/png")}, data={"scale": "2"})


def _one_line_json(r) -> str:
    assert r.headers["content-type"] == "application/json", r.text[:200]
    message = r.json()["error"]
    assert message and "\n" not in message
    return message


# ------------------------------------------------------------------ a real server, a full queue


@contextlib.contextmanager
def _live(app):
    """The app under uvicorn on a free loopback port, in a thread; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + GUARD
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(GUARD)


def _http(url: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET, or of a POST of ``body`` as the upscale form."""
    headers = {}
    if body is not None:
        boundary = "reprfnboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"scale\"\r\n\r\n2\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    req = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=GUARD) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _info(url: str) -> dict:
    status, _, body = _http(url + "/api/info")
    assert status == 200
    return json.loads(body)


def _until(predicate, what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


@contextlib.contextmanager
def _released(model: Blocking):
    """Release the model however the test ends, so that no thread is left waiting."""
    try:
        yield
    finally:
        model.release.set()


@pytest.mark.parametrize("max_queue", [MAX_QUEUE, 0])
def test_a_full_queue_answers_503_while_info_and_the_page_stay_responsive(max_queue):
    model = Blocking()
    with _live(create_app(models=lambda scale: model, max_queue=max_queue)) as url, _released(model):
        results: list[tuple[int, dict, bytes]] = []
        admitted = [threading.Thread(target=lambda: results.append(_http(url + "/api/upscale", _small())))
                    for _ in range(1 + max_queue)]
        admitted[0].start()
        assert model.entered.wait(GUARD)
        for t in admitted[1:]:
            t.start()
        # the event loop answers while the model holds its worker thread
        _until(lambda: _info(url)["waiting"] == max_queue, f"{max_queue} uploads waiting")
        assert _info(url)["running"] == 1

        status, headers, body = _http(url + "/api/upscale", _small())
        assert status == 503
        message = json.loads(body)["error"]
        wait = int(headers["retry-after"])
        assert wait >= 1 and "\n" not in message
        assert message == f"the server is busy (1 upscale running, {max_queue} waiting); try again in {wait} s"
        assert _http(url + "/")[0] == 200
        assert model.entries == 1  # one at a time: the waiting uploads have not started

        model.release.set()
        for t in admitted:
            t.join(GUARD)
        assert [r[0] for r in results] == [200] * len(admitted)
        assert all(Image.open(io.BytesIO(r[2])).size == (32, 32) for r in results)
        assert model.entries == model.calls == len(admitted)  # and the refused one never ran
        # the places are free again
        info = _info(url)
        assert (info["running"], info["waiting"]) == (0, 0)
        assert _http(url + "/api/upscale", _small())[0] == 200


# --------------------------------------------------------------------- work bounded per request


def test_a_small_file_of_a_megapixel_is_refused_before_any_work():
    model = Nearest()
    black = _png(np.zeros((1000, 1000, 3), np.uint8))
    assert len(black) < 10_000  # a few KB on the wire, tens of seconds of CPU at x4
    r = _post(TestClient(create_app(models=lambda scale: model)), black)
    assert r.status_code == 413
    assert _one_line_json(r).startswith(
        "the image is 1000x1000 (1.0 megapixels); this server takes up to 0.3 megapixels")
    assert model.calls == 0


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height``, then the start of one row, cut short."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    stream = zlib.compressobj()
    row = stream.compress(b"\0" * (1 + 3 * min(width, 64))) + stream.flush(zlib.Z_SYNC_FLUSH)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", row)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_the_size_is_judged_from_the_header():
    client = TestClient(create_app(models=lambda scale: Nearest(), max_pixels=1000))
    r = _post(client, _png_header_only(10_000, 10_000))  # 100 megapixels claimed, 60 bytes sent
    assert r.status_code == 413 and _one_line_json(r).startswith("the image is 10000x10000 (100.0 megapixels)")
    r = _post(client, _png_header_only(40_000, 30_000))  # past Pillow's own bomb guard, and no warning
    assert r.status_code == 413 and _one_line_json(r).startswith("the image is 40000x30000 (1200.0 megapixels)")
    r = _post(client, _png_header_only(20, 20))  # within the limit: then decoding finds no data
    assert r.status_code == 415 and _one_line_json(r).startswith("x.png: not a readable image")


# ----------------------------------------------------------- every failure is a JSON one-liner


def test_an_image_the_writer_refuses_is_415_naming_the_result(monkeypatch):
    def refuse(pic: Picture, name: str) -> bytes:
        raise ImageError(f"{name}: cannot write (16-bit colour)\nsecond line")

    monkeypatch.setattr(reprfn.serve, "encode_picture", refuse)
    r = _post(TestClient(create_app(models=lambda scale: Nearest())), _small(), "photo.png")
    assert r.status_code == 415
    assert _one_line_json(r) == "photo_x2.png: cannot write (16-bit colour)"  # the result's name, one line


def test_a_refusal_of_the_model_is_4xx_and_a_bug_is_a_logged_500(caplog):
    r = _post(TestClient(create_app(models=lambda scale: Failing(ResourceError("needs 9 GB, 2 GB free")))), _small())
    assert r.status_code == 413 and _one_line_json(r) == "needs 9 GB, 2 GB free"

    with caplog.at_level(logging.ERROR, logger="reprfn.serve"):
        app = create_app(models=lambda scale: Failing(RuntimeError("boom\nat line 2")))
        r = _post(TestClient(app), _small(), "b.png")
    assert r.status_code == 500
    assert _one_line_json(r) == "internal error while upscaling b.png: RuntimeError: boom"
    [record] = [rec for rec in caplog.records if rec.name == "reprfn.serve"]
    assert record.exc_info and "b.png" in record.getMessage()


def test_a_bug_outside_the_upscale_is_a_json_500(monkeypatch):
    def broken(n: int) -> str:
        raise RuntimeError("a bug")

    client = TestClient(create_app(models=lambda scale: Nearest()), raise_server_exceptions=False)
    monkeypatch.setattr(reprfn.serve, "_size_text", broken)  # used before the upscale's own handling
    r = _post(client, _small())
    assert r.status_code == 500 and _one_line_json(r) == "internal error: RuntimeError"


def test_16_bit_colour_never_gives_a_plain_500(tmp_path):
    """A 16-bit RGB PNG: the image at full depth, or a one-line JSON refusal; never a bare 500."""
    rgb16 = (np.arange(8 * 8 * 3, dtype=np.uint32).reshape(8, 8, 3) * 331 % 65536).astype(np.uint16)
    path = save_picture(Picture(rgb16), tmp_path / "deep.png")
    r = _post(TestClient(create_app(models=lambda scale: Nearest())), path.read_bytes(), "deep.png")
    if r.status_code == 200:
        out = load_picture(io.BytesIO(r.content))
        assert out.pixels.dtype == np.uint16 and out.pixels.shape == (16, 16, 3)
    else:
        assert 400 <= r.status_code < 500 and _one_line_json(r).startswith("deep_x2.png: ")


def test_a_non_latin1_file_name_is_answered():
    r = _post(TestClient(create_app(models=lambda scale: Nearest())), _small(), "фото.png")
    assert r.status_code == 200
    assert r.headers["content-disposition"] == 'attachment; filename="_____x2.png"'  # 4 letters, then _x2


# -------------------------------------------------------------------- the port, before "serving"


def _serve(*flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reprfn", "serve", "--device", "cpu", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_a_port_that_cannot_be_used_is_one_line_before_serving():
    """A port in use, and one out of range: exit 2, one line, and no "serving on" printed first."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        procs = [_serve("--port", str(port)), _serve("--port", "99999")]  # side by side: each imports torch
        try:
            done = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    in_use, out_of_range = done
    assert in_use[0] == "" and in_use[2] == 2
    assert in_use[1].splitlines() == [
        f"reprfn: error: port {port} on 127.0.0.1 is in use (another server listens there; choose another with --port)"]
    assert out_of_range[0] == "" and out_of_range[2] == 2
    assert out_of_range[1].splitlines() == ["reprfn: error: --port must be a TCP port number, 1..65535, got 99999"]


@pytest.mark.parametrize("flags,line", [
    (["--max-queue", "-1"], "reprfn: error: max_queue must be an integer of at least 0, got -1"),
    (["--max-pixels", "0"], "reprfn: error: max_pixels must be an integer of at least 1, got 0"),
])
def test_limits_out_of_range_are_one_line(capsys, flags, line):
    assert main(["serve", "--device", "cpu", "--port", "1", *flags]) == 2  # refused before binding
    err = capsys.readouterr().err
    assert err.splitlines() == [line]


# ------------------------------------------------------------------ uploads decoded from memory


def test_load_picture_from_memory_matches_the_file_and_names_the_upload(tmp_path):
    rgba16 = (np.arange(6 * 5 * 4, dtype=np.uint32).reshape(6, 5, 4) * 2731 % 65536).astype(np.uint16)
    path = save_picture(Picture(np.ascontiguousarray(rgba16[..., :3]), np.ascontiguousarray(rgba16[..., 3])),
                        tmp_path / "deep.png")
    data = path.read_bytes()
    from_file, from_memory = load_picture(path), load_picture(io.BytesIO(data), name="up.png")
    assert from_memory.pixels.dtype == np.uint16  # the 16-bit path decodes the stream twice
    assert np.array_equal(from_memory.pixels, from_file.pixels) and np.array_equal(from_memory.alpha, from_file.alpha)
    assert np.array_equal(from_memory.pixels, rgba16[..., :3])

    with pytest.raises(ImageError, match=r"^up\.png: not a readable image \("):
        load_picture(io.BytesIO(data[:60]), name="up.png")
    with pytest.raises(ImageError, match=r"^up\.png: empty file, not an image$"):
        load_picture(io.BytesIO(b""), name="up.png")
    with pytest.raises(ImageError, match=r"^up\.png: 5x6 is 30 pixels, over the limit of 29 "):
        load_picture(io.BytesIO(data), name="up.png", max_pixels=29)


def test_an_upload_and_its_result_never_touch_the_disk(monkeypatch):
    """Decoded from memory and encoded in memory: no temporary file or folder is made, for 8-bit
    input and for 16-bit colour (written by our own PNG writer)."""
    import tempfile

    def no_disk(*args, **kwargs):
        raise AssertionError("a temporary file or folder was made")

    for what in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, what, no_disk)
    client = TestClient(create_app(models=lambda scale: Nearest()))
    r = _post(client, _small(), "a.png")
    assert r.status_code == 200, r.text[:200]
    sent, got = (np.asarray(Image.open(io.BytesIO(b))) for b in (_small(), r.content))
    assert got.shape == (32, 32, 3) and np.array_equal(got[::2, ::2], sent)
    rgb16 = (np.arange(8 * 8 * 3, dtype=np.uint32).reshape(8, 8, 3) * 331 % 65536).astype(np.uint16)
    deep = encode_picture(Picture(rgb16), "deep.png")
    r = _post(client, deep, "deep.png")
    assert r.status_code == 200, r.text[:200]
    out = load_picture(io.BytesIO(r.content))
    assert out.pixels.dtype == np.uint16 and np.array_equal(out.pixels[::2, ::2], rgb16)


@pytest.mark.parametrize(("request_kw", "status", "words"), [
    ({"url": "/api/upscale?scale=2"}, 400, "unexpected query parameter 'scale': send 'image' and 'scale' as fields"),
    ({"data": {"scal": "2"}}, 400, "unknown form field 'scal': the form takes 'image' (the file) and 'scale'"),
    ({"data": {"scale": ["2", "3"]}}, 400, "the form field 'scale' is given more than once"),
    ({"method": "GET"}, 405, "GET /api/upscale: Method Not Allowed"),
    ({"url": "/api/upscal"}, 404, "POST /api/upscal: Not Found"),
])
def test_a_request_not_answered_as_asked_is_a_json_4xx(request_kw, status, words):
    """``?scale=2`` and a mistyped field (``scal=2``) were ignored: the default x4 came back with
    200; of ``scale`` given twice one was used, unsaid; 404 and 405 were bare text pages."""
    model = Nearest()
    client = TestClient(create_app(models=lambda scale: model))
    url, method = request_kw.get("url", "/api/upscale"), request_kw.get("method", "POST")
    if method == "GET":
        r = client.get(url)
    else:
        r = client.post(url, files={"image": ("x.png", _small(), "image/png")}, data=request_kw.get("data", {}))
    assert r.status_code == status and words in _one_line_json(r), r.text
    assert model.calls == 0


def test_the_form_type_is_read_whatever_its_case():
    """``Multipart/Form-Data`` (media types ignore case) was refused as "send a multipart form"."""
    body = (b'--b\r\nContent-Disposition: form-data; name="scale"\r\n\r\n2\r\n--b\r\nContent-Disposition: '
            b'form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
            + _small() + b"\r\n--b--\r\n")
    client = TestClient(create_app(models=lambda scale: Nearest()))
    r = client.post("/api/upscale", content=body, headers={"content-type": "Multipart/Form-Data; boundary=b"})
    assert r.status_code == 200 and r.headers["x-reprfn-output-size"] == "32x32", r.text[:200]
