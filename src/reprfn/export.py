"""Export for deployment: ONNX (with a parity check in ONNX Runtime) and TorchScript.

What is exported is always the *fused* (deploy) form of a model: every RepBlock is one 3x3 conv.
The ONNX file maps float RGB in ``[0, 1]``, ``(N, C, H, W)``, to ``(N, C, s*H, s*W)``, with N, H
and W dynamic (the ESA's bilinear resize reads its target size from the input's shape at run
time), input ``input``, output ``output``, and the model's config in ``metadata_props``.

``onnx`` and ``onnxruntime`` are optional (``pip install 'reprfn[onnx]'``); they are imported only
when a function here needs them. Opening an export (``reprfn.runtime.onnx.OnnxEngine``), the cache
of exports and the ONNX Runtime session options are the runtime's. See ``docs/export.md``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import __version__
from .checkpoint import metadata_for
from .errors import ExportError, UsageError
from .exporters import INPUT_NAME, OUTPUT_NAME, torch_onnx_export
from .files import atomic_path
from .models import SRModel, fuse
from .runtime.onnx import DEFAULT_OPSET, INSTALL_HINT, OnnxEngine, import_ort

MIN_OPSET = 11  # first opset whose Resize matches PyTorch's bilinear; 9-10 give outputs 0.02 off (measured)
FP32_TOLERANCE = 1e-4  # max |diff| allowed between ONNX Runtime and PyTorch, float32 export
FP16_TOLERANCE = 1e-2  # ... float16 weights (against the float32 PyTorch model)
TORCHSCRIPT_TOLERANCE = 1e-5
TRACE_SIZE = (32, 32)  # the input size used for tracing; never one of the checked sizes
# Checked (batch, height, width): odd, non-square, not the traced size; the second has batch 2.
CHECK_SHAPES = ((1, 61, 47), (2, 37, 53))


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how closely ONNX Runtime reproduces PyTorch on it."""

    path: Path
    opset: int
    fp16: bool
    max_abs_diff: float | None = None  # None when the check was not run
    shapes_checked: list[tuple[int, ...]] = field(default_factory=list)
    exporter: str = ""  # "torchscript" (torch.onnx, dynamo=False) or "dynamo"

    def summary(self) -> str:
        prec = "float16 weights" if self.fp16 else "float32"
        line = f"{self.path}: ONNX opset {self.opset}, {prec}"
        if self.max_abs_diff is not None:
            shapes = ", ".join("x".join(map(str, s)) for s in self.shapes_checked)
            line += f"; max |onnxruntime - torch| = {self.max_abs_diff:.2e} on {shapes}"
        return line


# ----------------------------------------------------------------------------------------------
# Optional dependencies, imported lazily
# ----------------------------------------------------------------------------------------------


def _import_onnx() -> ModuleType:
    try:
        import onnx
    except ImportError:
        raise ExportError(f"onnx is not installed: {INSTALL_HINT}") from None
    return onnx


# ----------------------------------------------------------------------------------------------
# Natural-image test inputs
# ----------------------------------------------------------------------------------------------


def sample_image() -> Path:
    """The bundled natural photo (256x256 RGB) used for parity checks."""
    import reprfn

    return Path(reprfn.__file__).parent / "assets" / "astronaut.png"


@lru_cache(maxsize=1)
def _sample_tensor() -> Tensor:
    from .images import read_image, to_tensor

    return to_tensor(read_image(sample_image()))  # (1, 3, 256, 256) in [0, 1]


def image_batch(batch: int, height: int, width: int, in_channels: int = 3) -> Tensor:
    """``batch`` different crops of the sample photo, float32 ``(batch, in_channels, H, W)``.

    Greyscale models get the BT.601 luma. Natural content matters: random noise drives these
    networks far outside their trained range, where float rounding differences are amplified.
    """
    img = _sample_tensor()
    _, _, h, w = img.shape
    if height > h or width > w:
        raise ValueError(f"a {height}x{width} crop does not fit the {h}x{w} sample photo")
    crops = []
    for i in range(batch):
        top = (40 + 53 * i) % (h - height + 1)
        left = (70 + 37 * i) % (w - width + 1)
        crops.append(img[..., top:top + height, left:left + width])
    x = torch.cat(crops)
    if in_channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif in_channels != 3:
        x = x[:, :1].expand(-1, in_channels, -1, -1)
    return x.contiguous()


# ----------------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------------


class _Float16(nn.Module):
    """float32 in -> float16 weights and activations -> float32 out (Cast nodes at both ends)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.half()).float()


def opset_range() -> tuple[int, int]:
    """The opsets an export can use: from ``MIN_OPSET`` to the newest torch.onnx can write."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET as newest
    except ImportError:  # a private module: when it moves, keep to what is known to work
        newest = DEFAULT_OPSET
    return MIN_OPSET, int(newest)


def check_opset(opset: int) -> int:
    """Refuse an opset outside ``opset_range()`` before any work (the exporter's own failure
    is a page of graph)."""
    low, high = opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise UsageError(f"opset {opset!r} is not supported: ONNX export takes opsets {low} to {high}")
    return opset


def onnx_metadata(model: SRModel, fp16: bool) -> dict[str, str]:
    """The ``metadata_props`` written into the ONNX file (all values strings)."""
    meta = metadata_for(model)  # arch, scale, in_channels, channels, blocks, form, ..., format, version
    meta.update(
        precision="float16" if fp16 else "float32",
        io_dtype="float32",
        input=f"{INPUT_NAME}: float32 (N, {model.in_channels}, H, W), RGB in [0, 1]"
        if model.in_channels == 3 else f"{INPUT_NAME}: float32 (N, {model.in_channels}, H, W) in [0, 1]",
        output=f"{OUTPUT_NAME}: float32 (N, {model.in_channels}, {model.scale}H, {model.scale}W) in [0, 1] "
               "(not clamped)",
        version=__version__,
    )
    return meta


def export_onnx(
    model: SRModel,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    check: bool = True,
    tolerance: float | None = None,
) -> ExportReport:
    """Export the fused form of ``model`` to an ONNX file, atomically; optionally check it.

    ``fp16``: weights and activations in float16, inputs and outputs still float32 (the graph
    casts at both ends), so every caller feeds the same tensors. ``check``: run ONNX Runtime
    (CPU) and PyTorch on crops of the sample photo of shapes not used for tracing (one with batch
    2) and require max |diff| <= ``tolerance`` (default 1e-4 for float32, 1e-2 for float16,
    measured against the float32 PyTorch model). The file is only put in place if export (and
    check) succeed; a failure leaves any previous file untouched and raises ``ExportError``.
    """
    check_opset(opset)
    onnx = _import_onnx()
    if check:
        import_ort()
    path = Path(path)
    fused = fuse(model).to("cpu", torch.float32)
    module: nn.Module = _Float16(copy.deepcopy(fused)).eval() if fp16 else fused
    example = image_batch(1, *TRACE_SIZE, in_channels=fused.in_channels)
    report = ExportReport(path=path, opset=opset, fp16=fp16)
    with atomic_path(path) as tmp:
        report.exporter = torch_onnx_export(module, example, tmp, opset)
        proto = onnx.load(str(tmp))
        report.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
        del proto.metadata_props[:]
        for key, value in onnx_metadata(fused, fp16).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"reprfn {fused.arch} x{fused.scale} (deploy form), exported by reprfn {__version__}"
        try:
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise ExportError(f"{path}: exported graph fails onnx.checker ({str(exc).splitlines()[0][:200]})") from None
        onnx.save(proto, str(tmp))
        if check:
            limit = tolerance if tolerance is not None else (FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
            engine = OnnxEngine.from_file(tmp)  # the runtime's session factory, as every caller
            report.max_abs_diff, report.shapes_checked = parity(engine, fused)
            if not report.max_abs_diff <= limit:  # also catches NaN
                raise ExportError(f"{path}: ONNX Runtime output differs from PyTorch by "
                                  f"{report.max_abs_diff:.3g} (> {limit:g}); file not written")
    return report


def parity(
    candidate: Callable[[Tensor], Tensor],
    reference: SRModel,
    shapes: Sequence[tuple[int, int, int]] = CHECK_SHAPES,
) -> tuple[float, list[tuple[int, ...]]]:
    """Max |candidate(x) - reference(x)| over crops of the sample photo, and the shapes used.

    ``candidate`` is anything callable on a float32 CPU tensor (an ``OnnxEngine``, a TorchScript
    module); ``shapes`` are (batch, height, width).
    """
    worst, checked = 0.0, []
    with torch.no_grad():
        for n, h, w in shapes:
            x = image_batch(n, h, w, in_channels=reference.in_channels)
            got, want = candidate(x), reference(x)
            if got.shape != want.shape:
                raise ExportError(f"output shape {tuple(got.shape)} for input {tuple(x.shape)}, "
                                  f"expected {tuple(want.shape)}")
            diff = float((got.float() - want.float()).abs().max())
            worst = max(worst, diff if np.isfinite(diff) else float("inf"))
            checked.append(tuple(x.shape))
    return worst, checked


# ----------------------------------------------------------------------------------------------
# Standalone check: the file needs onnxruntime and numpy, nothing of reprfn or torch
# ----------------------------------------------------------------------------------------------

_STANDALONE = r"""
import json, sys
import numpy as np
import onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = sess.get_modelmeta().custom_metadata_map
c = sess.get_inputs()[0].shape[1]
h, w = int(sys.argv[2]), int(sys.argv[3])
yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
img = np.stack([0.5 + 0.4 * np.sin(xx / 5.0 + k) * np.cos(yy / 7.0) for k in range(c)])[None]
out = sess.run(["output"], {"input": img.astype(np.float32)})[0]
print(json.dumps({"input": list(img.shape), "output": list(out.shape), "dtype": str(out.dtype),
                  "finite": bool(np.isfinite(out).all()), "scale": meta.get("scale"),
                  "imported": sorted(m for m in ("reprfn", "torch") if m in sys.modules)}))
"""


def verify_standalone(path: str | os.PathLike, *, size: tuple[int, int] = (23, 17),
                      python: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Run the ONNX file in a fresh, isolated interpreter that imports only onnxruntime and numpy.

    ``python -I`` (no PYTHONPATH, no user site, no current directory on ``sys.path``) with
    ``PYTHONPATH`` removed from the environment. Returns what the snippet printed: input and
    output shapes, output dtype, whether all values are finite, the scale from the metadata, and
    which of reprfn / torch ended up imported (none). Raises ``ExportError`` if it fails.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    cmd = [python or sys.executable, "-I", "-c", _STANDALONE, str(path.resolve()), str(size[0]), str(size[1])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        raise ExportError(f"{path}: standalone onnxruntime run timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise ExportError(f"{path}: standalone onnxruntime run failed ({(lines[-1] if lines else 'no output')[:300]})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["imported"]:
        raise ExportError(f"{path}: the standalone run imported {', '.join(result['imported'])}")
    return result


# ----------------------------------------------------------------------------------------------
# TorchScript
# ----------------------------------------------------------------------------------------------


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch.jit's own deprecation warnings: it is deprecated in recent torch but works, and
    tracing is chosen on purpose (docs/export.md); the ncnn export traces too."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


def export_torchscript(model: SRModel, path: str | os.PathLike, *, check: bool = True) -> Path:
    """Trace the fused model (float32, CPU) and save it with ``torch.jit.save``, atomically.

    Tracing keeps the input size dynamic (the ESA resize target is recorded as ``x.shape``, not a
    constant). ``check``: the saved file, reloaded, must match eager PyTorch within 1e-5 on crops
    of the sample photo of sizes not used for tracing (one with batch 2), else ``ExportError``.
    Load with ``torch.jit.load(path)``; no reprfn import is needed.
    """
    path = Path(path)
    fused = fuse(model).to("cpu", torch.float32)
    example = image_batch(1, *TRACE_SIZE, in_channels=fused.in_channels)
    with quiet_jit():
        with torch.no_grad():
            traced = torch.jit.trace(fused, example)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
            if check:
                diff, _ = parity(torch.jit.load(str(tmp)), fused)
                if not diff <= TORCHSCRIPT_TOLERANCE:
                    raise ExportError(f"{path}: TorchScript output differs from eager by {diff:.3g} "
                                      f"(> {TORCHSCRIPT_TOLERANCE:g}); file not written")
    return path


__all__ = [
    "ExportError",
    "ExportReport",
    "export_onnx",
    "export_torchscript",
    "image_batch",
    "parity",
    "sample_image",
    "verify_standalone",
]
