"""How long the MATLAB-exact ``imresize`` takes to make one DIV2K-sized LR image (x4 down).

Run: ``.venv/bin/python benchmarks/resize_speed.py`` (prints the median of 5 runs).
It matters for HR-only evaluation (B100, Urban100) and for data pipelines that make LR on the fly.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from reprfn.resize import imresize

HEIGHT, WIDTH, SCALE, REPEATS = 1356, 2040, 1 / 4, 5


def main() -> None:
    img = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    imresize(img, SCALE)  # warm-up: builds and caches the resampling weights
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = imresize(img, SCALE)
        times.append(time.perf_counter() - start)
    print(f"imresize {WIDTH}x{HEIGHT} RGB uint8 -> {out.shape[1]}x{out.shape[0]} (x1/4): "
          f"median {statistics.median(times) * 1000:.0f} ms of {REPEATS} "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")


if __name__ == "__main__":
    main()
