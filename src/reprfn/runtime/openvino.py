"""OpenVINO: the cached ONNX export compiled by OpenVINO's CPU plugin, as an ``Engine``.

Float32 inference precision is asked for explicitly: on CPUs with bf16 or AMX units OpenVINO would
otherwise compute in bfloat16, which is not the model's function. The compiled model is checked
against PyTorch on a photo crop when it is opened (``open_openvino``).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ExportError, UsageError
from ..models import fuse
from ..models.blocks import Window
from .hardware import TOLERANCE, Precision
from .info import OPENVINO_BYTES_PER_PIXEL, ModelInfo
from .onnx import cached_export

HINTS = {"fp32": "f32", "bf16": "bf16"}


def openvino_available() -> bool:
    """OpenVINO and the ONNX exporter are installed (``pip install 'reprfn[openvino]'``)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "openvino"))


class OpenVinoEngine:
    """An ONNX file compiled for the CPU, latency hint; float32 in and out. One request, guarded
    by a lock (a request runs one inference at a time).

    The inference precision is always asked for: left to itself, OpenVINO computes in bf16 on CPUs
    with bf16 units, which is not the model's function unless ``precision="bf16"`` was chosen."""

    exact_tiles = False  # the ONNX graph places ESA's upsampling grid by the size it is given
    bytes_per_pixel = OPENVINO_BYTES_PER_PIXEL

    def __init__(self, path: Path, info: ModelInfo, threads: int | None = None, precision: Precision = "fp32") -> None:
        import openvino as ov

        if precision not in HINTS:
            raise UsageError(f"OpenVINO runs fp32 or bf16 here, not {precision!r}")
        self.path, self.info, self.precision = path, info, precision
        self.name = "openvino" if precision == "fp32" else f"openvino-{precision}"
        compiled = ov.Core().compile_model(str(path), "CPU", {
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()), "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": HINTS[precision]})
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, x: Tensor, window: Window | None = None) -> Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        with self._lock:
            out = self._request.infer({0: arr})[0].copy()
        return torch.from_numpy(out).to(x.device)


def open_openvino(model: nn.Module, info: ModelInfo, threads: int | None = None,
                  directory: str | os.PathLike | None = None, precision: Precision = "fp32") -> OpenVinoEngine:
    """The cached export of ``model`` compiled by OpenVINO in ``precision``, checked against the
    float32 PyTorch model on a probe within ``hardware.TOLERANCE[precision]``.

    The probe is a photo crop (``export.image_batch``), not noise: on noise some trained models
    leave the [0, 1] range by orders of magnitude and float rounding alone exceeds any tolerance.
    """
    from ..export import image_batch

    engine = OpenVinoEngine(cached_export(model, directory=directory), info, threads, precision)
    probe = image_batch(1, 32, 40, info.in_channels or 3)
    with torch.inference_mode():
        diff = (engine(probe) - fuse(model).to("cpu", torch.float32)(probe)).abs().max().item()
    if not diff <= TOLERANCE[precision]:
        raise ExportError(f"OpenVINO ({precision}) and PyTorch disagree by {diff:.1e}")
    return engine
