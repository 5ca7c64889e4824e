"""Training throughput (patches/s) of RepRFN x4 at batch 16, LR patch 48, measured side by side:
online fusion (our default), the multi-branch form (the authors' training), and the fused network
(a lower bound on the cost of any training form). Forward + 0.9 Charbonnier + 0.1 FFT + backward
+ Adam step.

    python benchmarks/train_speed.py [--steps 10] [--device cpu|cuda] [--amp none|bf16]

``--amp bf16`` runs forward and loss under bfloat16 autocast (``train.amp: bf16``); on CPUs with
AVX512-BF16 or AMX this is where most of the CPU training speed comes from.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from reprfn.losses import WeightedLoss
from reprfn.models import build, set_mode


def throughput(model: torch.nn.Module, lr: torch.Tensor, hr: torch.Tensor, steps: int,
               amp: torch.dtype | None = None) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    loss_fn = WeightedLoss({"charbonnier": 0.9, "fft": 0.1})
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(lr.device.type, dtype=amp) if amp else nullcontext():
            loss = loss_fn(model(lr), hr)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if lr.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if lr.is_cuda:
        torch.cuda.synchronize()
    return steps * lr.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    args = ap.parse_args()
    amp = torch.bfloat16 if args.amp == "bf16" else None
    torch.manual_seed(0)
    dev = torch.device(args.device)
    lr = torch.rand(args.batch, 3, 48, 48, device=dev)
    hr = torch.rand(args.batch, 3, 192, 192, device=dev)
    base = build("reprfn", scale=4)
    variants = {
        "online fusion": set_mode(build("reprfn", scale=4), "online"),
        "multi-branch": set_mode(build("reprfn", scale=4), "branches"),
        "fused (lower bound)": base.fuse().train().requires_grad_(True),
    }
    print(f"RepRFN x4, batch {args.batch}, LR 48x48, {args.steps} timed steps, device {dev}, "
          f"{torch.get_num_threads()} threads, amp {args.amp}")
    results = {}
    for name, model in variants.items():
        results[name] = throughput(model.to(dev), lr, hr, args.steps, amp)
        print(f"  {name:<20} {results[name]:8.1f} patches/s")
    ratio = results["online fusion"] / results["multi-branch"]
    print(f"online / multi-branch: {ratio:.2f}x; online / fused: {results['online fusion'] / results['fused (lower bound)']:.2f}")


if __name__ == "__main__":
    main()
