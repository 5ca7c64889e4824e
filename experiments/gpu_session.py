"""One short GPU session, prepared so that its minutes go to training, not to debugging.

On a machine with one GPU (a working tree copied there with ``.gpu/`` carried: the training pack
of ``experiments/gpu_pack.py`` and Set5 for validation), in one command:

    python3 experiments/gpu_session.py --out "$OUT" [--budget-s 420]

1. unpacks the training photos to ``/tmp/train``;
2. measures training throughput (patches/s: online-fusion RepRFN x4, bf16, channels-last,
   ``torch.compile``, batches cut on the GPU) at a few batch sizes with ``benchmarks/train_speed.py``,
   and inference speed (180x320 -> 720p and 270x480 -> 1080p x4: the eager fp32 model against
   the paths ``reprfn upscale`` takes on the GPU) with ``benchmarks/device_speed.py``;
3. trains x4 (``configs/reprfn_x4_gpu.yaml``: from the CPU campaign's EMA weights) with the
   number of iterations that the measured rate fits in ``--budget-s`` (one cosine decay that
   ends when the time does) and ``train.time_limit`` as a guard;
4. writes what a later session needs to ``--out``, each file small enough to come back: the EMA
   and model weights in training form, the deploy form, ``log.csv``, the throughput table and a
   summary (the optimizer state stays behind: a fresh one is fine after a change of machine).

Every step runs on the CPU too at small sizes (``--device cpu --bench-batch 2 --no-compile``;
tests/test_gpu_session.py), so that a GPU session does not find the bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from experiments.campaign import snapshot  # noqa: E402
from experiments.gpu_pack import unpack  # noqa: E402
from reprfn.config import load_config  # noqa: E402
from reprfn.train import train  # noqa: E402


def child_env() -> dict[str, str]:
    """The environment of the benchmarks this script runs: on the GPU machine reprfn is not
    installed, only copied, so its ``src`` must be on their path as it is on this script's."""
    paths = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def throughput(device: str, batches: list[int], steps: int, compile_model: bool) -> dict[int, float]:
    """patches/s of the online-fusion x4 step per batch size (benchmarks/train_speed.py)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--device", device, "--amp", "bf16",
           "--resident", "--only", "online", "--steps", str(steps), "--batch", ",".join(map(str, batches))]
    text = subprocess.run(cmd + (["--compile"] if compile_model else []), check=True, capture_output=True,
                          text=True, env=child_env()).stdout
    print(text, flush=True)
    return {int(b): float(r) for b, r in re.findall(r"batch\s+(\d+)\s+online\s+([\d.]+) patches/s", text)}


def inference_speed(device: str, sizes: str, rounds: int, out: Path) -> None:
    """benchmarks/device_speed.py on ``device``: its table printed, its figures in ``out``. A
    failure is reported and the session goes on to train: the training minutes matter most."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "device_speed.py"), "--device", device, "--sizes", sizes,
           "--rounds", str(rounds), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    print(proc.stdout if proc.returncode == 0 else f"inference benchmark failed: {proc.stderr[-1500:]}", flush=True)


def iterations(rate: float, batch: int, budget_s: float) -> int:
    """The iterations that ``budget_s`` seconds hold at ``rate`` patches/s (at least 10)."""
    return max(10, int(rate * budget_s / batch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=420.0, help="seconds of training")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "reprfn_x4_gpu.yaml")
    ap.add_argument("--pack", type=Path, default=ROOT / ".gpu" / "train.zip")
    ap.add_argument("--data", type=Path, default=Path("/tmp/train"))
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "gpu" / "x4")
    ap.add_argument("--bench-batch", default="64,256,1024")
    ap.add_argument("--bench-steps", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--infer-sizes", default="180x320,270x480", help="LR sizes of the inference benchmark")
    ap.add_argument("--infer-rounds", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], help="more config overrides (key=value)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"{unpack(args.pack, args.data)} photos in {args.data}", flush=True)
    rates = throughput(args.device, [int(b) for b in args.bench_batch.split(",")], args.bench_steps,
                       not args.no_compile)
    (args.out / "speed.json").write_text(json.dumps(rates))
    inference_speed(args.device, args.infer_sizes, args.infer_rounds, args.out / "inference.json")
    overrides = [f"train.device={args.device}", f"data.train=[{args.data}]", f"train.compile={not args.no_compile}",
                 *args.set]
    batch = load_config(args.config, overrides).train.batch_size
    rate = rates.get(batch) or max(rates.values())
    iters = iterations(rate, batch, args.budget_s)
    cfg = load_config(args.config, [*overrides, f"train.iters={iters}", f"train.time_limit={args.budget_s * 1.25}"])
    print(f"training {iters} iterations of batch {batch} ({rate:.0f} patches/s measured)", flush=True)
    summary = train(cfg, args.run, resume="auto" if (args.run / "last.ckpt").exists() else None)
    snapshot(args.run, args.out / "ema_train.safetensors")
    for name in ("final.safetensors", "final_fused.safetensors", "best_fused.safetensors", "log.csv"):
        if (args.run / name).exists():
            shutil.copy2(args.run / name, args.out / name)
    summary.update(rates=rates, iters_planned=iters, seconds=round(time.time() - t0, 1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
