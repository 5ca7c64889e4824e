"""Peak memory (RSS) of a 960x540 -> 3840x2160 x4 upscale with the bundled model, whole image vs
tiles, each in a fresh process so that one run's peak does not hide another's.

    python benchmarks/upscale_memory.py [--size 960x540] [--tiles 0,256,128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from reprfn import load_model
from reprfn.checkpoint import bundled_weights
from reprfn.runtime.run import run
w, h, tile = map(int, sys.argv[1:4])
torch.manual_seed(0)
model = load_model(bundled_weights(4))
x = torch.rand(1, 3, h, w)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
y = run(model, x, tile=tile)
print(json.dumps({"tile": tile, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mb": base / 1024, "out": list(y.shape)}))
"""


def measure(width: int, height: int, tile: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(width), str(height), str(tile)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="960x540")
    ap.add_argument("--tiles", default="0,256,128")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    print(f"x4 upscale of {width}x{height} -> {4 * width}x{4 * height}, bundled RepRFN, CPU, fp32")
    print(f"{'tile':>6}  {'peak RSS (MB)':>13}  {'model+input (MB)':>16}  {'seconds':>7}")
    for tile in map(int, args.tiles.split(",")):
        r = measure(width, height, tile)
        label = "whole" if tile == 0 else tile
        print(f"{label:>6}  {r['peak_rss_mb']:>13.0f}  {r['before_mb']:>16.0f}  {r['seconds']:>7.1f}")


if __name__ == "__main__":
    main()
