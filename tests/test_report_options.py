"""``eval_report`` with a typed ``ReportOptions``: the options become the report's notes, and each
result is shown under the model that produced it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

import reprfn.report as report
from reprfn import build
from reprfn.evaluate import Bicubic, evaluate_dataset
from reprfn.report import Collector, ReportOptions, eval_report
from tests.helpers import randomize


def _evaluated(tmp_path: Path):
    dirs = []
    for i, name in enumerate(("SetA", "SetB")):
        folder = tmp_path / name / "HR"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
        Image.fromarray(np.array(Image.fromarray(small).resize((32, 32), Image.BICUBIC))).save(folder / "a.png")
        dirs.append(str(folder))
    model = randomize(build("reprfn", scale=2, channels=8, blocks=1, esa_channels=4), seed=0, gain=0.3)
    models = [("bicubic", "bicubic", Bicubic(2)), ("m", "m.safetensors", model)]
    collector = Collector()
    results = [(weights, evaluate_dataset(net, d, 2, on_image=collector.hook(label, d)))
               for label, weights, net in models for d in dirs]
    return models, results, collector


def _scores(text: str) -> list[list[str]]:
    """The PSNR cells of the scores table, row by row (one row per data set)."""
    table = re.search(r'<table class="scores">.*?</table>', text).group(0)
    rows = re.findall(r"<tr><th scope=row>.*?</tr>", table)
    return [re.findall(r"<td[^>]*>([\d.]+) <span class=ssim>", row) for row in rows]


def test_options_become_notes_and_results_stay_with_their_model(tmp_path, monkeypatch):
    timed = report.describe_columns
    monkeypatch.setattr(report, "describe_columns", lambda models, scale: timed(models, scale, repeats=1))
    models, results, collector = _evaluated(tmp_path)
    options = ReportOptions(2, self_ensemble=True, tile=16, grey_as_rgb=False)
    text = eval_report(tmp_path / "r.html", options, models, results, collector).read_text(encoding="utf-8")
    assert "Self-ensemble: each output is the mean of the 8 flips/rotations." in text
    assert "Tiles of 16 LR pixels (approximate for models with ESA)." in text
    assert "Greyscale images measured on themselves (--grey-as-y)." in text
    # results come model by model, one per data set: row d holds bicubic's and m's scores on set d
    expected = [[f"{results[m * 2 + d][1].mean('psnr_y'):.2f}" for m in range(2)] for d in range(2)]
    assert _scores(text) == expected and expected[0][0] != expected[0][1]

    plain = eval_report(tmp_path / "p.html", ReportOptions(2), models, results, collector).read_text(encoding="utf-8")
    assert "Self-ensemble" not in plain and "Tiles of" not in plain
    assert "Greyscale images measured as three equal channels (the published convention)." in plain
