"""Complexity and cost of a model, as the efficient-SR literature reports them (``reprfn profile``).

* ``count`` (``profile.count``): params, MACs, activations and convs with the NTIRE challenges'
  conventions, and what that counter leaves out;
* ``peak_memory_mb`` and ``runtime`` (``profile.measure``): one forward's peak memory and time;
* ``profile_model``, ``format_report``, ``to_json`` (here): all of it at once, what ``reprfn
  profile`` prints.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ResourceError, UsageError
from ..models import SRModel
from ..models.rep import RepBlock
from .count import COUNTER, Complexity, count, parse_input
from .measure import peak_memory_mb, runtime

if TYPE_CHECKING:
    from ..runtime.hardware import PrecisionChoice

__all__ = ["COUNTER", "Complexity", "check_input", "count", "format_report", "parse_input", "peak_memory_mb",
           "profile_model", "runtime", "to_json"]




def check_input(model: SRModel, shape: tuple[int, ...], device: torch.device | None = None) -> None:
    """Refuse, before anything runs, an ``--input`` the model cannot take (another number of
    channels, a side under ESA's minimum) and, given the ``device`` a forward will run on, one
    whose forward does not fit in its memory (an estimate: input, output and the RepRFN figure per
    pixel), rather than PyTorch's shape error or the kernel's OOM killer."""
    from ..runtime.info import describe
    from ..runtime.memory import available_memory

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
        from ..runtime.hardware import resolve_precision
        from ..runtime.prepare import prepare

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
