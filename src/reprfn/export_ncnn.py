"""Export to ncnn: the ``.param`` + ``.bin`` pair that realesrgan-ncnn-vulkan, Upscayl and other
ncnn apps load, checked against PyTorch with ncnn's own Python binding.

What is converted is the fused (deploy) model, traced with ``torch.jit.trace`` and converted by
pnnx's binary (the ``pnnx`` package). The pair maps one float RGB image in ``[0, 1]``, ``(C, H, W)``
(ncnn has no batch axis) to ``(C, s*H, s*W)``, with H and W free: pnnx is given two input shapes so
that ESA's resize keeps its size from the input (``Interp`` with a reference blob), not the traced
size. Blobs are named ``data`` (in) and ``output`` (out), as in realesrgan-ncnn-vulkan's models.

``pnnx`` and ``ncnn`` are optional (``pip install 'reprfn[ncnn]'``) and imported only here. See
``docs/export.md``.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .errors import ExportError, UsageError
from .export import FP16_TOLERANCE, FP32_TOLERANCE, TRACE_SIZE, image_batch, parity, quiet_jit
from .files import atomic_path, check_writable
from .models import SRModel, fuse

INPUT_BLOB = "data"  # the names realesrgan-ncnn-vulkan extracts (Upscayl's fork looks for them first)
OUTPUT_BLOB = "output"
PNNX_BLOBS = {"in0": INPUT_BLOB, "out0": OUTPUT_BLOB}  # what pnnx names them
INSTALL_HINT = "pip install 'reprfn[ncnn]'"
SECOND_SIZE = (48, 40)  # pnnx's second input shape: the axes that differ from TRACE_SIZE stay free
PNNX_TIMEOUT = 600.0


@dataclass
class NcnnReport:
    """What ``export_ncnn`` wrote and how closely ncnn reproduces PyTorch on it."""

    param: Path
    bin: Path
    scale: int
    fp16: bool
    max_abs_diff: float | None = None  # None when the check was not run
    shapes_checked: list[tuple[int, ...]] = field(default_factory=list)

    def summary(self) -> str:
        prec = "float16 weights" if self.fp16 else "float32"
        line = (f"{self.param} + {self.bin.name}: ncnn, x{self.scale}, {prec}, "
                f"blobs {INPUT_BLOB} -> {OUTPUT_BLOB}")
        if self.max_abs_diff is not None:
            shapes = ", ".join("x".join(map(str, s)) for s in self.shapes_checked)
            line += f"; max |ncnn - torch| = {self.max_abs_diff:.2e} on {shapes}"
        return line


def import_optional(name: str) -> ModuleType:
    """``pnnx`` or ``ncnn``, or one ``ExportError`` line saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ExportError(f"{name} is not installed: {INSTALL_HINT}") from None
    except Exception as exc:  # pnnx raises a bare Exception on a platform it has no binary for
        raise ExportError(f"{name} cannot be used here ({str(exc).strip()[:200]}): {INSTALL_HINT}") from None


def ncnn_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``NAME.param`` and ``NAME.bin`` for ``NAME``, ``NAME.param`` or ``NAME.bin``.

    The apps find a model by the name the two files share (``-n NAME``), so both always get it.
    A folder (an existing one, or a name ending in a separator) or an empty name is refused
    (``UsageError``): the pair would be named after the folder and written beside it.
    """
    text = os.fspath(path)
    if not Path(text).name or text.endswith(("/", os.sep)) or Path(text).is_dir():
        raise UsageError(f"{text!r} names a folder (or nothing), not the ncnn pair: name it NAME or NAME.param, "
                         f"e.g. {os.path.join(text, 'model-x4')}")
    path = Path(text)
    if path.suffix.lower() in (".param", ".bin"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".param"), path.with_name(path.name + ".bin")


# ----------------------------------------------------------------------------------------------
# The .param file
# ----------------------------------------------------------------------------------------------


def rename_blobs(text: str, names: dict[str, str] = PNNX_BLOBS) -> str:
    """The ``.param`` text with blobs (and the Input layer) renamed per ``names``.

    A layer line is ``type name n_in n_out blob... key=value...``; only the name of an Input layer
    and the blob fields are touched, so a parameter value that happens to read ``in0`` stays. The
    whitespace is kept. Raises ``ExportError`` if a name to replace is missing or a new name is
    already taken, rather than writing a pair the apps cannot open.
    """
    lines = text.splitlines(keepends=True)
    if len(lines) < 2 or lines[0].strip() != "7767517":
        raise ExportError("pnnx wrote no ncnn .param text (magic 7767517 missing)")
    found: set[str] = set()
    for i in range(2, len(lines)):
        parts = re.split(r"(\s+)", lines[i])  # tokens at even indices, whitespace between
        tokens = parts[0::2]
        if len(tokens) < 4 or not tokens[2].isdigit() or not tokens[3].isdigit():
            continue
        blobs = range(4, 4 + int(tokens[2]) + int(tokens[3]))
        fields = [*blobs, 1] if tokens[0] == "Input" else list(blobs)
        for k in fields:
            if tokens[k] in names.values() and tokens[k] not in names:
                raise ExportError(f"pnnx named a blob or layer {tokens[k]!r}, which the export reserves")
            if tokens[k] in names:
                found.add(tokens[k])
                parts[2 * k] = names[tokens[k]]
        lines[i] = "".join(parts)
    missing = sorted(set(names) - found)
    if missing:
        raise ExportError(f"pnnx wrote no blob named {', '.join(missing)} (one input and one output expected)")
    return "".join(lines)


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def _shape_arg(channels: int, size: tuple[int, int]) -> str:
    return f"[1,{channels},{size[0]},{size[1]}]f32"


def run_pnnx(traced: Path, channels: int, fp16: bool, timeout: float = PNNX_TIMEOUT) -> tuple[Path, Path]:
    """Convert the TorchScript file ``traced`` with pnnx's binary; return the ncnn pair it wrote.

    Everything pnnx writes (``*.pnnx.param``/``.bin``/``.onnx``, ``*_pnnx.py``, ``*_ncnn.py``, the
    ncnn pair) lands in ``traced``'s folder: it runs there, on relative names. Its output is
    captured and only its last line is shown, in the ``ExportError`` of a failure.
    """
    pnnx = import_optional("pnnx")
    work = traced.parent
    param, weights = work / f"{traced.stem}.ncnn.param", work / f"{traced.stem}.ncnn.bin"
    cmd = [str(pnnx.EXEC_PATH), traced.name, f"inputshape={_shape_arg(channels, TRACE_SIZE)}",
           f"inputshape2={_shape_arg(channels, SECOND_SIZE)}", "device=cpu", f"fp16={int(fp16)}",
           f"ncnnparam={param.name}", f"ncnnbin={weights.name}"]
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExportError(f"pnnx did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise ExportError(f"pnnx could not be started ({exc.strerror or exc}): {INSTALL_HINT}") from None
    if proc.returncode != 0 or not param.is_file() or not weights.is_file():
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        why = f"exit status {proc.returncode}" + (f": {lines[-1].strip()[:200]}" if lines else "")
        raise ExportError(f"pnnx could not convert the model ({why})")
    return param, weights


class NcnnNet:
    """A ``.param`` + ``.bin`` pair in ncnn's CPU runtime, callable like the model on float32
    ``(N, C, H, W)`` tensors (one image at a time: ncnn has no batch axis).

    float16 storage and arithmetic are off (ncnn turns them on by default where the CPU has them),
    so a float32 export is compared with float32 PyTorch, and a float16 one shows only what its
    float16 weights change.
    """

    def __init__(self, param: str | os.PathLike, weights: str | os.PathLike) -> None:
        ncnn = import_optional("ncnn")
        self._ncnn = ncnn
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.use_vulkan_compute = False
        opt.use_fp16_storage = opt.use_fp16_arithmetic = opt.use_fp16_packed = False
        opt.use_bf16_storage = False
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise ExportError(f"{param}: ncnn cannot load this .param/.bin pair")

    def __call__(self, x: Tensor) -> Tensor:
        outs = []
        for image in x.detach().to("cpu", torch.float32):
            arr = np.ascontiguousarray(image.numpy())  # ncnn.Mat wraps this buffer: keep it alive
            mat = self._ncnn.Mat(arr)
            with self.net.create_extractor() as ex:
                ex.input(INPUT_BLOB, mat)
                ret, out = ex.extract(OUTPUT_BLOB)
            if ret != 0:
                raise ExportError(f"ncnn failed on a {tuple(image.shape)} input (status {ret})")
            outs.append(torch.from_numpy(np.array(out, dtype=np.float32)))  # a copy: out is ncnn's memory
            del mat, arr
        return torch.stack(outs)


def export_ncnn(
    model: SRModel,
    path: str | os.PathLike,
    *,
    fp16: bool = False,
    check: bool = True,
    tolerance: float | None = None,
) -> NcnnReport:
    """Export the fused form of ``model`` as ``NAME.param`` + ``NAME.bin``; check it in ncnn.

    ``path`` is ``NAME``, ``NAME.param`` or ``NAME.bin``. ``fp16``: float16 weights in the
    ``.bin`` (half the size; ncnn computes in float32 on CPUs without float16 arithmetic, and in
    float16 on most GPUs either way). ``check``: ncnn (CPU, float32 arithmetic) and PyTorch on
    crops of the sample photo of sizes not used for tracing, max |diff| <= ``tolerance`` (default
    1e-4, 1e-2 with ``fp16``, as for ONNX). pnnx works in a temporary folder that is removed in
    every case; the two files are put in place only if conversion and check succeed (``.bin``
    first, then ``.param``, each by one rename). A failure raises ``ExportError`` and leaves
    earlier files untouched.
    """
    param_path, bin_path = ncnn_paths(path)
    for target in (param_path, bin_path):
        check_writable(target)
    import_optional("pnnx")
    if check:
        import_optional("ncnn")
    fused = fuse(model).to("cpu", torch.float32)
    report = NcnnReport(param=param_path, bin=bin_path, scale=fused.scale, fp16=fp16)
    with tempfile.TemporaryDirectory(prefix="reprfn-ncnn-") as tmp:
        traced = Path(tmp) / "model.pt"
        example = image_batch(1, *TRACE_SIZE, in_channels=fused.in_channels)
        with quiet_jit(), torch.no_grad():
            # check_trace=False: the parity check below runs the converted model on other sizes (and saves 4 s)
            torch.jit.trace(fused, example, check_trace=False).save(str(traced))
        param, weights = run_pnnx(traced, fused.in_channels, fp16)
        param.write_text(rename_blobs(param.read_text()))
        if check:
            limit = tolerance if tolerance is not None else (FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
            report.max_abs_diff, report.shapes_checked = parity(NcnnNet(param, weights), fused)
            if not report.max_abs_diff <= limit:  # also catches NaN
                raise ExportError(f"{param_path}: ncnn output differs from PyTorch by {report.max_abs_diff:.3g} "
                                  f"(> {limit:g}); nothing written")
        with atomic_path(param_path) as tmp_param, atomic_path(bin_path) as tmp_bin:
            shutil.copyfile(param, tmp_param)
            shutil.copyfile(weights, tmp_bin)
    return report


__all__ = ["INPUT_BLOB", "OUTPUT_BLOB", "NcnnNet", "NcnnReport", "export_ncnn", "ncnn_paths", "rename_blobs"]
