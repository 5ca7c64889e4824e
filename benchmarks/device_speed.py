"""Inference speed on one device (a GPU above all), side by side in ONE run: the eager fp32 model
against the paths ``reprfn upscale`` takes there, for the frame sizes a video upscaler meets.

    python benchmarks/device_speed.py --device cuda                   # 180x320 -> 720p, 270x480 -> 1080p, x4
    python benchmarks/device_speed.py --device cuda --json out.json   # ... and the figures as JSON
    python benchmarks/device_speed.py --device cpu --sizes 24x32 --rounds 1   # the same code on a CPU (tests)

The model is the bundled x4 in its deploy form: the authors' deploy structure, so its eager fp32
forward in NCHW is the baseline (its weights do not change its speed). Variants, each timed in
every round, in turn, after one warm-up each (the device is synchronized around every call):

* ``eager fp32, NCHW``: the baseline;
* ``fp32, channels-last``; ``fp16 / bf16 autocast, channels-last``: ``TorchEngine``, what the
  runtime's ``prepare`` chooses on a GPU (fp16 is ``--precision auto`` there);
* ``reprfn.upscale(tensor)`` at the default precision: the whole API, with the input on the host
  and the output brought back to it (what a caller pays).

Reported per size: median ms, images/s and the median over rounds of baseline / variant in the
same round, plus the largest difference from the baseline's output (fp16/bf16 are not fp32).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import reprfn
from reprfn.checkpoint import bundled_weights
from reprfn.export import sample_image
from reprfn.images import read_image, to_tensor
from reprfn.runtime import hardware
from reprfn.runtime.engines import TorchEngine

Variant = Callable[[torch.Tensor], torch.Tensor]
BASELINE = "eager fp32, NCHW (the authors' deploy structure)"


def photo(h: int, w: int) -> torch.Tensor:
    """The sample photo at h x w (natural content: random noise drives these nets out of range)."""
    img = F.interpolate(to_tensor(read_image(sample_image())), size=(h, w), mode="bilinear", antialias=True,
                        align_corners=False)
    return img.clamp(0, 1).contiguous()


def variants(model: torch.nn.Module, device: torch.device) -> dict[str, tuple[Variant, bool]]:
    """name -> (callable taking a tensor on ``device``, or on the host when the flag is False)."""
    auto = hardware.resolve_precision("auto", device)
    out: dict[str, tuple[Variant, bool]] = {
        BASELINE: (TorchEngine(model, device, "fp32"), True),
        "fp32, channels-last": (TorchEngine(model, device, "fp32", channels_last=True), True),
        "fp16 autocast, channels-last": (TorchEngine(model, device, "fp16", channels_last=True), True),
        "bf16 autocast, channels-last": (TorchEngine(model, device, "bf16", channels_last=True), True),
        f"reprfn.upscale(host tensor), default ({auto}), tile 0": (
            lambda t: reprfn.upscale(t, model=model, tile=0, device=device), False),
    }
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def run_size(model: torch.nn.Module, device: torch.device, h: int, w: int, rounds: int) -> dict:
    host = photo(h, w)
    on_device = host.to(device)
    fns = variants(model, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        ref = fns[BASELINE][0](on_device).float().cpu()
        diffs = {name: (fn(on_device if dev else host).float().cpu() - ref).abs().max().item()
                 for name, (fn, dev) in fns.items()}
        for _ in range(rounds):
            for name, (fn, dev) in fns.items():
                x = on_device if dev else host
                sync(device)
                t = time.perf_counter()
                fn(x)
                sync(device)
                times[name].append(time.perf_counter() - t)
    base = times[BASELINE]
    rows = [{"variant": name, "ms": statistics.median(ts) * 1000, "images_per_s": 1 / statistics.median(ts),
             "speedup": statistics.median(b / t for b, t in zip(base, ts, strict=True)), "max_abs_diff": diffs[name]}
            for name, ts in times.items()]
    return {"lr": f"3x{h}x{w}", "hr": f"3x{4 * h}x{4 * w}", "rows": rows}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return hardware.cpu_name() if device.type == "cpu" else device.type


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="180x320,270x480", help="LR sizes HxW, comma-separated (x4 out)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    device = hardware.resolve_device(args.device)
    model = reprfn.load_model(bundled_weights(4)).eval().to(device)
    print(f"{device_name(device)} ({device}), torch {torch.__version__}, {args.rounds} rounds; "
          f"the bundled x4, deploy form")
    results = []
    for size in args.sizes.split(","):
        h, w = map(int, size.split("x"))
        res = run_size(model, device, h, w, args.rounds)
        results.append(res)
        print(f"\n{res['lr']} -> {res['hr']}")
        print(f"  {'variant':<58} {'ms':>8} {'images/s':>9} {'speed-up':>9} {'max|diff|':>10}")
        for r in res["rows"]:
            print(f"  {r['variant']:<58} {r['ms']:8.2f} {r['images_per_s']:9.1f} {r['speedup']:8.2f}x "
                  f"{r['max_abs_diff']:10.1e}")
    if args.json:
        args.json.write_text(json.dumps({"device": device_name(device), "torch": torch.__version__,
                                         "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
