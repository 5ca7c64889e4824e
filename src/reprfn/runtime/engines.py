"""Engines: what runs a forward. One written protocol, and the two PyTorch engines.

An engine is a plain callable with three attributes (``Engine``); nothing here subclasses
``nn.Module`` or forwards attributes to a model. What a model *is* (scale, channels, form) is its
``ModelInfo``; an engine only says how it runs:

* ``TorchEngine``: the model as it is, on any device, in any precision (autocast); what
  ``--backend torch`` runs, and every GPU or bf16/fp16 run.
* ``FusedCPUEngine``: the deploy form in channels-last (NHWC), where oneDNN's direct 3x3 conv
  runs near the machine's peak, with the oneDNN kernel set (``runtime.kernels``) when the model's
  forward is written in the kernel operations; the default CPU path for tiles, and for whole
  images when neither ONNX Runtime nor OpenVINO is there.

Both honour a tile's ``window`` (ESA samples its attention at the whole image's coordinates), so
tiles equal the whole image to float noise. ONNX Runtime and OpenVINO (``runtime.onnx``,
``runtime.openvino``) cannot, and say so with ``exact_tiles = False``.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..models.blocks import Window, esa_window, use_kernels
from ..models.rep import fuse
from .hardware import AUTOCAST, Precision
from .info import BYTES_PER_PIXEL, describe
from .kernels import ONEDNN, fused_ops_available

CL = torch.channels_last


def channels_last(x: Tensor) -> Tensor:
    """``x`` in channels-last layout with the canonical strides (NHWC, densely packed).

    ``contiguous(memory_format=channels_last)`` keeps a tensor that is already dense in that order
    as it is, whatever the strides of its size-1 dimensions: a numpy HxWx3 image seen as
    ``permute(2, 0, 1)[None]`` has a batch stride of 3, not 3*H*W. oneDNN does not recognise
    such strides as channels-last and ran the whole fused network about 3x slower on them; the
    strides of size-1 dimensions address nothing, so restating them is free and exact.
    """
    x = x.contiguous(memory_format=CL)
    n, c, h, w = x.shape
    canonical = (c * h * w, 1, w * c, c)
    return x if x.stride() == canonical else x.as_strided(x.shape, canonical)


@runtime_checkable
class Engine(Protocol):
    """Runs a model's forward: float ``(N, C, H, W)`` in [0, 1] -> float32 ``(N, C, sH, sW)``, in
    whatever memory layout the engine computed it (channels-last engines return channels-last:
    ``run_pixels`` wants HxWxC anyway, and a copy to NCHW costs a pass over the whole output).
    The output is the caller's: ``run_pixels`` quantizes it in place.

    ``window``: where the input sits in the whole image, ``(top, left, height, width)``, when it
    is a tile; an engine that can place ESA's grid by it has ``exact_tiles = True``, one that
    cannot ignores it (its tiles are approximate). ``bytes_per_pixel``: peak memory of a
    whole-image forward per LR pixel, for choosing tile sizes (``memory.auto_tile``).
    """

    name: str
    exact_tiles: bool
    bytes_per_pixel: int

    def __call__(self, x: Tensor, window: Window | None = None) -> Tensor: ...


class TorchEngine:
    """The model as it is, on ``device``, in ``precision`` (bf16/fp16 through autocast).

    ``channels_last``: inputs in NHWC, where cuDNN's tensor-core convs and oneDNN's bf16 convs run
    fastest (the model's weights are not touched: convs take either layout)."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu", precision: Precision = "fp32",
                 *, channels_last: bool = False) -> None:
        if precision not in AUTOCAST:
            raise UsageError(f"unknown precision {precision!r}; use 'fp32', 'bf16' or 'fp16'")
        self.model, self.device, self.precision = model, torch.device(device), precision
        self.channels_last = channels_last
        self.exact_tiles = describe(model).exact_tiles
        self.bytes_per_pixel = BYTES_PER_PIXEL

    def __call__(self, x: Tensor, window: Window | None = None) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = channels_last(x)
        dtype = AUTOCAST[self.precision]
        with esa_window(window), (nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)):
            return self.model(x).float()


class FusedCPUEngine:
    """The deploy form, channels-last, with the oneDNN kernel set where the model allows it.

    ``precision="fp32"``: equal to the model to float rounding (<= 1e-5 on photos); the deploy form
    is the model itself when it has nothing to fold (weights shared), else ``model.fuse()`` (a
    copy). ``"bf16"``: a bfloat16 copy of the deploy form, run on bfloat16 activations (float32 in
    and out): on CPUs with AVX512-BF16 or AMX, oneDNN's bf16 convs run several times faster than
    fp32, and whole bf16 weights beat autocast, which converts the weights on every call (the
    output differs by about 1e-3 on average, ``hardware.TOLERANCE``). A forward that is not a
    float32 CPU forward without autograd or autocast runs the deploy form as it is: the kernel set
    writes in place, which autograd forbids.
    """

    def __init__(self, model: nn.Module, precision: Precision = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise UsageError(f"the fused CPU engine runs fp32 or bf16, not {precision!r}")
        info = describe(model)
        deploy = (model if info.form == "deploy" else fuse(model)).eval()
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # our own copy in bf16: nothing trains it, so autograd never asks for the plain path
        self.model = deploy
        if self.dtype != torch.float32:
            self.model = copy.deepcopy(deploy).to(self.dtype).requires_grad_(False)
        self.precision = precision
        self.kernels = ONEDNN if info.kernel_ops and fused_ops_available() else None
        self.exact_tiles = info.exact_tiles
        self.bytes_per_pixel = BYTES_PER_PIXEL
        base = "torch-fused" if self.kernels else "torch-channels-last"
        self.name = base if precision == "fp32" else f"{base}-bf16"

    def describe(self) -> str:
        """Which kernels run, in words."""
        what = f"PyTorch, fused {self.kernels.name}" if self.kernels is not None else "PyTorch, channels-last eager"
        return what if self.precision == "fp32" else f"{what}, bf16 weights"

    def _plain(self, x: Tensor) -> bool:
        return (x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
                or (torch.is_grad_enabled()
                    and (x.requires_grad or any(p.requires_grad for p in self.model.parameters()))))

    def __call__(self, x: Tensor, window: Window | None = None) -> Tensor:
        with esa_window(window):
            if self._plain(x):
                return self.model(x.to(self.dtype)).float()
            x = channels_last(x.to(self.dtype))
            with use_kernels(self.kernels) if self.kernels is not None else nullcontext():
                return self.model(x).float()
