"""Where to look: a map of where the models differ, the crops with most of it, and the larger
region around the first crop that the before/after slider shows.

With two or more learned models, the difference map is the spread (standard deviation) of their Y
channels at each pixel (bicubic joins them only when fewer than two learned models are evaluated);
with a single model, it is that model's absolute Y error. The map is summed over crop-sized
windows (on the scale's grid, so an LR crop maps exactly onto the HR crop) and the largest windows
that do not overlap are taken, ignoring the ``scale``-pixel border that the metrics ignore too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..metrics import rgb_to_y
from .run import Column, Sample

CROP_HR = 48  # crop side in HR pixels (a multiple of 2, 3 and 4)
N_CROPS = 3
REGION_HR = 192  # the before/after slider's region, HR pixels (a multiple of 2, 3 and 4)


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


def region_around(y: int, x: int, crop: int, region: int, shape: tuple[int, int],
                  step: int) -> tuple[int, int, int, int]:
    """A ``region``-sized window (y, x, h, w) centred on a crop, inside the image, on the grid."""
    h, w = shape
    rh, rw = min(region, h - h % step or h), min(region, w - w % step or w)
    top = min(max(0, y + crop // 2 - rh // 2), h - rh) // step * step
    left = min(max(0, x + crop // 2 - rw // 2), w - rw) // step * step
    return top, left, rh, rw
