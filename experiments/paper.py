"""The paper's experiments at one reduced budget, on the shared data (docs/experiments.md).

    python experiments/paper.py train [--only reprfn,rfdn] [--threads 1]   # the training runs
    python experiments/paper.py complexity     # counts, peak memory, CPU time of the trained rows
    python experiments/paper.py pruning        # one-shot filter pruning of the trained RFDN
    python experiments/paper.py deploy         # runtime of each deployment scheme (quiet machine!)
    python experiments/paper.py docs           # tables and plots into docs/experiments.md
    python experiments/paper.py all            # everything above, in that order

Every training run uses the same budget (``BUDGET``), the same data, seed and schedule; only the
model or the loss changes. Runs resume where they stopped (``runs/experiments/NAME``) and a run
already measured at this budget is not repeated. Measurements go to ``experiments/results.json``,
the only file the docs are made from.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "experiments" / "results.json"
RUNS_DIR = ROOT / "runs" / "experiments"
DOC = ROOT / "docs" / "experiments.md"
TRAIN_SETS = [str(SHARED / "train" / d) for d in ("bsd200", "t91", "bsds500-test")]
SET5, B100 = SHARED / "benchmark" / "Set5" / "x4", SHARED / "benchmark" / "B100" / "HR"

BUDGET: dict[str, Any] = {
    "scale": 4, "iters": 1000, "batch_size": 16, "patch_size": 128, "lr": 5e-4, "lr_step": 500,
    "amp": "bf16", "seed": 0,
}
PAPER_LOSS = {"charbonnier": 0.9, "fft": 0.1}

# name -> (model, loss, channels); each experiment reads the rows it needs.
RUNS: dict[str, tuple[str, dict[str, float], int]] = {
    "reprfn": ("reprfn", PAPER_LOSS, 48),
    "rfn-plain": ("rfn-plain", PAPER_LOSS, 48),
    "rfn-rfb1": ("rfn-rfb1", PAPER_LOSS, 48),
    "rfn-rfb2": ("rfn-rfb2", PAPER_LOSS, 48),
    "rfn-rfb3": ("rfn-rfb3", PAPER_LOSS, 48),
    "rfdn": ("rfdn", PAPER_LOSS, 48),
    "reprfn-noedge": ("reprfn-noedge", PAPER_LOSS, 48),
    "reprfn-3x3": ("reprfn-3x3", PAPER_LOSS, 48),
    "reprfn-esafull": ("reprfn-esafull", PAPER_LOSS, 48),
    "reprfn-1x1": ("reprfn-1x1", PAPER_LOSS, 48),
    "loss-l1": ("reprfn", {"l1": 1.0}, 48),
    "loss-l2": ("reprfn", {"l2": 1.0}, 48),
    "loss-charbonnier": ("reprfn", {"charbonnier": 1.0}, 48),
    "loss-fft": ("reprfn", {"fft": 1.0}, 48),
    "reprfn-seed1": ("reprfn", PAPER_LOSS, 48),
    "reprfn-seed2": ("reprfn", PAPER_LOSS, 48),
}
SEEDS = {"reprfn-seed1": 1, "reprfn-seed2": 2}  # RepRFN again with other seeds: the run-to-run noise
TABLES: dict[str, list[str]] = {
    "table1": ["rfn-plain", "rfn-rfb1", "rfn-rfb2", "rfn-rfb3", "rfdn", "reprfn"],
    "redundancy": ["reprfn", "reprfn-1x1", "reprfn-esafull"],
    "losses": ["loss-l1", "loss-l2", "loss-charbonnier", "loss-fft", "reprfn"],
    "branches": ["reprfn", "reprfn-noedge", "reprfn-3x3"],
    "noise": ["reprfn", "reprfn-seed1", "reprfn-seed2"],
}


# ----------------------------------------------------------------------------------------------
# Results file
# ----------------------------------------------------------------------------------------------


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"budget": BUDGET, "runs": {}}


def save_results(results: dict[str, Any]) -> None:
    """Atomic: a killed experiment never leaves a half-written results file."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=RESULTS.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, RESULTS)


def record(update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read, update and write the results under a lock, so that workers can run side by side
    (``train --only A,B`` in one shell, ``train --only C`` in another) without losing rows."""
    import fcntl

    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUNS_DIR / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load_results()
        if results.get("budget") != BUDGET:
            results = {"budget": BUDGET, "runs": {}}  # a new budget: every row is measured again
        update(results)
        save_results(results)
    return results


# ----------------------------------------------------------------------------------------------
# Training runs
# ----------------------------------------------------------------------------------------------


def run_config(name: str, threads: int) -> dict[str, Any]:
    from reprfn.train import DEFAULTS, merge

    model, loss, channels = RUNS[name]
    b = BUDGET
    return merge(DEFAULTS, {
        "seed": SEEDS.get(name, b["seed"]),
        "model": {"name": model, "scale": b["scale"], "channels": channels, "blocks": 4},
        "data": {"train": TRAIN_SETS, "cache_dir": str(ROOT / "runs" / "cache"), "workers": 0},
        "val": {"dir": None},
        "train": {"iters": b["iters"], "batch_size": b["batch_size"], "patch_size": b["patch_size"],
                  "lr": b["lr"], "lr_step": b["lr_step"], "amp": b["amp"], "threads": threads,
                  "checkpoint_every": 100, "log_every": 50},
        "loss": loss,
    })


def scores(model: torch.nn.Module, folder: Path, scale: int) -> dict[str, float]:
    from reprfn.evaluate import evaluate_dataset

    r = evaluate_dataset(model, folder, scale)
    if r.errors:
        raise RuntimeError(r.errors[0])
    return {"psnr_y": round(r.mean("psnr_y"), 4), "ssim_y": round(r.mean("ssim_y"), 5)}


def train_one(name: str, threads: int) -> dict[str, Any]:
    from reprfn.checkpoint import load_model
    from reprfn.train import train

    run_dir = RUNS_DIR / name
    cfg = run_config(name, threads)
    start = time.time()
    train(cfg, run_dir, resume="auto", progress=False)
    seconds = time.time() - start
    model = load_model(run_dir / "final_fused.safetensors")
    return {
        "model": RUNS[name][0], "loss": RUNS[name][1], "channels": RUNS[name][2], "seed": cfg["seed"],
        "iters": BUDGET["iters"], "patches_seen": BUDGET["iters"] * BUDGET["batch_size"],
        "train_seconds_this_session": round(seconds, 1),
        "train_params": sum(p.numel() for p in load_model(run_dir / "final.safetensors").parameters()),
        "set5": scores(model, SET5, BUDGET["scale"]),
        "b100": scores(model, B100, BUDGET["scale"]),
    }


def cmd_train(only: list[str] | None, threads: int) -> None:
    for name in only or list(RUNS):
        if name not in RUNS:
            sys.exit(f"unknown run {name!r}; choose from {', '.join(RUNS)}")
        done = record(lambda results: None)["runs"].get(name)
        if done:
            print(f"{name}: done ({done['set5']['psnr_y']:.2f} dB Set5)")
            continue
        print(f"{name}: training ({BUDGET['iters']} iterations)", flush=True)
        r = train_one(name, threads)
        record(lambda results, name=name, r=r: results["runs"].__setitem__(name, r))
        print(f"{name}: Set5 {r['set5']['psnr_y']:.2f} dB, B100 {r['b100']['psnr_y']:.2f} dB", flush=True)


# ----------------------------------------------------------------------------------------------
# Complexity of the Table 1 rows
# ----------------------------------------------------------------------------------------------


def interleaved_ms(fns: dict[str, Callable], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median ms of each callable on ``x``: one warm-up each, then every callable once per round,
    so that all of them see the same background load."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f(x)
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f(x)
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


def cmd_complexity(rounds: int = 5) -> None:
    """NTIRE-style counts, peak memory and CPU runtime of every trained row, at 3x180x320.

    Runtimes are interleaved (every model once per round, median over rounds), so that all rows
    see the same background load.
    """
    from reprfn.checkpoint import load_model
    from reprfn.profile import count, peak_memory_mb

    out: dict[str, Any] = {}
    models: dict[str, torch.nn.Module] = {}
    names = {n for t in ("table1", "redundancy", "branches") for n in TABLES[t]}  # loss rows: RepRFN's cost
    for name in sorted(names & set(load_results()["runs"])):
        models[name] = load_model(RUNS_DIR / name / "final_fused.safetensors")
        c = count(models[name], "3x180x320")
        out[name] = {"params": c.params, "macs": c.macs, "activations": c.activations, "convs": c.convs,
                     "peak_memory_mb": round(float(peak_memory_mb(models[name], "3x180x320")), 1)}
    x = torch.rand(1, 3, 180, 320, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ms = interleaved_ms(models, x, rounds)
    for name in models:
        out[name].update(runtime_ms=ms[name], threads=torch.get_num_threads())
        print(name, out[name], flush=True)
    record(lambda results: results.__setitem__("complexity", out))


# ----------------------------------------------------------------------------------------------
# One-shot structured pruning of a trained RFDN
# ----------------------------------------------------------------------------------------------


def prune_filters(conv: torch.nn.Conv2d, fraction: float) -> None:
    """Zero the ``fraction`` of output filters with the smallest L1 norm (weights and bias)."""
    norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
    k = int(round(fraction * norms.numel()))
    idx = norms.argsort()[:k]
    with torch.no_grad():
        conv.weight[idx] = 0
        if conv.bias is not None:
            conv.bias[idx] = 0


def cmd_pruning(fraction: float = 0.5) -> None:
    """Prune each conv of each RFDB (and its ESA) alone; the PSNR drop on Set5 ranks redundancy."""
    from reprfn.checkpoint import load_model

    path = RUNS_DIR / "rfdn" / "final_fused.safetensors"
    if not path.is_file():
        sys.exit("train the rfdn row first: python experiments/paper.py train --only rfdn")
    base = load_model(path)
    ref = scores(base, SET5, BUDGET["scale"])["psnr_y"]
    rows = []
    for bname, block in base.named_children():
        if not bname.startswith("B"):
            continue
        for cname, conv in block.named_modules():
            if not isinstance(conv, torch.nn.Conv2d):
                continue
            pruned = copy.deepcopy(base)
            prune_filters(pruned.get_submodule(f"{bname}.{cname}"), fraction)
            drop = ref - scores(pruned, SET5, BUDGET["scale"])["psnr_y"]
            rows.append({"block": bname, "conv": cname, "kernel": list(conv.kernel_size),
                         "out_channels": conv.out_channels, "drop_db": round(drop, 4)})
            print(f"{bname}.{cname}: -{drop:.3f} dB", flush=True)
    record(lambda results: results.__setitem__(
        "pruning", {"fraction": fraction, "set5_psnr_y": ref, "rows": rows}))


# ----------------------------------------------------------------------------------------------
# Deployment schemes
# ----------------------------------------------------------------------------------------------


def deploy_variants(name: str, model: torch.nn.Module, x: torch.Tensor, tmp: Path) -> dict[str, Callable]:
    """Each way of running ``model`` (trained weights) on the CPU, as a callable of one input."""
    from reprfn.export import export_onnx
    from reprfn.models import set_mode
    from reprfn.runtime.engines import FusedCPUEngine
    from reprfn.runtime.info import describe
    from reprfn.runtime.onnx import OnnxEngine
    from reprfn.runtime.openvino import OpenVinoEngine, openvino_available

    fused = model.fuse().eval()
    out: dict[str, Callable] = {}
    if getattr(model, "form", "") == "train" and name == "reprfn":
        online = set_mode(copy.deepcopy(model), "online").eval()
        branches = set_mode(copy.deepcopy(model), "branches").eval()
        out["eager, training form (nine branches)"] = branches
        out["eager, training form (online fusion)"] = online
    out["eager, deploy form"] = fused
    with torch.no_grad():
        traced = torch.jit.trace(fused, x, check_trace=False)
    out["TorchScript (frozen)"] = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    path = tmp / f"{name}.onnx"
    export_onnx(fused, path)
    threads = torch.get_num_threads()
    out["ONNX Runtime"] = OnnxEngine.from_file(path, threads=threads)
    if openvino_available():
        out["OpenVINO (float32)"] = OpenVinoEngine(path, describe(fused), threads)
    out["reprfn fast PyTorch path"] = FusedCPUEngine(fused)
    return out


def cmd_deploy(rounds: int = 5, size: tuple[int, int] = (180, 320)) -> None:
    """Median ms at 3x180x320 of every scheme, interleaved so all see the same load."""
    from reprfn.checkpoint import load_model
    from reprfn.models import build

    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as d, torch.inference_mode():
        fns: dict[str, Callable] = {}
        for name in ("reprfn", "rfdn", "imdn"):
            path = RUNS_DIR / name / "final.safetensors"
            model = load_model(path) if path.is_file() else build(name, scale=4).eval()
            for scheme, f in deploy_variants(name, model, x, Path(d)).items():
                fns[f"{name}|{scheme}"] = f
        rows = interleaved_ms(fns, x, rounds)
    for k, v in rows.items():
        print(f"{k:<60} {v:8.1f} ms")
    record(lambda results: results.__setitem__("deploy", {
        "input": f"3x{size[0]}x{size[1]}", "threads": torch.get_num_threads(), "rounds": rounds,
        "median_ms": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["train", "complexity", "pruning", "deploy", "docs", "all"])
    ap.add_argument("--only", default="", help="comma-separated run names (train)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: PyTorch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    only = [n for n in args.only.split(",") if n] or None
    if args.command in ("train", "all"):
        cmd_train(only, args.threads)
    if args.command in ("complexity", "all"):
        cmd_complexity()
    if args.command in ("pruning", "all"):
        cmd_pruning()
    if args.command in ("deploy", "all"):
        cmd_deploy()
    if args.command in ("docs", "all"):
        sys.path.insert(0, str(ROOT))  # run as a script: make the experiments package importable
        from experiments.report import write_docs

        write_docs(load_results(), DOC)


if __name__ == "__main__":
    main()
