"""Complexity and cost of a model, as the efficient-SR literature reports them (``reprfn profile``).

**The counter.** The NTIRE efficient-SR challenges count with ``get_model_flops`` and
``get_model_activation`` of their ``utils/model_summary.py`` (from KAIR). We reproduce their
conventions exactly:

* ``macs`` ("FLOPs" in the challenge reports, really multiply-accumulates): for every conv,
  ``output elements x (in_channels / groups) x kh x kw`` (the bias is *not* counted), plus one
  operation per output element of every ReLU-family activation (ReLU, LeakyReLU, PReLU, ELU,
  ReLU6). Nothing else: pooling, interpolation, sigmoid, products and sums are not counted.
* ``activations``: the number of elements of every conv output.
* ``convs``: the number of conv calls.

The challenge counter hooks ``nn.Conv2d`` and activation *modules*; we count the same operations
at the ATen level (a ``TorchDispatchMode`` over a forward on the ``meta`` device: no memory, no
arithmetic), so a conv or an activation called functionally counts too. For every deploy-form
model, and for RepRFN and RFDN as their authors wrote them (activations as modules), the two
agree; the training form's functional convs (RepBlock's online kernel, the edge branches) would
be missed by module hooks. Fused RepRFN x4 at 3x180x320: 401,504 params, 22.17 G MACs, 71.96 M
activations, 39 convs (tests/test_profile.py pins these and the NTIRE RFDN's figures).

**What that counter misses** is reported separately under ``uncounted``: conv bias additions,
ESA's max-pool comparisons, bilinear interpolation, sigmoid, products, residual sums,
PixelShuffle and concatenation (data movement only), IMDN's mean/std.

**Memory and time.** ``peak_memory_mb``: one forward's peak, on the CPU the growth of the resident
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
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import ResourceError, UsageError
from .models import SRModel
from .models.rep import RepBlock

if TYPE_CHECKING:
    from .runtime.hardware import PrecisionChoice

COUNTER = "NTIRE ESR model_summary.py conventions: conv MACs without bias + ReLU-family output elements"
RELU_FAMILY = {"relu", "relu_", "leaky_relu", "leaky_relu_", "_prelu_kernel", "prelu", "elu", "elu_",
               "hardtanh", "hardtanh_", "relu6"}
# ATen ops that the counter ignores, by the name we report them under
UNCOUNTED = {
    "max_pool2d_with_indices": "max_pool", "max_pool2d": "max_pool",
    "upsample_bilinear2d": "interpolation", "_upsample_bilinear2d_aa": "interpolation",
    "upsample_nearest2d": "interpolation", "upsample_bicubic2d": "interpolation",
    "index_select": "interpolation",  # upsample_in_window (tiled ESA)
    "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
    "mul": "products", "mul_": "products",
    "add": "sums", "add_": "sums", "sub": "sums", "sub_": "sums",
    "pixel_shuffle": "pixel_shuffle", "cat": "concatenation",
    "mean": "mean_std", "pow": "mean_std", "sqrt": "mean_std",
    "constant_pad_nd": "padding",
}
ZERO_ARITHMETIC = {"pixel_shuffle", "concatenation", "padding"}


@dataclass
class Complexity:
    """What the challenge counter reports, and what it leaves out (``uncounted``)."""

    params: int
    macs: int  # conv_macs + activation_ops: the challenge's "FLOPs"
    conv_macs: int
    activation_ops: int
    activations: int
    convs: int
    input: tuple[int, ...]
    uncounted: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def uncounted_ops(self) -> int:
        return sum(v["ops"] for v in self.uncounted.values())


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.conv_macs = self.activation_ops = self.activations = self.convs = 0
        self.uncounted: dict[str, dict[str, int]] = defaultdict(lambda: {"calls": 0, "elements": 0, "ops": 0})

    def _miss(self, name: str, elements: int, ops: int) -> None:
        entry = self.uncounted[name]
        entry["calls"] += 1
        entry["elements"] += elements
        entry["ops"] += ops

    def __torch_dispatch__(self, func: torch._ops.OpOverload, types: Sequence[type], args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        first = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(first, torch.Tensor):
            return out
        n = first.numel()
        if name == "convolution":
            weight, bias = args[1], args[2]
            per_output = weight.shape[1] * weight[0, 0].numel()  # in/groups * kh * kw
            self.conv_macs += n * per_output
            self.activations += n
            self.convs += 1
            if bias is not None:
                self._miss("conv_bias", n, n)
        elif name in RELU_FAMILY:
            self.activation_ops += n
        elif name in UNCOUNTED:
            kind = UNCOUNTED[name]
            if kind == "max_pool":
                ops = n * (int(torch.tensor(args[1]).prod()) - 1)  # comparisons per output
            elif kind == "interpolation":
                ops = 4 * n if name != "index_select" else 0  # bilinear: 4 weighted taps per output
            elif kind == "mean_std":
                ops = args[0].numel() if isinstance(args[0], torch.Tensor) else n
            elif kind in ZERO_ARITHMETIC:
                ops = 0
            else:
                ops = n
            self._miss(kind, n, ops)
        return out


def parse_input(text: str | tuple[int, ...]) -> tuple[int, ...]:
    """``"3x180x320"`` -> (3, 180, 320); a 4-part string includes the batch."""
    if isinstance(text, tuple):
        return text
    try:
        dims = tuple(int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise UsageError(f"--input takes CxHxW such as 3x180x320, got {text!r}") from None
    if len(dims) not in (3, 4) or min(dims) < 1:
        raise UsageError(f"--input takes CxHxW such as 3x180x320, got {text!r}")
    return dims


def count(model: nn.Module, input_shape: str | tuple[int, ...] = (3, 180, 320)) -> Complexity:
    """The challenge counter's figures for one forward of ``model`` on ``input_shape`` (CxHxW).

    Runs on the ``meta`` device (a copy of the model): shapes only, no memory, no arithmetic.
    """
    shape = parse_input(input_shape)
    shape = shape if len(shape) == 4 else (1, *shape)
    params = sum(p.numel() for p in model.parameters())
    meta = copy.deepcopy(model).to("meta")
    counter = _Counter()
    with torch.no_grad(), counter:
        meta(torch.zeros(shape, device="meta"))
    return Complexity(
        params=params,
        macs=counter.conv_macs + counter.activation_ops,
        conv_macs=counter.conv_macs,
        activation_ops=counter.activation_ops,
        activations=counter.activations,
        convs=counter.convs,
        input=tuple(shape[1:]) if shape[0] == 1 else tuple(shape),
        uncounted={k: dict(v) for k, v in sorted(counter.uncounted.items())},
    )


# ----------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------

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
    from .checkpoint import save_model

    mode = "-"
    for module in model.modules():
        if isinstance(module, RepBlock):
            mode = module.mode
            break
    with tempfile.TemporaryDirectory(prefix="reprfn-profile-") as tmp:
        path = Path(tmp) / "model.safetensors"
        save_model(copy.deepcopy(model).float().cpu(), path)  # the caller's model stays as it is
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
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


# ----------------------------------------------------------------------------------------------
# Everything at once (``reprfn profile``)
# ----------------------------------------------------------------------------------------------


def check_input(model: SRModel, shape: tuple[int, ...], device: torch.device | None = None) -> None:
    """Refuse, before anything runs, an ``--input`` the model cannot take (another number of
    channels, a side under ESA's minimum) and, given the ``device`` a forward will run on, one
    whose forward does not fit in its memory (an estimate: input, output and the RepRFN figure per
    pixel), rather than PyTorch's shape error or the kernel's OOM killer."""
    from .runtime.info import describe
    from .runtime.memory import available_memory

    info = describe(model)
    n, c, h, w = shape if len(shape) == 4 else (1, *shape)
    label = "x".join(map(str, shape))
    if info.in_channels is not None and c != info.in_channels:
        raise UsageError(f"--input {label}: {c} channel(s), but the model takes {info.in_channels}")
    if min(h, w) < info.min_size:
        raise UsageError(f"--input {label}: sides of at least {info.min_size} pixels are needed")
    if device is not None:
        need, free = n * h * w * (info.bytes_per_pixel + 4 * c * (1 + info.scale ** 2)), available_memory(device)
        if need > free:
            raise ResourceError(f"--input {label}: one forward needs about {need / 2**30:.1f} GB of memory, but "
                                f"{free / 2**30:.1f} GB is available on {device.type}: profile a smaller --input")


def profile_model(model: SRModel, input_shape: str | tuple[int, ...] = (3, 180, 320), *,
                  device: str | torch.device = "cpu", memory: bool = True, timing: bool = False,
                  runs: int = 10, warmup: int = 2, precision: PrecisionChoice = "fp32") -> dict[str, Any]:
    """The report of ``reprfn profile`` as a dict (the ``--json`` content).

    The counts and memory are of the model as it is, in fp32; ``precision`` is the one the default
    upscale path is timed in (``--runtime``), beside the eager fp32 model: what ``reprfn upscale
    --precision`` would run.
    """
    check_input(model, parse_input(input_shape), torch.device(device) if memory or timing else None)
    c = count(model, input_shape)
    report: dict[str, Any] = {
        "arch": getattr(model, "arch", type(model).__name__),
        "scale": getattr(model, "scale", None),
        "form": "train" if any(isinstance(m, RepBlock) for m in model.modules()) else "deploy",
        "input": list(c.input),
        "counter": COUNTER,
        "params": c.params,
        "macs": c.macs,
        "conv_macs": c.conv_macs,
        "activation_ops": c.activation_ops,
        "activations": c.activations,
        "convs": c.convs,
        "uncounted": c.uncounted,
        "uncounted_ops": c.uncounted_ops,
        "peak_memory_mb": None,
        "runtime_ms": None,
        "device": str(torch.device(device)),
        "threads": torch.get_num_threads(),
    }
    modes = {m.mode for m in model.modules() if isinstance(m, RepBlock)}
    if modes:
        report["mode"] = modes.pop()
    if memory:
        mem = peak_memory_mb(model, input_shape, device=device, detail=True)
        report["peak_memory_mb"] = mem["peak_memory_mb"]
        report["memory"] = mem
    if timing:
        eager = runtime(model, input_shape, device=device, runs=runs, warmup=warmup)
        report["runtime_ms"] = eager["median_ms"]
        report["runtime"] = eager
        from .runtime.hardware import resolve_precision
        from .runtime.prepare import prepare

        dev = torch.device(device)
        runner = prepare(model, dev, precision)
        report["runtime_default_path"] = {**runtime(runner, input_shape, device=device, runs=runs, warmup=warmup),
                                          "path": runner.describe(), "precision": resolve_precision(precision, dev)}
    return report


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def format_report(r: dict[str, Any]) -> str:
    """The human-readable ``reprfn profile`` output."""
    shape = "x".join(map(str, r["input"]))
    lines = [
        f"{r['arch']} x{r['scale']}, {r['form']} form" + (f" ({r['mode']} RepBlocks)" if r.get("mode") else "")
        + f", input {shape}",
        f"  params        {r['params']:,} ({r['params'] / 1e6:.3f} M)",
        f"  MACs          {_si(r['macs'])}  ({r['macs']:,}; multiply-accumulates, the NTIRE counter's 'FLOPs':",
        f"                conv {_si(r['conv_macs'])} without bias + {_si(r['activation_ops'])} ReLU-family outputs)",
        f"  activations   {_si(r['activations'])}  (elements of all conv outputs)",
        f"  convs         {r['convs']}",
        "  not counted by that counter (ops, elements):",
    ]
    for name, v in r["uncounted"].items():
        calls = f"{v['calls']} call{'s' if v['calls'] != 1 else ''}"
        lines.append(f"    {name:<14}{_si(v['ops']):>10}  {_si(v['elements']):>10}  ({calls})")
    lines.append(f"    {'total':<14}{_si(r['uncounted_ops']):>10}")
    if r.get("peak_memory_mb") is not None:
        mem = r.get("memory", {})
        how = "fresh-process RSS growth" if r["device"] == "cpu" else "max_memory_allocated"
        extra = (f"; model + input + runtime before it: {mem['process_before_mb']:.0f} MB"
                 if "process_before_mb" in mem else "")
        lines.append(f"  peak memory   {r['peak_memory_mb']:.1f} MB of one forward ({how}{extra})")
    if r.get("runtime_ms") is not None:
        rt = r["runtime"]
        lines.append(f"  runtime       {rt['median_ms']:.1f} ms eager (median of {rt['runs']}, {rt['warmup']} warm-up, "
                     f"{rt['threads']} threads, {rt['device']})")
        if "runtime_default_path" in r:
            d = r["runtime_default_path"]
            lines.append(f"                {d['median_ms']:.1f} ms default upscale path, {d['precision']} "
                         f"({d['path']}): {rt['median_ms'] / d['median_ms']:.2f}x")
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
