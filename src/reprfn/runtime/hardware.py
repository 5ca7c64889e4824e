"""What the machine offers, and the device and precision chosen from it.

* ``resolve_device("auto")``: CUDA, then Apple's MPS, then the CPU.
* ``resolve_precision("auto", device)``: what runs fastest at a cost the eye cannot see:
  ``bf16`` on a CPU with AMX (Intel's matrix units run bf16 convs several times faster than
  fp32: docs/performance.md), ``fp16`` on CUDA and MPS, ``fp32`` on any other CPU (without AMX,
  bf16 is not reliably faster). Measurements that must be exact (``reprfn eval``, ``profile``)
  default to ``fp32`` instead of ``auto``.

``TOLERANCE`` is what an engine's output may differ from the float32 model on a photo crop, per
precision: float rounding for fp32, about 3 levels of 255 at worst for bf16 (8 mantissa bits;
the mean difference is a quarter level), less for fp16 (11 bits).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch

from ..errors import UsageError

Precision = Literal["fp32", "bf16", "fp16"]
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 1e-2}


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


def cpu_has_amx() -> bool:
    """Intel AMX with bf16 tiles (Sapphire Rapids and later): where bf16 inference pays most."""
    return "amx_bf16" in cpu_flags()


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
        return "bf16" if device.type == "cpu" and cpu_has_amx() else "fp32"
    if precision not in AUTOCAST:
        raise UsageError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    return precision  # type: ignore[return-value]
