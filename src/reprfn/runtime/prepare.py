"""How a model runs: ``prepare`` picks its engines once and returns a ``Runner``.

The policy, in one place:

* ``backend="torch"``: the model as it is (``TorchEngine``), any device and precision.
* ``backend="onnxruntime"``: ONNX Runtime on the CPU for everything, opened now (a failure is an
  error); its tiles are approximate (docs/inference.md).
* ``backend="auto"`` (the default), by precision (``"auto"`` is made concrete first:
  ``hardware.resolve_precision``):

  | device, precision | tiles and whole images |
  |---|---|
  | CPU, fp32 | fused PyTorch (``FusedCPUEngine``, exact) |
  | CPU, bf16 | fused PyTorch on a bf16 copy |
  | CPU fp16, CUDA, MPS | the model under autocast (``TorchEngine``; channels-last on GPUs) |

  On the CPU the fused engine ran level with or ahead of ONNX Runtime and OpenVINO for whole
  images on quiet machines (docs/performance.md), with no export to wait for and tiles equal to
  the whole image's engine. ``REPRFN_ENGINE=onnxruntime|openvino`` runs whole images through
  that engine instead (fp32; OpenVINO also in bf16): it is opened on the first whole image (an
  export of a few seconds, then cached on disk); if that fails for any reason (not installed,
  an export or a check that fails) the tiles engine takes over and ``Runner.fallback`` says why.

A ``Runner`` is itself an ``Engine``: called with a tile's window it runs the exact engine,
without one the whole-image engine. Runners are prepared once: ``prepare`` keeps them per model
object, keyed by the state of its weights, the device, precision and backend (and the engine
variables), so calling ``reprfn.upscale(img, model=m)`` again reuses the opened engine.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import UsageError, one_line
from ..models.blocks import Window
from .engines import Engine, FusedCPUEngine, TorchEngine
from .hardware import Precision, PrecisionChoice, resolve_precision
from .info import BYTES_PER_PIXEL, OPENVINO_BYTES_PER_PIXEL, ModelInfo, describe
from .onnx import model_digest, onnxruntime_available, open_onnx
from .openvino import open_openvino, openvino_available

Backend = Literal["auto", "torch", "onnxruntime"]
Model = nn.Module | Engine  # a torch model, or an engine that carries its ``info``
LABELS = {
    "onnxruntime": "ONNX Runtime",
    "openvino": "OpenVINO",
    "torch": "PyTorch (the model as it is)",
    "torch-fused": "PyTorch, fused oneDNN post-ops, channels-last",
    "torch-channels-last": "PyTorch, channels-last eager",
    "torch-fused-bf16": "PyTorch, fused oneDNN post-ops, channels-last, bf16 weights",
    "torch-channels-last-bf16": "PyTorch, channels-last eager, bf16 weights",
    "openvino-bf16": "OpenVINO (bf16)",
    "bicubic": "MATLAB bicubic",
}


@dataclass(frozen=True)
class Opener:
    """An engine not opened yet: its name, what it will need per pixel, and how to open it."""

    name: str
    bytes_per_pixel: int
    open: Callable[[], Engine]


class Runner:
    """One model, ready to run: its ``info``, the ``tiles`` engine and the whole-image engine."""

    def __init__(self, info: ModelInfo, tiles: Engine, whole: Engine | Opener | None = None, *,
                 device: torch.device | str = "cpu") -> None:
        self.info, self.tiles, self.device = info, tiles, torch.device(device)
        self._pending = whole if isinstance(whole, Opener) else None
        self._whole: Engine | None = None if isinstance(whole, Opener) else whole
        self.whole_name: str | None = whole.name if whole is not None else None
        self.fallback: str | None = None  # why the whole-image engine could not be opened
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        whole = self.whole_name
        return self.tiles.name if whole in (None, self.tiles.name) else f"{whole}+{self.tiles.name}"

    @property
    def opened(self) -> Engine | None:
        """The whole-image engine once opened (None before, and after a fallback)."""
        return self._whole

    @property
    def exact_tiles(self) -> bool:
        return self.tiles.exact_tiles

    @property
    def bytes_per_pixel(self) -> int:
        """Of a whole-image forward: the whole-image engine's figure (before it is opened too)."""
        if self._whole is not None:
            return self._whole.bytes_per_pixel
        if self._pending is not None:
            return self._pending.bytes_per_pixel
        return self.tiles.bytes_per_pixel

    def whole(self) -> Engine:
        """The whole-image engine, opened on first use; the tiles engine if it cannot be."""
        with self._lock:
            if self._pending is not None:
                try:
                    self._whole = self._pending.open()
                except Exception as exc:  # noqa: BLE001 - any failure means: use PyTorch
                    self.fallback = one_line(exc)[:200]
                self._pending = None
        return self._whole or self.tiles

    def __call__(self, x: Tensor, window: Window | None = None) -> Tensor:
        """A tile (``window`` given) through the exact engine; so too anything a whole-image
        engine cannot take (not a float32 CPU tensor, autocast, autograd); else the whole image."""
        unusual = (x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
                   or (torch.is_grad_enabled() and x.requires_grad))
        if window is not None or unusual:
            return self.tiles(x, window)
        return self.whole()(x)

    def describe(self) -> str:
        """Which engines run what, in words (``reprfn profile``, the benchmarks)."""
        tiles = LABELS.get(self.tiles.name, self.tiles.name)
        whole = LABELS.get(self.whole_name or "", self.whole_name)
        if self.fallback:
            return f"{tiles} ({whole} failed: {self.fallback})"
        if self.whole_name in (None, self.tiles.name):
            return tiles
        return f"{whole} (whole images); {tiles} (tiles)"

    def __repr__(self) -> str:
        return f"Runner({self.info.arch} x{self.info.scale}: {self.describe()})"


WHOLE_IMAGE_ENGINES = ("onnxruntime", "openvino")


def whole_image_engine() -> str | None:
    """The engine ``$REPRFN_ENGINE`` asks to run whole images (``onnxruntime`` or ``openvino``), or
    None (unset, or ``torch``): the tiles engine runs them too."""
    wanted = os.environ.get("REPRFN_ENGINE", "")
    if wanted in ("", "torch"):
        return None
    if wanted not in WHOLE_IMAGE_ENGINES:
        raise UsageError(f"REPRFN_ENGINE={wanted!r}: use 'torch', 'onnxruntime' or 'openvino'")
    return wanted


def opener(name: str, model: nn.Module, info: ModelInfo, precision: Precision = "fp32") -> Opener:
    """How to open the whole-image engine ``name`` ("onnxruntime" or "openvino") for ``model``."""
    if name == "onnxruntime":
        return Opener(name, BYTES_PER_PIXEL,
                      lambda: _if_installed(onnxruntime_available, name, lambda: open_onnx(model)))
    if name == "openvino":
        label = name if precision == "fp32" else f"{name}-{precision}"
        return Opener(label, OPENVINO_BYTES_PER_PIXEL,
                      lambda: _if_installed(openvino_available, name,
                                            lambda: open_openvino(model, info, precision=precision)))
    raise UsageError(f"unknown engine {name!r}; use 'openvino' or 'onnxruntime'")


def _if_installed(available: Callable[[], bool], name: str, open_engine: Callable[[], Engine]) -> Engine:
    """``open_engine()``, or the error ``Runner.fallback`` reports for an engine asked for but not installed."""
    if not available():
        extra = {"onnxruntime": "onnx"}.get(name, name)
        raise UsageError(f"REPRFN_ENGINE={name}, but {name} is not installed (pip install 'reprfn[{extra}]')")
    return open_engine()


def _auto_engines(model: nn.Module, info: ModelInfo, device: torch.device,
                  precision: Precision) -> tuple[Engine, Opener | None]:
    """(tiles engine, whole-image engine to open) of ``backend="auto"``: the table of the module doc."""
    if device.type != "cpu" or precision == "fp16":
        return TorchEngine(model, device, precision, channels_last=device.type != "cpu"), None
    name = whole_image_engine()
    if precision == "bf16":
        return FusedCPUEngine(model, "bf16"), opener("openvino", model, info, "bf16") if name == "openvino" else None
    return FusedCPUEngine(model), opener(name, model, info) if name is not None else None


PREPARED_MODELS = 8  # models whose runners are kept (a runner holds its model and engines)
_PREPARED: OrderedDict[int, tuple[nn.Module, dict[tuple, Runner]]] = OrderedDict()
_PREPARED_LOCK = threading.Lock()


def weights_version(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Where each weight lives and how often it was written: changes whenever a weight is
    modified in place (``add_``, ``load_state_dict``) or replaced, at the cost of a tuple, not a
    hash of every weight (which cost a few ms per ``reprfn.upscale`` call)."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_inference() for t in tensors):  # made under inference_mode: no version counter to read
        return ((hash(model_digest(model)), -1),)
    return tuple((t.data_ptr(), t._version) for t in tensors)


def _prepared(model: nn.Module, key: tuple, make: Callable[[], Runner]) -> Runner:
    """The runner of ``model`` for ``key`` (device, precision, backend, engine variables), made
    once per state of its weights (``weights_version``): changed weights make a new one. The
    runners of the last ``PREPARED_MODELS`` models are kept (least recently used first out); the
    model is held with them, so its ``id`` stays its own while it is in the cache."""
    digest = weights_version(model)
    with _PREPARED_LOCK:
        _, runners = _PREPARED.pop(id(model), (model, {}))
        _PREPARED[id(model)] = (model, runners)
        while len(_PREPARED) > PREPARED_MODELS:
            _PREPARED.popitem(last=False)
        full = (digest, *key)
        runner = runners.get(full)
        if runner is None:
            for stale in [k for k in runners if k[0] != digest]:
                del runners[stale]
            runner = runners[full] = make()
        return runner


def prepare(model: Model | Runner, device: torch.device | str = "cpu", precision: PrecisionChoice = "fp32",
            backend: Backend = "auto") -> Runner:
    """How ``model`` runs on ``device`` in ``precision`` with ``backend`` (module doc); prepared
    once per model object and weights (a second call with the same arguments is a lookup).

    ``model``: a torch model, a ``Runner`` (returned as it is: it was prepared already), or an
    engine that carries its ``info`` (an ``OnnxEngine``, the bicubic baseline: run as it is).
    """
    if isinstance(model, Runner):
        return model
    if backend not in ("auto", "torch", "onnxruntime"):
        raise UsageError(f"unknown backend {backend!r}; use 'auto', 'torch' or 'onnxruntime'")
    device = torch.device(device)
    concrete = resolve_precision(precision, device)
    if not isinstance(model, nn.Module) and isinstance(model, Engine):
        return Runner(describe(model), model, device=device)
    if backend == "onnxruntime" and device.type != "cpu":
        raise UsageError("the onnxruntime backend runs on the CPU: use device='cpu'")
    describe(model)  # refuses what is not a model before anything is hashed or kept
    key = (str(device), concrete, backend, os.environ.get("REPRFN_ENGINE", ""))
    return _prepared(model, key, lambda: _make_runner(model, device, concrete, backend))


def forget() -> None:
    """Drop every prepared runner (and the models and engines they hold)."""
    with _PREPARED_LOCK:
        _PREPARED.clear()


def _make_runner(model: nn.Module, device: torch.device, precision: Precision, backend: Backend) -> Runner:
    info = describe(model)
    if backend == "torch":
        return Runner(info, TorchEngine(model, device, precision), device=device)
    if backend == "onnxruntime":
        return Runner(info, open_onnx(model), device=device)
    tiles, whole = _auto_engines(model, info, device, precision)
    return Runner(info, tiles, whole, device=device)


def model_device(model: Model | Runner) -> torch.device:
    """Where a model runs: a ``Runner``'s device, else where its weights are (the CPU for a model
    without any, or one that is not torch)."""
    if isinstance(model, Runner):
        return model.device
    params = model.parameters() if isinstance(model, nn.Module) else iter(())
    first = next(iter(params), None)
    return first.device if first is not None else torch.device("cpu")


def as_runner(model: Model | Runner, device: torch.device | str | None = None,
              precision: PrecisionChoice = "fp32") -> Runner:
    """A ``Runner`` as it is; anything else run as it is (``backend="torch"``) on ``device``
    (default: where its weights are): a bare model passed to ``run`` stays a bare model."""
    if isinstance(model, Runner):
        return model
    return prepare(model, device if device is not None else model_device(model), precision, "torch")
