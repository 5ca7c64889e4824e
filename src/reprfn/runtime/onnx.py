"""ONNX Runtime: the one export cache and the one session factory every caller uses.

* ``cached_export(model)``: the deploy form exported to ONNX once, kept under ``cache_dir()/onnx``
  as ``{arch}_x{scale}_{digest}[_fp16].onnx``, where the digest covers the fused weights, the
  config, the opset, fp16, and the reprfn and torch versions; checked against PyTorch in ONNX
  Runtime when it is made (``export.export_onnx``, atomic). The default CPU path, OpenVINO and
  ``--backend onnxruntime`` all read it.
* ``ort_session(source)``: an ``onnxruntime.InferenceSession`` with all graph optimizations (NCHWc
  blocked layout, conv + activation and conv + add fusion), intra-op threads (default: PyTorch's
  count), errors-only logging and **no spinning** of idle threads, which on a machine whose cores
  are shared costs more than it saves. ``export.export_onnx``'s parity check, ``OnnxEngine`` and
  the benchmarks open sessions only through it.
* ``OnnxEngine``: a reprfn ONNX file run by ONNX Runtime, an ``Engine``; its ``info`` comes from
  the file's metadata. It cannot run a tile as the whole image (``exact_tiles = False``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..cache import cache_dir
from ..errors import ExportError, UsageError
from ..models import SRModel, fuse
from ..models.blocks import Window
from .info import BYTES_PER_PIXEL, ModelInfo, describe

DEFAULT_OPSET = 17
INSTALL_HINT = "pip install 'reprfn[onnx]'"


def onnxruntime_available() -> bool:
    """Both optional packages of the ONNX path are installed (``pip install 'reprfn[onnx]'``)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def import_ort() -> Any:
    """``onnxruntime``, or one line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"onnxruntime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def model_digest(model: nn.Module, opset: int = DEFAULT_OPSET, fp16: bool = False) -> str:
    """The cache key: weights, config, options, reprfn and torch versions."""
    h = hashlib.sha256()
    config = model.config() if isinstance(model, SRModel) else {}
    h.update(json.dumps([config, opset, fp16, __version__, torch.__version__], sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def cached_export(model: nn.Module, *, fp16: bool = False, opset: int = DEFAULT_OPSET,
                  directory: str | os.PathLike | None = None, check: bool | None = None) -> Path:
    """The deploy form of ``model`` as an ONNX file, exported once per digest (see module doc).

    ``directory``: default ``cache_dir()/onnx``. ``check`` (default: when ONNX Runtime is
    installed): the parity check of ``export_onnx``, which refuses to write a file that
    disagrees with PyTorch.
    """
    from ..export import export_onnx

    fused = fuse(model).to("cpu", torch.float32)
    if not isinstance(fused, SRModel):
        raise UsageError(f"cannot export a {type(model).__name__} to ONNX: give a reprfn model (reprfn.load_model)")
    folder = Path(directory) if directory is not None else cache_dir() / "onnx"
    path = folder / f"{fused.arch}_x{fused.scale}_{model_digest(fused, opset, fp16)}{'_fp16' if fp16 else ''}.onnx"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        export_onnx(fused, path, opset=opset, fp16=fp16,
                    check=onnxruntime_available() if check is None else check)  # atomic
    return path


def ort_session(source: str | os.PathLike | bytes, *, threads: int | None = None,
                providers: Sequence[str] | None = None, spinning: bool = False) -> Any:
    """An ONNX Runtime session with reprfn's options (module doc); ``spinning`` only for benchmarks."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.log_severity_level = 3  # errors only
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    data = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(data, opts, providers=list(providers or ["CPUExecutionProvider"]))


class OnnxEngine:
    """A reprfn ONNX export in ONNX Runtime: ``engine(x)`` takes a float ``(N, C, H, W)`` tensor
    in [0, 1] and returns float32 ``(N, C, sH, sW)`` on ``x``'s device. ``info`` and ``metadata``
    come from the file; a file without reprfn metadata is refused."""

    name = "onnxruntime"
    exact_tiles = False  # the graph places ESA's upsampling grid by the size it is given
    bytes_per_pixel = BYTES_PER_PIXEL

    def __init__(self, session: Any, path: Path | None = None) -> None:
        self.session, self.path = session, path
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        if self.metadata.get("format") != "reprfn":
            raise ExportError(f"{path or 'ONNX model'}: not a reprfn ONNX export (no reprfn metadata)")
        try:
            self.info: ModelInfo = describe(self.metadata)
        except UsageError:
            raise ExportError(f"{path or 'ONNX model'}: not a reprfn ONNX export (no reprfn metadata)") from None
        self.fp16 = self.metadata.get("precision") == "float16"
        inp = session.get_inputs()[0]
        self._input_name = inp.name
        self._input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, providers: Sequence[str] | None = None,
                  threads: int | None = None) -> OnnxEngine:
        """Open an ONNX file written by ``export_onnx`` (CPUExecutionProvider unless told)."""
        import_ort()
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: no such file")
        try:
            session = ort_session(path, threads=threads, providers=providers)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{path}: cannot be loaded by onnxruntime ({reason[:200]})") from None
        return cls(session, path)

    def __call__(self, x: Tensor, window: Window | None = None) -> Tensor:
        channels = self.info.in_channels
        if x.dim() != 4 or x.shape[1] != channels:
            raise UsageError(f"expected a (N, {channels}, H, W) tensor, got {tuple(x.shape)}")
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy().astype(self._input_dtype, copy=False)
        out = self.session.run(None, {self._input_name: arr})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return f"OnnxEngine({self.info.arch} x{self.info.scale}{', float16' if self.fp16 else ''}{where})"


def open_onnx(model: nn.Module, *, fp16: bool = False, opset: int = DEFAULT_OPSET, threads: int | None = None,
              directory: str | os.PathLike | None = None) -> OnnxEngine:
    """``model`` through ONNX Runtime, from the cache (exported and checked on first use). A cached
    file that cannot be opened (e.g. truncated by hand) is exported again."""
    import_ort()
    path = cached_export(model, fp16=fp16, opset=opset, directory=directory)
    try:
        return OnnxEngine.from_file(path, threads=threads)
    except ExportError:
        path.unlink(missing_ok=True)
    return OnnxEngine.from_file(cached_export(model, fp16=fp16, opset=opset, directory=directory), threads=threads)
