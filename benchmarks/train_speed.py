"""Training throughput (patches/s) of RepRFN x4 at batch 16, LR patch 48, measured side by side:
online fusion (our default), the multi-branch form (the authors' training), and the fused network
(a lower bound on the cost of any training form). Forward + 0.9 Charbonnier + 0.1 FFT + backward
+ Adam step.

    python benchmarks/train_speed.py [--steps 10] [--device cpu|cuda] [--amp none|bf16]
    python benchmarks/train_speed.py --device cuda --amp bf16 --resident --compile \
        --only online --batch 64,256,1024                # the GPU recipe (patches/s per batch)

``--amp bf16`` runs forward and loss under bfloat16 autocast (``train.amp: bf16``); on CPUs with
AVX512-BF16 or AMX this is where most of the CPU training speed comes from. ``--resident`` cuts
every step's batch on the device from uint8 images held there (``data.ResidentPatches``) and
counts that time; ``--compile`` runs the model through ``torch.compile``; channels-last follows
bf16 as in training.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch

from reprfn.data import Pair, ResidentPatches
from reprfn.losses import WeightedLoss
from reprfn.models import build, set_mode

Batches = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def throughput(model: torch.nn.Module, batches: Batches, steps: int, amp: torch.dtype | None = None,
               compile_model: bool = False) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    loss_fn = WeightedLoss({"charbonnier": 0.9, "fft": 0.1})
    model.train()
    run = torch.compile(model) if compile_model else model
    lr, _ = batches(0)

    def step(i: int) -> None:
        lr, hr = batches(i)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(lr.device.type, dtype=amp) if amp else nullcontext():
            loss = loss_fn(run(lr), hr)
        loss.backward()
        opt.step()

    for i in range(3 if compile_model else 2):
        step(i)
    if lr.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    if lr.is_cuda:
        torch.cuda.synchronize()
    return steps * lr.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", default="16", help="batch size, or several comma-separated")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    ap.add_argument("--resident", action="store_true", help="cut every batch on the device (data.ResidentPatches)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--only", default="", help="comma-separated variants: online, branches, fused")
    args = ap.parse_args()
    amp = torch.bfloat16 if args.amp == "bf16" else None
    torch.manual_seed(0)
    dev = torch.device(args.device)
    layout = torch.channels_last if amp is not None else torch.contiguous_format
    builders = {
        "online": lambda: set_mode(build("reprfn", scale=4), "online"),
        "branches": lambda: set_mode(build("reprfn", scale=4), "branches"),
        "fused": lambda: build("reprfn", scale=4).fuse().train().requires_grad_(True),
    }
    chosen = [v for v in builders if not args.only or v in args.only.split(",")]
    print(f"RepRFN x4, LR 48x48, {args.steps} timed steps, device {dev}, {torch.get_num_threads()} threads, "
          f"amp {args.amp}, resident {args.resident}, compile {args.compile}")
    for batch in (int(b) for b in args.batch.split(",")):
        batches = _batches(batch, dev, args.resident)
        results = {}
        for name in chosen:
            model = builders[name]().to(dev, memory_format=layout)
            results[name] = throughput(model, batches, args.steps, amp, args.compile)
            print(f"  batch {batch:5d}  {name:<9} {results[name]:10.1f} patches/s")
        if {"online", "branches", "fused"} <= results.keys():
            print(f"online / multi-branch: {results['online'] / results['branches']:.2f}x; "
                  f"online / fused: {results['online'] / results['fused']:.2f}")


def _batches(batch: int, dev: torch.device, resident: bool) -> Batches:
    """Fixed random patches, or batches cut on the device from 64 random 512x512 uint8 photos."""
    if not resident:
        lr, hr = torch.rand(batch, 3, 48, 48, device=dev), torch.rand(batch, 3, 192, 192, device=dev)
        return lambda i: (lr, hr)
    gen = np.random.default_rng(0)
    pairs = [Pair(f"p{k}", gen.integers(0, 256, (512, 512, 3), dtype=np.uint8),
                  gen.integers(0, 256, (128, 128, 3), dtype=np.uint8)) for k in range(64)]
    return ResidentPatches(pairs, 4, 192, batch, seed=0, device=dev).batch


if __name__ == "__main__":
    main()
