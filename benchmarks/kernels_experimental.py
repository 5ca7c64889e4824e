"""Experimental kernel sets, timed by benchmarks/speed.py and not used by reprfn itself.

``WINOGRAD`` runs every 3x3 stride-1 conv through NNPACK's Winograd F(6x6, 3x3) kernels (2.25x
fewer multiplications; bundled with PyTorch's x86 and ARM builds), on NCHW tensors, activations and
adds in place. It is RepRFN's one forward (``models.blocks`` kernel operations) with other kernels,
like the default ``runtime.kernels.ONEDNN``; it is slower here (docs/performance.md).

The former "folded ESA" variant (conv_f folded into conv4, conv4 moved before the upsampling) is
not a kernel set: it changes the order of ESA's operations, so it cannot be written without
restating ESA's tail, and it was slower than the fused set. It is no longer timed.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reprfn.models.blocks import Act, Kernels, Window, activate, esa_window, use_kernels
from reprfn.runtime.info import BYTES_PER_PIXEL, describe


@functools.lru_cache(maxsize=1)
def winograd_available() -> bool:
    """NNPACK is compiled in and its 3x3 Winograd conv matches ``F.conv2d`` (checked once)."""
    try:
        if not torch._nnpack_available():  # also initialises NNPACK, which its conv needs
            return False
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(1, 8, 13, 17, generator=gen)
        w, b = torch.randn(8, 8, 3, 3, generator=gen) * 0.1, torch.randn(8, generator=gen)
        with torch.no_grad():
            got = torch._nnpack_spatial_convolution(x, w, b, [1, 1])
            return bool((got - F.conv2d(x, w, b, padding=1)).abs().max() < 1e-4)
    except Exception:
        return False


def _winograd(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A 3x3 stride-1 conv through NNPACK (Winograd); any other conv through PyTorch. A strided
    conv (ESA's ``conv2``, which the 7x7 max-pool follows) returns channels-last, where that pool
    is several times faster."""
    if conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.groups == 1 and conv.dilation == (1, 1):
        return torch._nnpack_spatial_convolution(x.contiguous(), conv.weight, conv.bias, list(conv.padding))
    if conv.stride != (1, 1):
        return conv(x).contiguous(memory_format=torch.channels_last)
    return conv(x)


def _conv_act(x: Tensor, conv: nn.Conv2d, act: Act) -> Tensor:
    return activate(_winograd(x, conv), act, inplace=True)


def _conv_add(x: Tensor, other: Tensor, conv: nn.Conv2d) -> Tensor:
    return _winograd(x, conv).add_(other)


WINOGRAD = Kernels("NNPACK Winograd F(6x6,3x3), NCHW", _conv_act, _conv_add, Tensor.add_, Tensor.mul_)


class KernelSetEngine:
    """The deploy form of a kernel-written model (``ModelInfo.kernel_ops``) run with ``kernels``,
    NCHW, for inference only (an ``Engine``)."""

    exact_tiles = True
    bytes_per_pixel = BYTES_PER_PIXEL

    def __init__(self, model: nn.Module, kernels: Kernels) -> None:
        info = describe(model)
        if not info.kernel_ops:
            raise ValueError(f"{info.arch} is not written in the kernel operations")
        self.model = (model if info.form == "deploy" else model.fuse()).eval()
        self.kernels, self.name = kernels, kernels.name

    def __call__(self, x: Tensor, window: Window | None = None) -> Tensor:
        with torch.inference_mode(), esa_window(window), use_kernels(self.kernels):
            return self.model(x.contiguous())
