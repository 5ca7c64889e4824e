"""The report's plots: PSNR against a cost as an inline SVG scatter plot, one colour per data set,
each point labelled with its model where the label finds a free spot."""

from __future__ import annotations

import html
import math
from collections.abc import Callable

SERIES_COLOURS = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2")


def esc(text: object) -> str:
    """``text`` for HTML or SVG markup, quotes included."""
    return html.escape(str(text), quote=True)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
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
           f'<title>{esc(title)}</title>',
           f'<text x="{left}" y="18" class="plot-title">{esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot-frame"/>']
    for t in nice_ticks(0, x_hi):
        if t > x_hi:
            continue
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                   f'<text x="{sx(t):.1f}" y="{top + ph + 14}" class="tick" text-anchor="middle">{esc(xfmt(t))}</text>')
    for t in nice_ticks(y_lo, y_hi):
        if not y_lo <= t <= y_hi:
            continue
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                   f'<text x="{left - 5}" y="{sy(t) + 4:.1f}" class="tick" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" class="axis" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text transform="translate(13 {top + ph / 2}) rotate(-90)" class="axis" '
               'text-anchor="middle">PSNR-Y (dB)</text>')
    placed: list[tuple[float, float, float, float]] = []  # label boxes, to keep labels apart
    for i, (name, values) in enumerate(series.items()):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        for x, y, label in values:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4.5" fill="{colour}">'
                       f'<title>{esc(label)} · {esc(name)}: {y:.2f} dB, {esc(xfmt(x))}</title></circle>')
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
            colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
            out.append(f'<circle cx="{x0 + 9:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>'
                       f'<text x="{x0 + 17:.1f}" y="{y + 3.5:.1f}" class="legend">{esc(name)}</text>')
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
            f'text-anchor="{anchor}">{esc(label)}</text>')
