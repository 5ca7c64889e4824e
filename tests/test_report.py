"""``reprfn eval --report``: crop places, costs, the self-contained HTML, and the page in Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from reprfn import build, load_model, save_model
from reprfn.checkpoint import bundled_weights
from reprfn.cli import main
from reprfn.models import fuse
from reprfn.profile import count
from reprfn.report import (
    Column,
    Sample,
    choose_crops,
    column_labels,
    difference_map,
    display_names,
    region_around,
    svg_plot,
)
from tests.browser import Chromium, not_blank
from tests.helpers import randomize

SCALE = 2


def _image(seed: int, h: int = 48, w: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BICUBIC))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("w")
    out = []
    for seed, name in ((0, "tiny_a.safetensors"), (1, "tiny_b.safetensors")):
        model = randomize(build("reprfn", scale=SCALE, channels=8, blocks=1, esa_channels=4), seed=seed, gain=0.3)
        out.append(save_model(model, folder / name))
    return out


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("data")
    dirs = []
    for d, seeds in (("SetA", (1, 2)), ("SetB", (3,))):
        for seed in seeds:
            path = root / d / "HR" / f"im{seed}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(seed)).save(path)
        dirs.append(root / d / "HR")
    return dirs


@pytest.fixture(scope="module")
def report(tiny_weights, data_dirs, tmp_path_factory) -> tuple[Path, dict, int]:
    out = tmp_path_factory.mktemp("report")
    argv = ["eval", "-w", "bicubic", "-w", str(tiny_weights[0]), "-w", str(tiny_weights[1]),
            "-d", str(data_dirs[0]), "-d", str(data_dirs[1]), "-s", str(SCALE), "--device", "cpu",
            "--json", str(out / "r.json"), "--report", str(out / "r.html")]
    code = main(argv)
    return out / "r.html", json.loads((out / "r.json").read_text()), code


# ---------------------------------------------------------------------------------------- units


def test_crops_go_where_the_models_differ():
    hr = _image(0, 96, 96)
    a = hr.copy()
    b = hr.copy()
    b[50:62, 20:34] = 255 - b[50:62, 20:34]  # the only place the two models disagree
    sample = Sample("d", "x.png", hr, hr[::2, ::2], {"a": a, "b": b, "bicubic": hr})
    cols = [Column("bicubic", "bicubic", "bicubic"), Column("a", "a", "reprfn"), Column("b", "b", "reprfn")]
    diff = difference_map(sample, cols)  # two learned models: bicubic does not count
    assert diff[55, 25] > 0 and diff[10, 80] == 0
    crops = choose_crops(diff, 24, 3, step=4, border=2)
    y, x = crops[0]
    assert y <= 50 and y + 24 >= 62 and x <= 20 and x + 24 >= 34 and y % 4 == 0 and x % 4 == 0
    assert len(crops) == 3 and len(set(crops)) == 3
    for i, (y0, x0) in enumerate(crops):  # never overlapping
        for y1, x1 in crops[i + 1:]:
            assert abs(y0 - y1) >= 24 or abs(x0 - x1) >= 24
    ry, rx, rh, rw = region_around(y, x, 24, 64, hr.shape[:2], 4)
    assert (rh, rw) == (64, 64) and ry <= y and ry + 64 >= y + 24 and ry % 4 == 0 and rx % 4 == 0


def test_one_model_crops_follow_its_error():
    hr = np.full((40, 40, 3), 120, np.uint8)
    sr = hr.copy()
    sr[30:36, 4:10] = 0
    sample = Sample("d", "x.png", hr, hr[::2, ::2], {"m": sr})
    crops = choose_crops(difference_map(sample, [Column("m", "m", "reprfn")]), 12, 2, step=2)
    assert crops[0][0] <= 30 and crops[0][0] + 12 >= 36 and crops[0][1] <= 4


def test_crops_of_an_image_smaller_than_a_crop():
    crops = choose_crops(np.ones((10, 7)), 48, 3, step=2)
    assert crops == [(0, 0)]


def test_mac_counter_follows_the_conv_formula():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                        nn.Conv2d(8, 12, 1), nn.Conv2d(12, 4, 3, stride=2, padding=1))
    expected = 10 * 12 * (8 * 3 * 9 + 8 * 4 * 9 + 12 * 8) + 5 * 6 * 4 * 12 * 9
    assert count(net, (3, 10, 12)).macs == expected


def test_costs_are_counted_on_the_deploy_form():
    model = build("reprfn", scale=4)  # training form: nine branches per RepBlock
    fused = fuse(model)
    bundled = load_model(bundled_weights(4))
    assert fused.form == "deploy" and sum(p.numel() for p in fused.parameters()) == 401_504
    assert count(fused, (3, 180, 320)).macs == count(bundled, (3, 180, 320)).macs == 22_174_424_064


def test_columns_count_with_the_profile_module():
    import reprfn.report as report
    from reprfn.evaluate import Bicubic

    model = randomize(build("reprfn", scale=SCALE, channels=8, blocks=1, esa_channels=4))
    models = [("bicubic", "bicubic", Bicubic(SCALE)), ("m", "m.safetensors", model)]
    cols = report.describe_columns(models, SCALE, repeats=1)
    assert cols[0].params is None and cols[0].macs is None and 0 < cols[0].cpu_ms < 60_000
    fused = fuse(model)  # costs are those of the deploy form
    assert cols[1].params == sum(p.numel() for p in fused.parameters()) and 0 < cols[1].cpu_ms < 60_000
    assert cols[1].macs == count(fused, (3, 720 // SCALE, 1280 // SCALE)).macs
    assert cols[1].mac_counter == report.MAC_COUNTER


def test_labels_and_names():
    assert column_labels(["bicubic", "a/w.pth", "b/w.pth", "c/x.safetensors"]) == ["bicubic", "a/w", "b/w", "x"]
    assert column_labels(["w.pth", "w.pth"]) == ["w (1)", "w (2)"]
    assert display_names(["data/Set5/x4", "data/B100/HR", "data/urban"]) == ["Set5/x4", "B100/HR", "urban"]


def test_plot_is_inline_svg():
    svg = svg_plot("PSNR against parameters", "parameters",
                   {"Set5": [(0, 28.4, "bicubic"), (4e5, 32.2, "reprfn")], "Set14": [(0, 26.1, "bicubic")]}, str)
    assert svg.startswith("<svg") and svg.count("<circle") >= 3 and "reprfn" in svg and "Set14" in svg


# ----------------------------------------------------------------------------------- the report


def test_eval_with_several_weights_keeps_the_json_and_writes_the_report(report, tiny_weights, data_dirs):
    path, results, code = report
    assert code == 0
    entries = results["results"]
    weights = ["bicubic", str(tiny_weights[0]), str(tiny_weights[1])]
    assert [(e["weights"], e["dataset"]) for e in entries] == [
        (w, str(d)) for w in weights for d in data_dirs
    ]
    assert all(list(e) == ["dataset", "scale", "weights", "n_images", "psnr_y", "ssim_y", "psnr_rgb", "per_image",
                                 "errors"] and e["errors"] == []
               for e in entries)
    text = path.read_text()
    for label in ("bicubic", "tiny_a", "tiny_b", "SetA/HR", "SetB/HR", "LR (nearest)", "HR"):
        assert label in text
    assert text.count('<article class="sample"') == 3  # every image of both data sets
    assert text.count("<svg") == 3  # PSNR against params, MACs, CPU time
    assert text.count('class="crops"') == 3


def test_report_is_self_contained(report):
    text = report[0].read_text()
    # images are data: URIs, and nothing is loaded from anywhere
    srcs = re.findall(r'\bsrc="([^"]*)"', text)
    assert srcs and all(s.startswith(("data:image/webp;base64,", "data:image/png;base64,")) for s in srcs)
    assert not re.search(r"<link|<script[^>]+src=|@import|url\(|https?://", text)


def test_several_weights_save_outputs_apart(tiny_weights, data_dirs, tmp_path, capsys):
    save = tmp_path / "sr"
    code = main(["eval", "-w", str(tiny_weights[0]), "-w", "bicubic", "-d", str(data_dirs[1]), "-s", "2",
                 "--device", "cpu", "--save-dir", str(save)])
    out = capsys.readouterr().out
    assert code == 0 and out.count("weights: ") == 2
    assert (save / "tiny_a" / "HR" / "im3.png").is_file() and (save / "bicubic" / "HR" / "im3.png").is_file()


# ------------------------------------------------------------------------------------- Chromium


def test_report_in_chromium(report, tmp_path):
    browser = Chromium(tmp_path / "profile", 1280, 900)
    try:
        browser.navigate(report[0].as_uri())
        assert browser.js("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        assert browser.js("performance.getEntriesByType('resource').length") == 0  # nothing fetched
        shot = browser.screenshot()
        assert not_blank(shot)
        Image.fromarray(shot).save(tmp_path / "report.png")

        ba = ".sample .ba"
        left = "document.querySelector('.sample .ba-layer.left')"
        clip = f"getComputedStyle({left}).clipPath"
        assert browser.js(f"BA.position(document.querySelector('{ba}'))") == 50
        before = browser.js(clip)
        box = browser.box(ba)
        y = box["y"] + box["height"] / 2
        browser.drag(box["x"] + box["width"] * 0.5, y, box["x"] + box["width"] * 0.15, y)
        position = browser.js(f"BA.position(document.querySelector('{ba}'))")
        assert 10 < position < 25 and browser.js(clip) != before

        # the selects choose the columns: HR on the left
        browser.driver.execute_script("const s = document.querySelector('.sample .pick-left');"
                   "s.value = [...s.options].find(o => o.text === 'HR').value; s.dispatchEvent(new Event('change'))")
        assert browser.js(f"{left}.alt") == "HR"
        assert browser.js("document.querySelector('.sample .ba-tag.left').textContent").endswith("HR")
    finally:
        browser.close()
