"""``reprfn serve``: the HTTP API through Starlette's test client, a real uvicorn server, and the
page driven in headless Chromium (upload, progress to a result, slider, download link)."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

import reprfn  # noqa: E402
from reprfn.checkpoint import bundled_weights  # noqa: E402
from reprfn.cli import build_parser  # noqa: E402
from reprfn.serve import create_app  # noqa: E402
from tests.browser import Chromium, chromium_or_skip, not_blank  # noqa: E402
from tests.helpers import assert_close_levels, asymmetric_photo, reference_sr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "src" / "reprfn" / "assets" / "astronaut.png"


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _photo(h: int = 24, w: int = 20) -> np.ndarray:
    return np.asarray(Image.open(ASTRONAUT).convert("RGB"))[100:100 + h, 90:90 + w].copy()


@pytest.fixture(scope="module")
def client():
    from starlette.testclient import TestClient

    return TestClient(create_app(device=torch.device("cpu")))


def _post(client, data: bytes, scale: str = "2", name: str = "x.png", mime: str = "image/png"):
    return client.post("/api/upscale", files={"image": (name, data, mime)}, data={"scale": scale})


# ------------------------------------------------------------------------------------------ API


def test_upscale_round_trip_matches_the_python_api(client):
    img = asymmetric_photo()[:24, :20].copy()
    r = _post(client, _png(img), "2", "photo.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"] == 'attachment; filename="photo_x2.png"'
    assert r.headers["x-reprfn-input-size"] == "20x24" and r.headers["x-reprfn-output-size"] == "40x48"
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    assert np.array_equal(out, reprfn.upscale(img, scale=2, device="cpu"))
    # and both are the bundled model's own output (a channel swap or flip on the way would show)
    assert_close_levels(out, reference_sr(reprfn.load_model(bundled_weights(2)), img), 0.005)


@pytest.mark.parametrize("scale", ["3", "4"])
def test_other_scales_and_image_kinds(client, scale):
    rgba = np.dstack([_photo(12, 10), np.full((12, 10), 128, np.uint8)])
    r = _post(client, _png(rgba), scale)
    out = Image.open(io.BytesIO(r.content))
    s = int(scale)
    assert r.status_code == 200 and out.mode == "RGBA" and out.size == (10 * s, 12 * s)
    grey = _post(client, _png(_photo(12, 10)[..., 0], "JPEG"), scale, "g.jpg", "image/jpeg")
    assert grey.status_code == 200 and Image.open(io.BytesIO(grey.content)).mode == "L"


@pytest.mark.parametrize("data,status,message", [
    (b"", 400, "empty"),
    (b"this is not an image", 415, "PNG, JPEG, WebP, BMP or TIFF"),
    ("gif", 415, "PNG, JPEG, WebP, BMP or TIFF"),
    ("truncated", 415, "x.png: not a readable image (image file is truncated"),
])
def test_bad_files_are_4xx_with_a_clear_message(client, data, status, message):
    if data == "gif":
        data = _png(_photo(), "GIF")
    elif data == "truncated":
        data = _png(_photo(64, 64))[:300]
    r = _post(client, data)
    assert r.status_code == status and message in r.json()["error"]


def test_bad_requests(client):
    png = _png(_photo())
    bad_scale = _post(client, png, "5")
    assert bad_scale.status_code == 400 and "scale must be 2, 3 or 4" in bad_scale.json()["error"]
    r = client.post("/api/upscale", data={"scale": "2"})  # no file: not even multipart
    assert r.status_code == 400 and "multipart" in r.json()["error"]
    r = client.post("/api/upscale", files={"other": ("x.png", png, "image/png")}, data={"scale": "2"})
    assert r.status_code == 400 and "'image'" in r.json()["error"]
    assert client.get("/api/upscale").status_code == 405


def test_limits_on_upload_size_and_image_dimensions():
    from starlette.testclient import TestClient

    small = TestClient(create_app(max_upload_bytes=4000, max_pixels=30 * 30, max_side=40))
    big_file = _png(np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8))
    r = _post(small, big_file)
    assert r.status_code == 413 and "over the limit of 4 KB" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n"
        for _ in range(10):
            yield b"\0" * 1000
    r = small.post("/api/upscale", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413

    r = _post(small, _png(np.zeros((31, 31, 3), np.uint8)))  # a small file of too many pixels
    assert r.status_code == 413 and "31x31" in r.json()["error"] and "900 pixels" in r.json()["error"]
    r = _post(small, _png(np.zeros((2, 41, 3), np.uint8)))  # few pixels, too wide
    assert r.status_code == 413 and "40 pixels a side" in r.json()["error"]
    assert small.get("/api/info").json() == {"scales": [2, 3, 4], "max_upload_bytes": 4000, "max_pixels": 900,
                                             "max_side": 40, "max_queue": 2, "running": 0, "waiting": 0}


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'type="file"' in page and 'name="scale"' in page and 'class="ba"' in page and "api/upscale" in page
    assert "{{" not in page  # every placeholder filled
    assert not re.search(r"https?://|<link(?! rel=\"icon\" href=\"data:,\")|<script[^>]+src=|@import", page)


def test_serve_binds_to_loopback_by_default():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.max_pixels, args.max_queue) == ("127.0.0.1", 8000, 300_000, 2)


# ------------------------------------------------------------------------- a real uvicorn server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """``reprfn serve`` itself, in a subprocess, on a free port of 127.0.0.1."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reprfn", "serve", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/info", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"reprfn serve did not come up: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def chromium() -> tuple[str, str]:
    return chromium_or_skip()  # before the server starts: no server for a test that skips


def test_page_in_chromium_upload_round_trip(chromium, served, tmp_path):
    src = tmp_path / "crop.png"
    Image.fromarray(_photo(48, 64)).save(src)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    browser = Chromium(tmp_path / "profile", 1000, 800)
    try:
        browser.navigate(served + "/")
        assert browser.js("performance.getEntriesByType('resource').length") == 0  # all inline
        assert not_blank(browser.screenshot(), 5.0)
        assert browser.js("document.getElementById('go').disabled")

        # a file that is not an image: the server's message is shown
        browser.set_files("#file", [str(bad)])
        browser.wait_for("!document.getElementById('go').disabled", 10)
        browser.js("document.getElementById('go').click()")
        browser.wait_for("document.getElementById('status').classList.contains('error')", 30)
        assert "PNG, JPEG, WebP, BMP or TIFF" in browser.js("document.getElementById('status').textContent")

        # a real picture, x2: choose it, pick the scale with the mouse, press Upscale
        browser.set_files("#file", [str(src)])
        browser.wait_for("document.getElementById('chosen').textContent.startsWith('crop.png')", 10)
        box = browser.box(".scales label:first-child")
        browser.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert browser.js("document.querySelector('input[name=scale]:checked').value") == "2"
        box = browser.box("#go")
        browser.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        browser.wait_for("document.getElementById('compare').dataset.ready === '1'", 60)
        assert browser.js("document.querySelector('#compare .after').naturalWidth") == 128
        assert browser.js("document.querySelector('#compare .after').naturalHeight") == 96
        assert browser.js("document.getElementById('status').textContent").startswith("Done: 64x48 → 128x96")
        link = browser.js("(() => { const a = document.getElementById('download'); return [a.href, a.download]; })()")
        assert link[0].startswith("blob:") and link[1] == "crop_x2.png"
        # the downloadable bytes are the server's PNG
        size = browser.js("fetch(document.getElementById('download').href).then(r => r.blob())"
                          ".then(b => createImageBitmap(b)).then(i => [i.width, i.height])")
        assert size == [128, 96]
        assert browser.js("document.getElementById('progress').hidden")

        # the slider moves under the mouse
        box = browser.box("#compare")
        y = box["y"] + box["height"] / 2
        browser.drag(box["x"] + box["width"] * 0.5, y, box["x"] + box["width"] * 0.8, y)
        assert 75 < browser.js("BA.position(document.getElementById('compare'))") < 85
        shot = browser.screenshot()
        assert not_blank(shot)
        Image.fromarray(shot).save(tmp_path / "serve.png")

        # dropping a file on the drop zone chooses it, as the file picker does
        browser.js("""(async () => {
            const blob = await (await fetch(document.getElementById('download').href)).blob();
            const dt = new DataTransfer();
            dt.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
            document.getElementById('drop').dispatchEvent(
                new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        })()""")
        browser.wait_for("document.getElementById('chosen').textContent.startsWith('dropped.png')", 10)
    finally:
        browser.close()
