"""What the machine offers, and the device and precision chosen from it.

* ``resolve_device("auto")``: CUDA, then Apple's MPS, then the CPU.
* ``resolve_precision("auto", device)``: what runs fastest at a cost the eye cannot see:
  ``fp16`` on CUDA and MPS; on the CPU ``bf16`` where it pays (``cpu_bf16_pays``: always with
  AMX, whose matrix units run bf16 convs about 5x faster than fp32, docs/performance.md; with
  AVX512-BF16 alone only where a conv of the network's shape was measured at least
  ``BF16_GAIN`` times faster in bf16, once per CPU, remembered in the cache folder), else
  ``fp32``. Measurements that must be exact (``reprfn eval``, ``profile``) default to ``fp32``
  instead of ``auto``.

``TOLERANCE`` is what an engine's output may differ from the float32 model on a photo crop, per
precision: float rounding for fp32, about 3 levels of 255 at worst for bf16 (8 mantissa bits;
the mean difference is a quarter level), less for fp16 (11 bits).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Literal

import torch

from ..cache import cache_dir
from ..errors import UsageError
from ..files import atomic_path

Precision = Literal["fp32", "bf16", "fp16"]
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 1e-2}
BF16_GAIN = 1.5  # a conv's bf16 speed-up that makes bf16 the CPU default: the network is more than convs


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN reads the first set, in this order


def onednn_isa_cap() -> str | None:
    """The instruction set oneDNN (PyTorch's CPU convs) is limited to, upper case, or None.

    ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` keeps oneDNN off AMX on a CPU that has it (to compare,
    or to share the matrix units): the CPU's flags then overstate what PyTorch's convs will use,
    so the precision policy must follow the cap, not the flags."""
    for name in ISA_CAP_VARIABLES:
        value = os.environ.get(name, "").strip().upper()
        if value:
            return None if value in ("ALL", "DEFAULT") else value
    return None


def cpu_has_amx() -> bool:
    """Intel AMX with bf16 tiles (Sapphire Rapids and later), and oneDNN allowed to use it (no
    ``onednn_isa_cap`` below AMX): where bf16 inference pays most."""
    cap = onednn_isa_cap()
    return "amx_bf16" in cpu_flags() and (cap is None or "AMX" in cap)


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def conv_bf16_gain(rounds: int = 7) -> float:
    """How many times faster a 48->48 3x3 conv (RepRFN's) runs in bf16 than in fp32 on this CPU,
    channels-last, as the engines run it: the median over interleaved rounds (about 0.1 s)."""
    x = torch.rand(1, 48, 96, 128).contiguous(memory_format=torch.channels_last)
    pairs = {dtype: (torch.nn.Conv2d(48, 48, 3, padding=1).eval().to(dt), x.to(dt))
             for dtype, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.inference_mode():
        for i in range(rounds + 1):
            for name, (layer, inp) in pairs.items():
                t = time.perf_counter()
                layer(inp)
                if i:  # the first round creates the kernels
                    times[name].append(time.perf_counter() - t)
    return statistics.median(a / b for a, b in zip(times["fp32"], times["bf16"], strict=True))


def remembered_bf16_gain() -> float:
    """``conv_bf16_gain`` measured once per CPU, torch version and thread count, then read from
    ``<cache>/bf16-gain.json`` (measured again, not remembered, where the cache cannot be written)."""
    cap = onednn_isa_cap()
    key = f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads" + (f" | {cap}" if cap else "")
    path = cache_dir() / "bf16-gain.json"
    try:
        known = json.loads(path.read_text())
        if isinstance(known, dict) and isinstance(known.get(key), (int, float)):
            return float(known[key])
    except (OSError, ValueError):
        known = {}
    gain = conv_bf16_gain()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({**(known if isinstance(known, dict) else {}), key: round(gain, 3)}, indent=1))
    except (OSError, UsageError):
        pass
    return gain


def cpu_bf16_pays() -> bool:
    """Whether ``auto`` runs bf16 on this CPU: with AMX always; with AVX512-BF16 alone (e.g. AMD
    Zen 4, where a conv measured about 3.3x earlier) when ``remembered_bf16_gain`` says so, as
    measured under the ``onednn_isa_cap`` in force (capped below AVX512_CORE_BF16, oneDNN emulates
    bf16); never without bf16 instructions (emulated bf16 is slower than fp32)."""
    if cpu_has_amx():
        return True
    return "avx512_bf16" in cpu_flags() and remembered_bf16_gain() >= BF16_GAIN


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: CUDA, then MPS, then the CPU; a named device must exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available")
    if dev.type == "mps" and not mps_available():
        raise UsageError("--device mps was asked for, but no Apple GPU (MPS) is available")
    return dev


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """``auto`` made concrete for ``device`` (module doc); the others checked and returned."""
    if precision == "auto":
        if device.type in ("cuda", "mps"):
            return "fp16"
        return "bf16" if device.type == "cpu" and cpu_bf16_pays() else "fp32"
    if precision not in AUTOCAST:
        raise UsageError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    return precision  # type: ignore[return-value]
