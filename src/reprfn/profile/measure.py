"""Memory and time of one forward (``reprfn profile``).

``peak_memory_mb``: one forward's peak, on the CPU the growth of the resident
set of a *fresh* process (``VmHWM`` after the forward minus ``VmRSS`` before it, the model and input
already loaded), so that no earlier allocation hides it; on CUDA ``max_memory_allocated`` minus
what was allocated before. ``runtime_ms``: the median of ``runs`` forwards after ``warmup`` ones,
with the thread count it ran with.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, overload

import torch
from torch import nn

from ..models import SRModel
from ..models.rep import RepBlock
from .count import parse_input

_CHILD = r"""
import json, sys, torch
from reprfn.checkpoint import load_model
from reprfn.models import set_mode
path, mode, fast, threads = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
shape = tuple(int(v) for v in sys.argv[5:])
torch.set_num_threads(threads)
model = load_model(path).eval()
if mode != "-":
    set_mode(model, mode)
if fast:
    from reprfn.runtime.prepare import prepare
    model = prepare(model)
    with torch.inference_mode():  # one-time work (an ONNX export, session, kernels) before the peak
        model(torch.rand(shape[0], shape[1], 24, 24))
x = torch.rand(shape)

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0

try:
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
        fh.write("5")
    reset = True
except OSError:
    reset = False
before = status("VmRSS")
with torch.inference_mode():
    y = model(x)
peak = status("VmHWM")
print(json.dumps({"before": before, "peak": peak, "reset": reset, "output": y.numel() * 4}))
"""


@overload
def peak_memory_mb(model: SRModel, input_shape: str | tuple[int, ...] = ..., *, device: str | torch.device = ...,
                   fast: bool = ..., threads: int | None = ..., detail: Literal[False] = ...) -> float: ...


@overload
def peak_memory_mb(model: SRModel, input_shape: str | tuple[int, ...] = ..., *, device: str | torch.device = ...,
                   fast: bool = ..., threads: int | None = ..., detail: Literal[True]) -> dict[str, Any]: ...


def peak_memory_mb(model: SRModel, input_shape: str | tuple[int, ...] = (3, 180, 320), *,
                   device: str | torch.device = "cpu", fast: bool = False, threads: int | None = None,
                   detail: bool = False) -> float | dict[str, Any]:
    """Peak memory (MB, 2**20 bytes) one forward adds on top of the loaded model and input.

    CPU: a fresh process loads the model (saved to a temporary file), resets its peak-RSS mark,
    runs one forward and reads the peak (Linux ``/proc``). ``fast`` measures the default upscale
    path (``runtime.prepare``) instead of the eager model. CUDA: ``max_memory_allocated`` in this process.
    ``detail`` returns a dict with the process size before the forward and the output's size.
    """
    shape = parse_input(input_shape)
    shape = shape if len(shape) == 4 else (1, *shape)
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak(model, shape, device, detail)
    from ..checkpoint import save_model

    mode = "-"
    for module in model.modules():
        if isinstance(module, RepBlock):
            mode = module.mode
            break
    with tempfile.TemporaryDirectory(prefix="reprfn-profile-") as tmp:
        path = Path(tmp) / "model.safetensors"
        save_model(copy.deepcopy(model).float().cpu(), path)  # the caller's model stays as it is
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                       os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-c", _CHILD, str(path), mode, "1" if fast else "0",
               str(threads or torch.get_num_threads()), *map(str, shape)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"peak-memory process failed: {last[:300]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = (r["peak"] - r["before"]) / 2**20
    if detail:
        return {"peak_memory_mb": peak, "process_before_mb": r["before"] / 2**20,
                "output_mb": r["output"] / 2**20, "peak_reset": r["reset"]}
    return peak


def _cuda_peak(model: nn.Module, shape: tuple[int, ...], device: torch.device,
               detail: bool) -> float | dict[str, Any]:
    model = model.to(device).eval()
    x = torch.rand(shape, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        y = model(x)
    torch.cuda.synchronize(device)
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if detail:
        return {"peak_memory_mb": peak, "process_before_mb": before / 2**20, "output_mb": y.numel() * 4 / 2**20,
                "peak_reset": True}
    return peak


# ----------------------------------------------------------------------------------------------
# Runtime
# ----------------------------------------------------------------------------------------------


def runtime(model: Callable[[torch.Tensor], torch.Tensor], input_shape: str | tuple[int, ...] = (3, 180, 320), *,
            device: str | torch.device = "cpu", warmup: int = 2, runs: int = 10) -> dict[str, Any]:
    """Median (and min) milliseconds of ``runs`` forwards after ``warmup`` ones, and the threads used."""
    shape = parse_input(input_shape)
    shape = shape if len(shape) == 4 else (1, *shape)
    device = torch.device(device)
    if isinstance(model, nn.Module):
        model = model.to(device).eval()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs, "warmup": warmup,
            "threads": torch.get_num_threads(), "device": str(device)}
