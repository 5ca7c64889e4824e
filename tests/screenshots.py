"""Regenerate the screenshots of the README and the docs (not a test; needs chromium).

    .venv/bin/python -m tests.screenshots

docs/report.png: ``reprfn eval --report`` on the bundled sample photo (public domain) at x4 with
bicubic and the bundled model: nothing from third-party data or weights ends up in the docs.
docs/serve.png: ``reprfn serve`` after a x4 upscale of the bundled sample photo. Screenshots are
reduced to 256 colours to stay small.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

from reprfn.checkpoint import bundled_weights
from reprfn.cli import main
from tests.browser import Chromium

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _save(pixels, path: Path, width: int | None = None) -> None:
    im = Image.fromarray(pixels)
    if width and im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path}: {im.width}x{im.height}, {path.stat().st_size // 1024} KB")


def report_shot(tmp: Path) -> None:
    sample = tmp / "sample"
    sample.mkdir()
    (sample / "astronaut.png").write_bytes((ROOT / "src" / "reprfn" / "assets" / "astronaut.png").read_bytes())
    html = tmp / "report.html"
    main(["eval", "-w", "bicubic", "-w", os.path.relpath(bundled_weights(4)), "-d", str(sample), "-s", "4",
          "--device", "cpu", "--report", str(html)])
    browser = Chromium(tmp / "profile-report", 1240, 1500)
    try:
        browser.navigate(html.as_uri())
        # the slider a little left of the middle, to show both sides of the first comparison
        browser.driver.execute_script("const r = document.querySelector('.sample .ba-range'); r.value = 42;"
                   "r.dispatchEvent(new Event('input'))")
        time.sleep(0.3)
        _save(browser.screenshot(), DOCS / "report.png", 1000)
    finally:
        browser.close()


def serve_shot(tmp: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "reprfn", "serve", "--port", str(port), "--device", "cpu"],
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    browser = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        browser = Chromium(tmp / "profile-serve", 1000, 860)
        browser.navigate(f"http://127.0.0.1:{port}/")
        browser.set_files("#file", [str(ROOT / "src" / "reprfn" / "assets" / "astronaut.png")])
        browser.wait_for("!document.getElementById('go').disabled", 10)
        browser.js("document.getElementById('go').click()")
        browser.wait_for("document.getElementById('compare').dataset.ready === '1'", 120)
        browser.driver.execute_script("const r = document.querySelector('#compare .ba-range'); r.value = 45;"
                   "r.dispatchEvent(new Event('input')); window.scrollTo(0, 0)")
        time.sleep(0.3)
        _save(browser.screenshot(), DOCS / "serve.png", 800)
    finally:
        if browser is not None:
            browser.close()
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        report_shot(Path(folder))
        serve_shot(Path(folder))
