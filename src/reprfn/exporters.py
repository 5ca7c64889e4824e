"""Running ``torch.onnx.export`` quietly: its TorchScript-based exporter first, the dynamo one if
that fails, with everything it prints captured (it dumps the whole graph from C++ on a failure).

What is exported and how it is checked is ``export.py``'s; this module only calls torch's exporters
and turns their failure into one ``ExportError`` line.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ExportError

INPUT_NAME = "input"
OUTPUT_NAME = "output"


@contextmanager
def captured_output() -> Iterator[list[str]]:
    """Everything written to file descriptors 1 and 2 meanwhile, Python's and C++'s alike.

    torch's TorchScript exporter prints the whole graph to stdout from C++ when it fails (187
    lines for RepRFN), which no ``sys.stdout`` redirect can catch. The text is appended to the
    yielded list when the block ends; the caller decides whether it is shown. While the block
    runs, other threads' output goes there too.
    """
    captured: list[str] = []
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # no C library to open by that name (Windows)
        libc = None

    def flush() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if libc is not None:
            libc.fflush(None)  # C stdio buffers (a redirected stdout is fully buffered)

    flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                sink.seek(0)
                captured.append(sink.read().decode(errors="replace"))
    finally:
        for fd in saved:
            os.close(fd)


def torch_onnx_export(module: nn.Module, example: Tensor, path: Path, opset: int) -> str:
    """``torch.onnx.export``, quietly: its output is shown only if the export succeeds (warnings),
    never the graph it dumps when it fails (the ``ExportError`` says why in one line)."""
    with captured_output() as noise:
        exporter = _torch_onnx_export_loud(module, example, path, opset)
    if noise[0].strip():
        print(noise[0].rstrip(), file=sys.stderr)
    return exporter


def _torch_onnx_export_loud(module: nn.Module, example: Tensor, path: Path, opset: int) -> str:
    """Run ``torch.onnx.export``: the TorchScript-based exporter first, the dynamo one if that fails."""
    params = inspect.signature(torch.onnx.export).parameters
    common: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    legacy = dict(
        common,
        dynamic_axes={
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"},
        },
        do_constant_folding=True,
    )
    if "dynamo" in params:
        legacy["dynamo"] = False
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # chosen on purpose (stable with F.interpolate(size=x.shape[-2:])); see docs/export.md
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
            torch.onnx.export(module, (example,), str(path), **legacy)
        return "torchscript"
    except Exception as exc:  # removed in a future torch, or an op it cannot convert
        first = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if "dynamo" not in params:
        raise ExportError(f"torch.onnx.export failed ({first[:300]})")
    try:
        dim = torch.export.Dim.DYNAMIC
        with torch.no_grad():
            torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False,
                              dynamic_shapes=({0: dim, 2: dim, 3: dim},), verbose=False, **common)
        return "dynamo"
    except Exception as exc:
        second = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        raise ExportError(f"torch.onnx.export failed (TorchScript exporter: {first[:200]}; "
                          f"dynamo exporter: {second[:200]})") from None
