"""The report as one self-contained HTML page, and its atomic write.

Per image, side-by-side crops (LR nearest-neighbour, bicubic, each model evaluated, HR) at the
places where the models differ most (``crops``), a before/after slider over a larger region, the
per-image scores; for the run, the metrics table, the models' costs (``costs``) and plots of PSNR
against them (``svg``). Everything is inline: images as base64 WebP (lossless) or PNG data URIs,
CSS, JS and SVG plots. The file makes no request of any kind, so it opens offline in any browser.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..metrics import psnr
from ..resize import imresize
from .costs import MAC_COUNTER, MAC_OUTPUT, TIME_LR
from .crops import CROP_HR, N_CROPS, REGION_HR, choose_crops, difference_map, region_around
from .run import Run, Sample
from .svg import esc, svg_plot

CROP_ZOOM = 3  # crops are shown at 3x, pixelated
WEB_DIR = Path(__file__).parents[1] / "web"


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def data_uri(img: np.ndarray) -> str:
    """A uint8 image as a ``data:`` URI: lossless WebP (smaller), PNG where Pillow lacks WebP."""
    from PIL import Image, features

    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(img))
    if features.check("webp"):
        im.save(buf, format="WEBP", lossless=True, method=4, quality=80)
        mime = "image/webp"
    else:
        im.save(buf, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def fmt_count(n: float | None) -> str:
    """401504 -> 402K, 2.21e10 -> 22.1G; None (not a network) -> a dash."""
    if n is None:
        return "—"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:g}"


def _asset(name: str) -> str:
    return (WEB_DIR / name).read_text(encoding="utf-8")


def _scores_table(run: Run) -> str:
    datasets = run.datasets()
    head = "".join(f"<th>{esc(c.label)}</th>" for c in run.columns)
    rows = []
    for ds in datasets:
        cells, best = [], -math.inf
        values = {}
        for c in run.columns:
            r = run.result(c.label, ds)
            if r is not None and r.images:
                values[c.label] = (r.mean("psnr_y"), r.mean("ssim_y"), len(r.images))
                best = max(best, values[c.label][0])
        for c in run.columns:
            if c.label not in values:
                cells.append("<td>—</td>")
                continue
            p, s, _ = values[c.label]
            cls = ' class="best"' if p == best and len(values) > 1 else ""
            cells.append(f"<td{cls}>{p:.2f} <span class=ssim>/ {s:.4f}</span></td>")
        n = max((v[2] for v in values.values()), default=0)
        rows.append(f"<tr><th scope=row>{esc(run.dataset_names.get(ds, ds))} <span class=n>({n})</span></th>"
                    f"{''.join(cells)}</tr>")
    return (f'<table class="scores"><thead><tr><th>data set (images)</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _models_table(run: Run) -> str:
    rows = []
    for c in run.columns:
        ms = f"{c.cpu_ms:,.1f}" if c.cpu_ms is not None else "—"
        rows.append(f"<tr><th scope=row>{esc(c.label)}</th><td>{esc(c.arch)}</td>"
                    f"<td>{'—' if c.params is None else f'{c.params:,}'}</td><td>{fmt_count(c.macs)}</td><td>{ms}</td>"
                    f"<td class=path>{esc(c.weights)}</td></tr>")
    return ('<table class="models"><thead><tr><th>model</th><th>architecture</th><th>parameters</th>'
            f"<th>MACs ({MAC_OUTPUT[1]}×{MAC_OUTPUT[0]} out)</th><th>CPU ms ({TIME_LR}² LR)</th><th>weights</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _counters(run: Run) -> str:
    return " and ".join(dict.fromkeys(c.mac_counter for c in run.columns if c.mac_counter)) or MAC_COUNTER


def _plots(run: Run) -> str:
    datasets = run.datasets()
    plots = []
    for attr, title, xlabel, fmt in (
        ("params", "PSNR against parameters", "parameters", lambda v: fmt_count(v)),
        ("macs", "PSNR against MACs", f"MACs, {MAC_OUTPUT[1]}×{MAC_OUTPUT[0]} output", lambda v: fmt_count(v)),
        ("cpu_ms", "PSNR against CPU time", f"CPU ms, {TIME_LR}×{TIME_LR} LR input", lambda v: f"{v:g}"),
    ):
        series: dict[str, list[tuple[float, float, str]]] = {}
        for ds in datasets:
            pts = []
            for c in run.columns:
                r = run.result(c.label, ds)
                if r is None or not r.images or not math.isfinite(r.mean("psnr_y")):
                    continue
                value = getattr(c, attr)
                if value is None:  # bicubic: no parameters, no conv MACs
                    value = 0.0
                pts.append((float(value), r.mean("psnr_y"), c.label))
            if pts:
                series[run.dataset_names.get(ds, ds)] = pts
        plots.append(svg_plot(title, xlabel, series, fmt))
    return f'<div class="plots">{"".join(plots)}</div>'


def _nearest(lr: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)


def _sample_section(run: Run, sample: Sample, index: int) -> str:
    s = run.scale
    hr, lr = _rgb(sample.hr), _rgb(sample.lr)
    bicubic = _rgb(imresize(sample.lr, s))
    cols = [c for c in run.columns if c.label in sample.sr]
    shown: list[tuple[str, np.ndarray, str]] = [("LR (nearest)", _nearest(lr, s), "lr")]
    if not any(c.is_bicubic for c in cols):
        shown.append(("bicubic", bicubic, "bicubic"))
    shown += [(c.label, _rgb(sample.sr[c.label]), "bicubic" if c.is_bicubic else "model") for c in cols]
    shown.append(("HR", hr, "hr"))

    diff = difference_map(sample, cols)
    crops = choose_crops(diff, CROP_HR, N_CROPS, step=s, border=s)
    ry, rx, rh, rw = region_around(*crops[0], CROP_HR, REGION_HR, hr.shape[:2], s)

    # per-image scores
    scores = []
    for c in cols:
        r = run.result(c.label, sample.dataset)
        measured = next((i for i in (r.images if r else []) if i.name == sample.name), None)
        if measured is not None:
            scores.append((c.label, measured.psnr_y, measured.ssim_y))
    best = max((p for _, p, _ in scores), default=None)
    pills = "".join(
        f'<span class="pill{" best" if p == best and len(scores) > 1 else ""}">{esc(lab)} '
        f"<b>{p:.2f}</b> dB / {q:.4f}</span>" for lab, p, q in scores
    )

    # before/after slider over the region: every column stacked, two shown
    default_right = next((i for i, (_, _, kind) in enumerate(shown) if kind == "model"), len(shown) - 1)
    default_left = next((i for i, (_, _, kind) in enumerate(shown) if kind == "bicubic"), 0)
    layers = "".join(
        f'<img class="ba-layer" data-col="{i}" alt="{esc(name)}" src="{data_uri(img[ry:ry + rh, rx:rx + rw])}">'
        for i, (name, img, _) in enumerate(shown)
    )
    options = "".join(f'<option value="{i}">{esc(name)}</option>' for i, (name, _, _) in enumerate(shown))
    zoom = max(1, min(3, 480 // max(rh, rw)))
    slider = (
        f'<div class="compare" data-left="{default_left}" data-right="{default_right}">'
        f'<div class="compare-controls"><label>left <select class="pick-left">{options}</select></label>'
        f'<label>right <select class="pick-right">{options}</select></label>'
        f'<span class="where">region {rw}×{rh} at ({rx}, {ry}), {zoom}×</span></div>'
        f'<div class="ba" style="--pos: 50%; width: {rw * zoom}px; height: {rh * zoom}px">{layers}'
        f'<div class="ba-handle" aria-hidden="true"></div>'
        f'<input class="ba-range" type="range" min="0" max="100" step="0.1" value="50" '
        f'aria-label="before/after position"></div></div>'
    )

    # crops
    head = "".join(f"<th>{esc(name)}</th>" for name, _, _ in shown)
    rows = []
    for y, x in crops:
        hr_crop = hr[y:y + CROP_HR, x:x + CROP_HR]
        cells = []
        for name, img, kind in shown:
            crop = img[y:y + CROP_HR, x:x + CROP_HR]
            score = ("reference" if kind == "hr" else f"{psnr(crop, hr_crop, test_y_channel=True):.2f} dB")
            cells.append(f'<td><figure><img class="crop" alt="{esc(name)} crop at ({x}, {y})" '
                         f'width="{crop.shape[1] * CROP_ZOOM}" height="{crop.shape[0] * CROP_ZOOM}" '
                         f'src="{data_uri(crop)}"><figcaption>{score}</figcaption></figure></td>')
        rows.append(f'<tr><th scope=row class="at">({x}, {y})</th>{"".join(cells)}</tr>')
    crops_table = (f'<table class="crops"><thead><tr><th>crop at</th>{head}</tr></thead>'
                   f"<tbody>{''.join(rows)}</tbody></table>")

    h, w = hr.shape[:2]
    return (
        f'<article class="sample" id="img-{index}"><header><h3>{esc(sample.name)}</h3>'
        f'<span class="dims">{w}×{h} (LR {lr.shape[1]}×{lr.shape[0]})</span>{pills}</header>'
        f'<div class="sample-body">{slider}<div class="crops-wrap">{crops_table}'
        f'<p class="hint">Crops ({CROP_HR}×{CROP_HR} HR pixels, shown {CROP_ZOOM}×) where the models differ most; '
        f"PSNR-Y of each crop against HR.</p></div></div></article>"
    )


def render(run: Run) -> str:
    """The report as one HTML string."""
    from .. import __version__

    datasets = run.datasets()
    sections = []
    index = 0
    for ds in datasets:
        samples = [s for s in run.samples if s.dataset == ds]
        if not samples:
            continue
        total = max((len(r.images) for lab, r in run.results if r.dataset == ds), default=0)
        more = f" (the first {len(samples)} of {total}; all are in the tables)" if total > len(samples) else ""
        parts = []
        for sample in samples:
            parts.append(_sample_section(run, sample, index))
            index += 1
        sections.append(f'<section class="dataset"><h2>{esc(run.dataset_names.get(ds, ds))}{esc(more)}</h2>'
                        f"{''.join(parts)}</section>")
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    names = ", ".join(run.dataset_names.get(d, d) for d in datasets)
    notes = "".join(f"<li>{esc(n)}</li>" for n in run.notes)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        # no request may leave the file: images are data: URIs, everything else is inline
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>reprfn report: x{run.scale}, {esc(names)}</title>"
        f"<style>{_asset('slider.css')}{_asset('report.css')}</style></head><body>"
        f'<header class="top"><h1>Super-resolution x{run.scale}: {esc(names)}</h1>'
        f'<p class="meta">{len(run.columns)} model{"s" if len(run.columns) != 1 else ""} · '
        f"Y-PSNR (dB) / SSIM on BT.601 luma, {run.scale}-pixel border cropped · reprfn {esc(__version__)} · "
        f"{when}</p></header>"
        f'<main><section><h2>Scores</h2>{_scores_table(run)}</section>'
        f'<section><h2>Models</h2>{_models_table(run)}'
        f'<p class="hint">Parameters and MACs of the deploy (fused) form; MACs for a '
        f"{MAC_OUTPUT[1]}×{MAC_OUTPUT[0]} output, counted with {esc(_counters(run))}; "
        "CPU time: best of 5 forwards on this machine "
        f"({torch.get_num_threads()} threads). Bicubic is drawn at 0 parameters and 0 MACs.</p>"
        f"{_plots(run)}</section>"
        f"{''.join(sections)}"
        f"{f'<section><h2>Notes</h2><ul>{notes}</ul></section>' if notes else ''}"
        f"</main><script>{_asset('slider.js')}{_asset('report.js')}</script></body></html>"
    )


def write_report(path: str | os.PathLike, run: Run) -> Path:
    """Render ``run`` and write it to ``path`` atomically."""
    from ..files import atomic_path

    path = Path(path)
    text = render(run)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
