"""``reprfn eval --report FILE.html``: one self-contained HTML page that shows the difference.

Per image, side-by-side crops (LR nearest-neighbour, bicubic, each model evaluated, HR) at the
places where the models differ most, a before/after slider over a larger region, the per-image
scores; for the run, the metrics table and plots of PSNR against parameters, MACs and CPU time.
Everything is inline: images as base64 WebP (lossless) or PNG data URIs, CSS, JS and SVG plots.
The file makes no request of any kind, so it opens offline in any browser.

Crop places. With two or more learned models, the difference map is the spread (standard
deviation) of their Y channels at each pixel (bicubic joins them only when fewer than two learned
models are evaluated); with a single model, it is that model's absolute Y error. The map is summed over crop-sized windows (on the
scale's grid, so an LR crop maps exactly onto the HR crop) and the largest windows that do not
overlap are taken, ignoring the ``scale``-pixel border that the metrics ignore too.

Costs. Parameters are counted on the deploy (fused) form; MACs for a 1280x720 output, the NTIRE
efficient-SR convention, by ``reprfn.profile.count`` (the challenge's counter) when that module is
there, else by this module's own small counter: a forward hook on every ``Conv2d`` (output
elements x in_channels / groups x kh x kw), on the ``meta`` device (no arithmetic); CPU time is
the best of 5 forwards of a 128x128 LR input after one warm-up, on this machine's CPU with
PyTorch's current thread count, the models taking turns.
"""

from __future__ import annotations

import base64
import copy
import datetime as _dt
import html
import io
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .evaluate import DatasetResult, Pair
from .metrics import psnr, rgb_to_y
from .profile import count
from .resize import imresize

CROP_HR = 48  # crop side in HR pixels (a multiple of 2, 3 and 4)
CROP_ZOOM = 3  # crops are shown at 3x, pixelated
N_CROPS = 3
REGION_HR = 192  # the before/after slider's region, HR pixels (a multiple of 2, 3 and 4)
MAX_IMAGES = 16  # images per data set shown with pictures (all are in the tables)
MAC_OUTPUT = (720, 1280)  # MACs are counted for an output of this size (H, W): NTIRE's convention
TIME_LR = 128  # CPU time is measured on a TIME_LR x TIME_LR LR input
WEB_DIR = Path(__file__).parent / "web"


# ----------------------------------------------------------------------------------------------
# What a run gives the report
# ----------------------------------------------------------------------------------------------


@dataclass
class Column:
    """One evaluated model (one ``-w``): its label and what it costs."""

    label: str
    weights: str
    arch: str
    params: int | None = None  # None: not a network (bicubic)
    macs: int | None = None
    cpu_ms: float | None = None
    mac_counter: str = ""

    @property
    def is_bicubic(self) -> bool:
        return self.arch == "bicubic"


@dataclass
class Sample:
    """The pictures of one test image: HR, LR and each column's SR output (uint8)."""

    dataset: str
    name: str
    hr: np.ndarray
    lr: np.ndarray
    sr: dict[str, np.ndarray] = field(default_factory=dict)


class Collector:
    """Keeps the pictures of the first ``max_images`` images of each data set, for every column.

    ``hook(label, dataset)`` is the ``on_image`` callback of ``evaluate_dataset``.
    """

    def __init__(self, max_images: int = MAX_IMAGES) -> None:
        self.max_images = max_images
        self.samples: dict[tuple[str, str], Sample] = {}
        self._seen: dict[tuple[str, str], int] = {}

    def hook(self, label: str, dataset: str) -> Callable[[Pair, np.ndarray, np.ndarray, np.ndarray], None]:
        def on_image(pair: Pair, hr: np.ndarray, lr: np.ndarray, sr: np.ndarray) -> None:
            count = self._seen.get((label, dataset), 0)
            self._seen[(label, dataset)] = count + 1
            if count >= self.max_images:
                return
            sample = self.samples.setdefault((dataset, pair.name), Sample(dataset, pair.name, hr, lr))
            sample.sr[label] = sr

        return on_image


def column_labels(weights: Sequence[str]) -> list[str]:
    """Short unique labels: ``bicubic``, else the file stem, with parent folders where stems repeat."""
    parts = [Path(w).with_suffix("").parts if w != "bicubic" else ("bicubic",) for w in weights]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashing = [i for i, lab in enumerate(labels) if labels.count(lab) > 1 and depth[i] < len(parts[i])]
        if not clashing:
            break
        for i in clashing:
            depth[i] += 1
    if len(set(labels)) == len(labels):
        return labels
    return [f"{lab} ({i + 1})" for i, lab in enumerate(labels)]


# ----------------------------------------------------------------------------------------------
# Costs: parameters, MACs, CPU time
# ----------------------------------------------------------------------------------------------


def deploy_form(model: nn.Module) -> nn.Module:
    """The fused form of a model in training form (what is deployed and counted), else itself."""
    return model.fuse() if getattr(model, "form", None) == "train" else model


MAC_COUNTER = "the NTIRE challenge's conventions (reprfn.profile: conv MACs + ReLU-family outputs)"


def describe_columns(models: Sequence[tuple[str, str, nn.Module]], scale: int, repeats: int = 5) -> list[Column]:
    """Columns for (label, weights, model) with their costs (bicubic: CPU time only).

    CPU times are measured round-robin, one forward of each model per round, so that a burst of
    other work on the machine slows all of them alike; each keeps its best round.
    """
    columns, nets = [], []
    lr_size = (MAC_OUTPUT[0] // scale, MAC_OUTPUT[1] // scale)
    for label, weights, model in models:
        arch = getattr(model, "arch", type(model).__name__)
        if arch == "bicubic":
            columns.append(Column(label, weights, arch))
            nets.append(model)
            continue
        net = deploy_form(copy.deepcopy(model).cpu().float().eval())
        cost = count(net, (net.in_channels, *lr_size))
        columns.append(Column(label, weights, arch, cost.params, int(cost.macs), mac_counter=MAC_COUNTER))
        nets.append(net)
    best = [math.inf] * len(nets)
    inputs = [torch.rand(1, getattr(n, "in_channels", None) or 3, TIME_LR, TIME_LR,
                         generator=torch.Generator().manual_seed(0)) for n in nets]
    with torch.inference_mode():
        for round_ in range(repeats + 1):  # round 0 warms up
            for i, (net, x) in enumerate(zip(nets, inputs)):
                start = time.perf_counter()
                net(x)
                if round_:
                    best[i] = min(best[i], time.perf_counter() - start)
    for column, seconds in zip(columns, best):
        column.cpu_ms = seconds * 1000.0
    return columns


# ----------------------------------------------------------------------------------------------
# Where to look: the difference map and the crops
# ----------------------------------------------------------------------------------------------


def difference_map(sample: Sample, columns: Sequence[Column]) -> np.ndarray:
    """Per HR pixel, how much the models disagree (or, with one model, its error), on Y."""
    labels = [c.label for c in columns if c.label in sample.sr]
    learned = [c.label for c in columns if c.label in sample.sr and not c.is_bicubic]
    use = learned if len(learned) >= 2 else labels
    ys = [rgb_to_y(sample.sr[label]).astype(np.float32) for label in use]
    if len(ys) >= 2:
        return np.std(np.stack(ys), axis=0)
    return np.abs(ys[0] - rgb_to_y(sample.hr).astype(np.float32))


def choose_crops(diff: np.ndarray, size: int, count: int, step: int = 1, border: int = 0) -> list[tuple[int, int]]:
    """Top-left corners of up to ``count`` non-overlapping ``size`` windows with the largest sum
    of ``diff``, on a grid of ``step`` pixels; ``border`` pixels at the edges are not counted."""
    h, w = diff.shape
    size_y, size_x = min(size, h - h % step or h), min(size, w - w % step or w)
    d = diff.astype(np.float64).copy()
    if border:
        d[:border], d[h - border:], d[:, :border], d[:, w - border:] = 0, 0, 0, 0
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = d.cumsum(0).cumsum(1)
    ys = np.arange(0, h - size_y + 1, step)
    xs = np.arange(0, w - size_x + 1, step)
    sums = (integral[ys[:, None] + size_y, xs[None] + size_x] - integral[ys[:, None], xs[None] + size_x]
            - integral[ys[:, None] + size_y, xs[None]] + integral[ys[:, None], xs[None]])
    taken: list[tuple[int, int]] = []
    free = np.ones_like(sums, dtype=bool)
    while len(taken) < count and free.any():
        flat = np.where(free, sums, -np.inf).argmax()
        iy, ix = np.unravel_index(flat, sums.shape)
        y, x = int(ys[iy]), int(xs[ix])
        taken.append((y, x))
        free &= ~((np.abs(ys[:, None] - y) < size_y) & (np.abs(xs[None] - x) < size_x))
    return taken


def region_around(y: int, x: int, crop: int, region: int, shape: tuple[int, int], step: int) -> tuple[int, int, int, int]:
    """A ``region``-sized window (y, x, h, w) centred on a crop, inside the image, on the grid."""
    h, w = shape
    rh, rw = min(region, h - h % step or h), min(region, w - w % step or w)
    top = min(max(0, y + crop // 2 - rh // 2), h - rh) // step * step
    left = min(max(0, x + crop // 2 - rw // 2), w - rw) // step * step
    return top, left, rh, rw


# ----------------------------------------------------------------------------------------------
# HTML pieces
# ----------------------------------------------------------------------------------------------


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


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt_count(n: float | None) -> str:
    """401504 -> 402K, 2.21e10 -> 22.1G; None (not a network) -> a dash."""
    if n is None:
        return "—"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:g}"


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


SERIES_COLOURS = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2")


def svg_plot(title: str, xlabel: str, series: dict[str, list[tuple[float, float, str]]],
             xfmt: Callable[[float], str], width: int = 380, height: int = 260) -> str:
    """A scatter plot as inline SVG: PSNR (y) against a cost (x), one colour per data set."""
    left, right, top, bottom = 52, 14, 30, 44
    pts = [p for values in series.values() for p in values]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x_hi = max(xs) * 1.35 or 1.0  # room on the right for labels
    y_lo, y_hi = min(ys), max(ys)
    pad = max(0.25, (y_hi - y_lo) * 0.12)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + pw * v / x_hi

    def sy(v: float) -> float:
        return top + ph * (1 - (v - y_lo) / (y_hi - y_lo))

    out = [f'<svg class="plot" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
           f'<title>{_esc(title)}</title>',
           f'<text x="{left}" y="18" class="plot-title">{_esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot-frame"/>']
    for t in _nice_ticks(0, x_hi):
        if t > x_hi:
            continue
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                   f'<text x="{sx(t):.1f}" y="{top + ph + 14}" class="tick" text-anchor="middle">{_esc(xfmt(t))}</text>')
    for t in _nice_ticks(y_lo, y_hi):
        if not y_lo <= t <= y_hi:
            continue
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                   f'<text x="{left - 5}" y="{sy(t) + 4:.1f}" class="tick" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" class="axis" text-anchor="middle">{_esc(xlabel)}</text>')
    out.append(f'<text transform="translate(13 {top + ph / 2}) rotate(-90)" class="axis" text-anchor="middle">PSNR-Y (dB)</text>')
    placed: list[tuple[float, float, float, float]] = []  # label boxes, to keep labels apart
    for i, (name, values) in enumerate(series.items()):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        for x, y, label in values:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4.5" fill="{colour}">'
                       f'<title>{_esc(label)} · {_esc(name)}: {y:.2f} dB, {_esc(xfmt(x))}</title></circle>')
            if i == 0:
                out.append(_point_label(label, sx(x), sy(y), placed, (left, top, left + pw, top + ph), width))
    if len(series) > 1:  # bottom right, where costly and poor models would be: usually empty
        names = list(series)
        box_w = 24 + 5.2 * max(len(n) for n in names)
        box_h = 6 + 13 * len(names)
        x0, y0 = left + pw - box_w - 4, top + ph - box_h - 4
        out.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{box_w:.1f}" height="{box_h}" class="legend-box"/>')
        for i, name in enumerate(names):
            y = y0 + 10 + 13 * i
            out.append(f'<circle cx="{x0 + 9:.1f}" cy="{y:.1f}" r="4" fill="{SERIES_COLOURS[i % len(SERIES_COLOURS)]}"/>'
                       f'<text x="{x0 + 17:.1f}" y="{y + 3.5:.1f}" class="legend">{_esc(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _point_label(label: str, px: float, py: float, placed: list, frame: tuple, svg_width: float) -> str:
    """An SVG label beside a point: of a few spots around it, the nearest that overlaps no earlier
    label and stays in the plot (or, failing that, the one that overlaps least)."""
    width, height = 5.6 * len(label) + 2, 11.0
    right_first = px <= frame[0] + (frame[2] - frame[0]) * 0.6  # near the right edge: left side first
    candidates = []
    for dy in (-5, 13, -17, 25, -29, 37):
        for dx in ((7, -7) if right_first else (-7, 7)):
            candidates.append((dx, dy))

    def box_of(dx: float, dy: float) -> tuple[float, float, float, float]:
        x0 = px + dx if dx > 0 else px + dx - width
        return (x0, py + dy - height + 2, x0 + width, py + dy + 2)

    def overlap(a: tuple, b: tuple) -> float:
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    def cost(spot: tuple[int, int]) -> float:
        box = box_of(*spot)
        outside = (max(0.0, frame[0] - 40 - box[0]) + max(0.0, box[2] - svg_width + 2)
                   + max(0.0, frame[1] - 16 - box[1]) + max(0.0, box[3] - frame[3]))
        return sum(overlap(box, b) for b in placed) + 100 * outside

    dx, dy = min(candidates, key=lambda spot: (cost(spot) > 0, cost(spot)))  # first clear one, in order
    placed.append(box_of(dx, dy))
    anchor = "start" if dx > 0 else "end"
    return (f'<text x="{px + dx:.1f}" y="{py + dy:.1f}" class="point-label" '
            f'text-anchor="{anchor}">{_esc(label)}</text>')


def display_names(dirs: Sequence[str]) -> list[str]:
    """Data set names for people: ``Set5/x4`` rather than ``x4``, ``B100/HR`` rather than ``HR``."""
    from .evaluate import output_names

    names = output_names(dirs)
    out = []
    for d, name in zip(dirs, names):
        parts = Path(os.path.abspath(d)).parts
        generic = re.fullmatch(r"(x\d+|HR|LR|hr|lr|test|val)", Path(name).name) is not None
        out.append(str(Path(*parts[-2:])) if generic and len(Path(name).parts) < 2 and len(parts) >= 2 else name)
    return out


def _asset(name: str) -> str:
    return (WEB_DIR / name).read_text(encoding="utf-8")


@dataclass
class Run:
    """Everything the report shows: columns, results per (column label, data set), pictures."""

    scale: int
    columns: list[Column]
    results: list[tuple[str, DatasetResult]]  # (column label, result)
    samples: list[Sample]
    dataset_names: dict[str, str]  # data set as given -> short display name
    notes: list[str] = field(default_factory=list)


def _result(run: Run, label: str, dataset: str) -> DatasetResult | None:
    return next((r for lab, r in run.results if lab == label and r.dataset == dataset), None)


def _scores_table(run: Run) -> str:
    datasets = list(dict.fromkeys(r.dataset for _, r in run.results))
    head = "".join(f"<th>{_esc(c.label)}</th>" for c in run.columns)
    rows = []
    for ds in datasets:
        cells, best = [], -math.inf
        values = {}
        for c in run.columns:
            r = _result(run, c.label, ds)
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
        rows.append(f"<tr><th scope=row>{_esc(run.dataset_names.get(ds, ds))} <span class=n>({n})</span></th>{''.join(cells)}</tr>")
    return (f'<table class="scores"><thead><tr><th>data set (images)</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _models_table(run: Run) -> str:
    rows = []
    for c in run.columns:
        ms = f"{c.cpu_ms:,.1f}" if c.cpu_ms is not None else "—"
        rows.append(f"<tr><th scope=row>{_esc(c.label)}</th><td>{_esc(c.arch)}</td>"
                    f"<td>{'—' if c.params is None else f'{c.params:,}'}</td><td>{_fmt_count(c.macs)}</td><td>{ms}</td>"
                    f"<td class=path>{_esc(c.weights)}</td></tr>")
    return ('<table class="models"><thead><tr><th>model</th><th>architecture</th><th>parameters</th>'
            f"<th>MACs ({MAC_OUTPUT[1]}×{MAC_OUTPUT[0]} out)</th><th>CPU ms ({TIME_LR}² LR)</th><th>weights</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _counters(run: Run) -> str:
    return " and ".join(dict.fromkeys(c.mac_counter for c in run.columns if c.mac_counter)) or MAC_COUNTER


def _plots(run: Run) -> str:
    datasets = list(dict.fromkeys(r.dataset for _, r in run.results))
    plots = []
    for attr, title, xlabel, fmt in (
        ("params", "PSNR against parameters", "parameters", lambda v: _fmt_count(v)),
        ("macs", "PSNR against MACs", f"MACs, {MAC_OUTPUT[1]}×{MAC_OUTPUT[0]} output", lambda v: _fmt_count(v)),
        ("cpu_ms", "PSNR against CPU time", f"CPU ms, {TIME_LR}×{TIME_LR} LR input", lambda v: f"{v:g}"),
    ):
        series: dict[str, list[tuple[float, float, str]]] = {}
        for ds in datasets:
            pts = []
            for c in run.columns:
                r = _result(run, c.label, ds)
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
        r = _result(run, c.label, sample.dataset)
        img = next((i for i in (r.images if r else []) if i.name == sample.name), None)
        if img is not None:
            scores.append((c.label, img.psnr_y, img.ssim_y))
    best = max((p for _, p, _ in scores), default=None)
    pills = "".join(
        f'<span class="pill{" best" if p == best and len(scores) > 1 else ""}">{_esc(lab)} '
        f"<b>{p:.2f}</b> dB / {q:.4f}</span>" for lab, p, q in scores
    )

    # before/after slider over the region: every column stacked, two shown
    default_right = next((i for i, (_, _, kind) in enumerate(shown) if kind == "model"), len(shown) - 1)
    default_left = next((i for i, (_, _, kind) in enumerate(shown) if kind == "bicubic"), 0)
    layers = "".join(
        f'<img class="ba-layer" data-col="{i}" alt="{_esc(name)}" src="{data_uri(img[ry:ry + rh, rx:rx + rw])}">'
        for i, (name, img, _) in enumerate(shown)
    )
    options = "".join(f'<option value="{i}">{_esc(name)}</option>' for i, (name, _, _) in enumerate(shown))
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
    head = "".join(f"<th>{_esc(name)}</th>" for name, _, _ in shown)
    rows = []
    for y, x in crops:
        hr_crop = hr[y:y + CROP_HR, x:x + CROP_HR]
        cells = []
        for name, img, kind in shown:
            crop = img[y:y + CROP_HR, x:x + CROP_HR]
            score = ("reference" if kind == "hr" else f"{psnr(crop, hr_crop, test_y_channel=True):.2f} dB")
            cells.append(f'<td><figure><img class="crop" alt="{_esc(name)} crop at ({x}, {y})" '
                         f'width="{crop.shape[1] * CROP_ZOOM}" height="{crop.shape[0] * CROP_ZOOM}" '
                         f'src="{data_uri(crop)}"><figcaption>{score}</figcaption></figure></td>')
        rows.append(f'<tr><th scope=row class="at">({x}, {y})</th>{"".join(cells)}</tr>')
    crops_table = (f'<table class="crops"><thead><tr><th>crop at</th>{head}</tr></thead>'
                   f"<tbody>{''.join(rows)}</tbody></table>")

    h, w = hr.shape[:2]
    return (
        f'<article class="sample" id="img-{index}"><header><h3>{_esc(sample.name)}</h3>'
        f'<span class="dims">{w}×{h} (LR {lr.shape[1]}×{lr.shape[0]})</span>{pills}</header>'
        f'<div class="sample-body">{slider}<div class="crops-wrap">{crops_table}'
        f'<p class="hint">Crops ({CROP_HR}×{CROP_HR} HR pixels, shown {CROP_ZOOM}×) where the models differ most; '
        f"PSNR-Y of each crop against HR.</p></div></div></article>"
    )


def render(run: Run) -> str:
    """The report as one HTML string."""
    from . import __version__

    datasets = list(dict.fromkeys(r.dataset for _, r in run.results))
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
        sections.append(f'<section class="dataset"><h2>{_esc(run.dataset_names.get(ds, ds))}{_esc(more)}</h2>'
                        f"{''.join(parts)}</section>")
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    names = ", ".join(run.dataset_names.get(d, d) for d in datasets)
    notes = "".join(f"<li>{_esc(n)}</li>" for n in run.notes)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        # no request may leave the file: images are data: URIs, everything else is inline
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>reprfn report: x{run.scale}, {_esc(names)}</title>"
        f"<style>{_asset('slider.css')}{_asset('report.css')}</style></head><body>"
        f'<header class="top"><h1>Super-resolution x{run.scale}: {_esc(names)}</h1>'
        f'<p class="meta">{len(run.columns)} model{"s" if len(run.columns) != 1 else ""} · '
        f"Y-PSNR (dB) / SSIM on BT.601 luma, {run.scale}-pixel border cropped · reprfn {_esc(__version__)} · {when}</p></header>"
        f'<main><section><h2>Scores</h2>{_scores_table(run)}</section>'
        f'<section><h2>Models</h2>{_models_table(run)}'
        f'<p class="hint">Parameters and MACs of the deploy (fused) form; MACs for a '
        f"{MAC_OUTPUT[1]}×{MAC_OUTPUT[0]} output, counted with {_esc(_counters(run))}; CPU time: best of 5 forwards on this machine "
        f"({torch.get_num_threads()} threads). Bicubic is drawn at 0 parameters and 0 MACs.</p>"
        f"{_plots(run)}</section>"
        f"{''.join(sections)}"
        f"{f'<section><h2>Notes</h2><ul>{notes}</ul></section>' if notes else ''}"
        f"</main><script>{_asset('slider.js')}{_asset('report.js')}</script></body></html>"
    )


def write_report(path: str | os.PathLike, run: Run) -> Path:
    """Render ``run`` and write it to ``path`` atomically."""
    from .files import atomic_path

    path = Path(path)
    text = render(run)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def eval_report(path: str | os.PathLike, args, models: Sequence[tuple[str, str, nn.Module]],
                results: Sequence[tuple[str, DatasetResult]], collector: Collector) -> Path:
    """The report of a ``reprfn eval`` run: ``models`` are (label, weights, model) in ``-w`` order,
    ``results`` (weights, result) pairs in the same order, one per ``-d`` for each model."""
    columns = describe_columns(models, args.scale)
    # results come model by model, one per -d each
    labelled = [(models[i // len(args.dirs)][0], r) for i, (_, r) in enumerate(results)]
    dirs = list(dict.fromkeys(r.dataset for _, r in results))
    notes = []
    if args.self_ensemble:
        notes.append("Self-ensemble: each output is the mean of the 8 flips/rotations.")
    if args.tile:
        notes.append(f"Tiles of {args.tile} LR pixels (approximate for models with ESA).")
    notes.append("Greyscale images measured on themselves (--grey-as-y)." if not args.grey_as_rgb else
                 "Greyscale images measured as three equal channels (the published convention).")
    for label, result in labelled:
        notes += [f"{label}: {e}" for e in result.errors]
    run = Run(args.scale, columns, labelled, list(collector.samples.values()),
              dict(zip(dirs, display_names(dirs))), notes)
    return write_report(path, run)
