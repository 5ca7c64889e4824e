"""Models by name: the registry, and the whole download path against a loopback HTTP server.

Nothing here reaches the network: every URL points at an ``http.server`` on 127.0.0.1 that serves
real or synthetic files and misbehaves on request (404, redirect, short body, stall).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprfn import hub, load_model, save_model
from reprfn.cli import main
from reprfn.errors import CheckpointError, DownloadError, UsageError
from reprfn.models import build
from tests.helpers import randomize, shared_path

README = Path(__file__).resolve().parents[1] / "README.md"


class Handler(http.server.BaseHTTPRequestHandler):
    """``/<kind>/<file>``: good, missing (404), redirect (302 to good), truncated (Content-Length
    longer than the body, then the connection closes), stall (100 bytes, then nothing)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append((self.path, self.headers.get("User-Agent", "")))
        kind, _, name = self.path.strip("/").partition("/")
        body = server.files.get(name)
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", f"/good/{name}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if body is None or kind not in ("good", "truncated", "stall"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "good":
            self.wfile.write(body)
        elif kind == "truncated":
            self.wfile.write(body[: len(body) // 2])
        else:
            self.wfile.write(body[:100])
            self.wfile.flush()
            server.release.wait(10)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.files, httpd.requests, httpd.release = {}, [], threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty cache."""
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(hub.TIMEOUT_ENV, raising=False)
    return tmp_path / "cache" / "models"


@pytest.fixture
def small(tmp_path) -> bytes:
    """A real (small, random) x2 checkpoint, as bytes to serve."""
    model = randomize(build("reprfn", scale=2, channels=8, blocks=2, esa_channels=4)).fuse()
    return save_model(model, tmp_path / "small.safetensors").read_bytes()


def entry_for(server, body: bytes, kind: str = "good", name: str = "test-x2", **changes) -> hub.ModelEntry:
    """A registry entry for ``body`` served at ``/<kind>/<name>.safetensors``, registered as ``name``."""
    file = f"{name}.safetensors"
    server.files[file] = body
    entry = hub.ModelEntry(name, 2, "reprfn", 0, (0.0, 0.0, 0.0), "MIT", "test", file,
                           url=f"{server.url}/{kind}/{file}", sha256=hashlib.sha256(body).hexdigest(),
                           size=len(body))
    return replace(entry, **changes)


def register(monkeypatch, entry: hub.ModelEntry) -> hub.ModelEntry:
    monkeypatch.setitem(hub.MODELS, entry.name, entry)
    return entry


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# ------------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n, e in hub.MODELS.items() if not e.bundled])
def test_registry_hashes_are_the_real_files(name):
    entry = hub.MODELS[name]
    path = shared_path("weights", "official", entry.file)
    assert path.stat().st_size == entry.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    model = load_model(path)
    assert (model.arch, model.scale) == (entry.arch, entry.scale)
    assert sum(p.numel() for p in model.parameters()) == entry.params


@pytest.mark.parametrize("name", [n for n, e in hub.MODELS.items() if e.bundled])
def test_bundled_entries_are_the_bundled_files(name):
    entry = hub.MODELS[name]
    model = load_model(name)
    assert hub.resolve_weights(name) == hub.local_path(entry) and hub.local_path(entry).is_file()
    assert (model.arch, model.scale, sum(p.numel() for p in model.parameters())) == (
        entry.arch, entry.scale, entry.params)


def test_authors_set5_score_is_what_the_file_measures():
    """The authors' x4 on Set5 (2 s); RFDN's figures were measured the same way, but take 20 s."""
    from reprfn.evaluate import evaluate_dataset

    entry = hub.MODELS["reprfn-authors-x4"]
    folder = shared_path("data", "benchmark", "Set5", "x4")
    result = evaluate_dataset(load_model(shared_path("weights", "official", entry.file)), folder, 4)
    assert not result.errors and abs(result.mean("psnr_y") - entry.psnr_y[0]) <= 0.005 + 1e-9


def test_readme_model_table_states_the_registry_scores():
    """The README's table of named models shows the registry's figures (test_bundled.py ties the
    bundled rows to the files, the test above the downloaded ones)."""
    text = README.read_text()
    for entry in hub.MODELS.values():
        row = re.search(rf"^\| `{re.escape(entry.name)}` \|.*$", text, re.M)
        assert row, f"README has no row for {entry.name}"
        assert all(f"{v:.2f}" in row.group(0) for v in entry.psnr_y), row.group(0)
        assert ("bundled" if entry.bundled else "downloaded on request") in row.group(0)


def test_models_lists_every_name_and_downloads_nothing(server, monkeypatch, capsys, small):
    register(monkeypatch, entry_for(server, small))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for entry in hub.MODELS.values():
        assert entry.name in out and (entry.url or entry.file) in out
    assert hub.MODELS["reprfn-authors-x4"].sha256 in out
    assert main(["models", "--json"]) == 0
    infos = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
    assert infos["test-x2"]["status"] == "downloaded on request" and infos["reprfn-x4"]["status"] == "bundled"
    bundled = hub.local_path(hub.MODELS["reprfn-x4"]).read_bytes()
    assert infos["reprfn-x4"]["sha256"] == hashlib.sha256(bundled).hexdigest()
    assert server.requests == []


# ------------------------------------------------------------------------------------------------
# Names and paths
# ------------------------------------------------------------------------------------------------

def test_an_existing_path_wins_over_a_name(server, monkeypatch, tmp_path, small):
    register(monkeypatch, entry_for(server, small, name="reprfn-authors-x4"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reprfn-authors-x4").write_bytes(small)
    assert hub.resolve_weights("reprfn-authors-x4") == Path("reprfn-authors-x4")
    assert load_model("reprfn-authors-x4").scale == 2 and server.requests == []


def test_an_unknown_name_lists_the_known_ones(capsys, tmp_path):
    with pytest.raises(CheckpointError, match=r"no such file or model name: nope; known models: reprfn-x2, "):
        hub.resolve_weights("nope")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["upscale", "-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "-w", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "known models: reprfn-x2" in err and "rfdn-ntire-x4" in err
    assert not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------------------------------------
# The download path
# ------------------------------------------------------------------------------------------------

def test_real_file_downloads_once_verifies_and_loads(server, monkeypatch, cache):
    real = shared_path("weights", "official", "reprfn_ntire_x4.pth").read_bytes()
    entry = register(monkeypatch, replace(hub.MODELS["reprfn-authors-x4"], url=f"{server.url}/redirect/x.pth"))
    server.files["x.pth"] = real
    model = load_model("reprfn-authors-x4")
    assert (model.arch, model.scale, model.form) == ("reprfn", 4, "deploy")
    assert [p for p, _ in server.requests] == ["/redirect/x.pth", "/good/x.pth"]  # the redirect was followed
    assert all(ua.startswith("reprfn/") for _, ua in server.requests)
    assert leftovers(cache) == [hub.cached_path(entry).name]
    assert hub.cached_path(entry).read_bytes() == real
    load_model("reprfn-authors-x4")
    assert len(server.requests) == 2  # the second use reads the cache


def test_good_download_then_cache(server, monkeypatch, cache, small, capsys):
    entry = register(monkeypatch, entry_for(server, small))
    assert load_model("test-x2").scale == 2
    assert "downloading test-x2" in capsys.readouterr().err
    assert load_model("test-x2").scale == 2 and len(server.requests) == 1
    assert leftovers(cache) == [hub.cached_path(entry).name]


def test_a_changed_cached_copy_is_fetched_again(server, monkeypatch, cache, small, capsys):
    entry = register(monkeypatch, entry_for(server, small))
    path = hub.resolve_weights("test-x2")
    path.write_bytes(small[:-1] + bytes([small[-1] ^ 1]))  # one bit flipped, same size
    capsys.readouterr()
    assert hub.resolve_weights("test-x2") == path and path.read_bytes() == small
    assert len(server.requests) == 2 and "is not the published test-x2 (SHA-256" in capsys.readouterr().err
    assert leftovers(cache) == [hub.cached_path(entry).name]


@pytest.mark.parametrize("kind,changes,message", [
    ("good", {"sha256": "0" * 64}, r"is not the published file \(SHA-256 [0-9a-f]{64}, expected 0{64}\): deleted"),
    ("good", {"size": 1000}, r"is not the published file \(more than 1,000 bytes\): deleted"),
    ("truncated", {}, r"cannot download test-x2 from http://127\.0\.0\.1:\d+/truncated/\S+ "
     r"\((the connection closed after [\d,]+ of [\d,]+ bytes|IncompleteRead.*)\); download "),
    ("missing", {}, r"cannot download test-x2 from .*/missing/test-x2\.safetensors \(HTTP 404 Not Found\)"),
])
def test_bad_downloads_leave_nothing(server, monkeypatch, cache, small, kind, changes, message):
    entry = register(monkeypatch, entry_for(server, small, kind, **changes))
    with pytest.raises(DownloadError, match=message) as info:
        load_model("test-x2")
    text = str(info.value)
    assert "\n" not in text and f"save it as {hub.cached_path(entry)}" in text and entry.url in text
    assert leftovers(cache) == []


def test_a_stalled_server_times_out(server, monkeypatch, cache, small):
    register(monkeypatch, entry_for(server, small, "stall"))
    monkeypatch.setenv(hub.TIMEOUT_ENV, "0.5")
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"no data from the server for 0\.5 s"):
        hub.resolve_weights("test-x2")
    assert time.monotonic() - start < 5 and leftovers(cache) == []


def test_no_server_at_all(monkeypatch, cache, small):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    entry = hub.ModelEntry("test-x2", 2, "reprfn", 0, (0.0, 0.0, 0.0), "MIT", "test", "t.safetensors",
                           url=f"http://127.0.0.1:{port}/t.safetensors", sha256="0" * 64, size=10)
    register(monkeypatch, entry)
    with pytest.raises(DownloadError, match=r"cannot download test-x2 .*\(Connection refused\); download http"):
        hub.resolve_weights("test-x2")
    assert leftovers(cache) == []


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_a_bad_timeout_setting_is_refused(monkeypatch, value):
    monkeypatch.setenv(hub.TIMEOUT_ENV, value)
    with pytest.raises(UsageError, match=hub.TIMEOUT_ENV):
        hub.download_timeout()


# ------------------------------------------------------------------------------------------------
# The command line and the Python API
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 12, 3), np.uint8)).save(path)
    return path


def test_cli_upscale_with_a_name(server, monkeypatch, cache, small, photo, tmp_path, capsys):
    register(monkeypatch, entry_for(server, small))
    out = tmp_path / "out.png"
    assert main(["upscale", "-i", str(photo), "-o", str(out), "-w", "test-x2"]) == 0
    assert Image.open(out).size == (24, 20) and len(server.requests) == 1


@pytest.mark.parametrize("kind", ["missing", "stall"])
def test_cli_upscale_when_the_download_fails(server, monkeypatch, cache, small, photo, tmp_path, capsys, kind):
    entry = register(monkeypatch, entry_for(server, small, kind))
    monkeypatch.setenv(hub.TIMEOUT_ENV, "0.5")
    out = tmp_path / "out.png"
    assert main(["upscale", "-i", str(photo), "-o", str(out), "-w", "test-x2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("reprfn: error: cannot download test-x2") and entry.url in err[-1]
    assert f"save it as {hub.cached_path(entry)}" in err[-1] and "Traceback" not in "\n".join(err)
    assert not out.exists() and leftovers(cache) == []


def test_api_upscale_with_a_name(server, monkeypatch, small):
    import reprfn

    register(monkeypatch, entry_for(server, small))
    img = np.zeros((6, 7, 3), np.uint8)
    assert reprfn.upscale(img, scale=None, model="test-x2").shape == (12, 14, 3)
    assert reprfn.upscale(img, scale=2, model="reprfn-x2").shape == (12, 14, 3)
    assert len(server.requests) == 1


def test_eval_and_info_take_names(server, monkeypatch, small, tmp_path, capsys):
    register(monkeypatch, entry_for(server, small))
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), np.uint8)).save(tmp_path / "hr.png")
    assert main(["eval", "-w", "test-x2", "-w", "reprfn-x2", "-d", str(tmp_path), "-s", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "weights: test-x2" in out and "weights: reprfn-x2" in out
    assert main(["info", "test-x2", "--json"]) == 0 and '"scale": 2' in capsys.readouterr().out
    assert len(server.requests) == 1


def test_serve_uses_the_named_model_for_its_scale(server, monkeypatch, small, capsys):
    """``reprfn serve -w NAME``: fetched and loaded before the server listens; that model answers
    its own scale, the bundled models the others; an unknown name fails before listening."""
    pytest.importorskip("starlette")
    import io

    from starlette.testclient import TestClient

    import reprfn
    import reprfn.serve as serve_module

    register(monkeypatch, entry_for(server, small))
    apps = []
    monkeypatch.setattr(serve_module, "listen_socket", lambda host, port: None)
    monkeypatch.setattr(serve_module, "serve", lambda app, sock: apps.append(app))
    assert main(["serve", "-w", "nope", "--device", "cpu"]) == 2 and apps == []
    assert "known models" in capsys.readouterr().err
    assert main(["serve", "-w", "test-x2", "--device", "cpu"]) == 0 and len(server.requests) == 1
    pixels = np.random.default_rng(2).integers(0, 256, (9, 11, 3), np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    client = TestClient(apps[0])
    for scale, model in (("2", "test-x2"), ("3", "reprfn-x3")):
        r = client.post("/api/upscale", files={"image": ("x.png", png.getvalue(), "image/png")}, data={"scale": scale})
        assert r.status_code == 200
        got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
        want = reprfn.upscale(pixels, scale=None, model=model, device="cpu", backend="torch", tile=0)
        assert np.abs(got.astype(int) - want).max() <= 1, scale
