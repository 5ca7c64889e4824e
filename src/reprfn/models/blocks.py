"""Building blocks shared by the model families: convs, the kernel set, ESA, the pixel-shuffle
upsampler, a base class.

**Kernels.** RepRFN's forward (and ESA's) is written in four operations, ``conv_act``,
``conv_add``, ``add_`` and ``mul_``, that dispatch to the active ``Kernels`` set. The default set,
``EAGER``, is plain PyTorch, out of place, with autograd: what training and every test of the
models run. A runtime may run the *same* forward with another set (``use_kernels``): the fused CPU
engine (``reprfn.runtime.kernels.ONEDNN``) fuses activations and adds into oneDNN convs and writes
residuals in place. So each network is written once, and how its operations run is chosen apart
from it. The set lives in a ``ContextVar``: it is per thread (a server's worker can run the fused
set while another thread trains) and is reset when the ``with`` block ends.

**Tile windows.** ``esa_window(window)`` tells every ESA run inside the block where its input sits
in the whole image (``upsample_in_window``); it too is a ``ContextVar``, not state on the modules,
so one model can run tiles of two images at once.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError

LRELU_SLOPE = 0.05
Act = Literal["lrelu", "sigmoid"] | None
Window = tuple[int, int, int, int]  # (top, left, height, width) of a tile's input in the whole image


# ----------------------------------------------------------------------------------------------
# Kernels: the operations forwards are written in, and the switch that chooses how they run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernels:
    """How ``conv_act``, ``conv_add``, ``add_`` and ``mul_`` are computed.

    ``add_(x, y)`` and ``mul_(x, y)`` may write their result into ``x`` (a set for inference
    does, to save a pass over memory): callers give an ``x`` that nothing else reads afterwards.
    """

    name: str
    conv_act: Callable[[Tensor, nn.Conv2d, Act], Tensor]
    conv_add: Callable[[Tensor, Tensor, nn.Conv2d], Tensor]
    add_: Callable[[Tensor, Tensor], Tensor]
    mul_: Callable[[Tensor, Tensor], Tensor]


def activate(y: Tensor, act: Act, *, inplace: bool = False) -> Tensor:
    """LeakyReLU(0.05), sigmoid or nothing (``act``); in place where no autograd needs ``y``."""
    if act == "lrelu":
        return F.leaky_relu_(y, LRELU_SLOPE) if inplace else F.leaky_relu(y, LRELU_SLOPE)
    if act == "sigmoid":
        return y.sigmoid_() if inplace else y.sigmoid()
    return y


def _eager_conv_act(x: Tensor, conv: nn.Conv2d, act: Act) -> Tensor:
    return activate(conv(x), act)


def _eager_conv_add(x: Tensor, other: Tensor, conv: nn.Conv2d) -> Tensor:
    return conv(x) + other


EAGER = Kernels("eager", _eager_conv_act, _eager_conv_add, operator.add, operator.mul)
_KERNELS: ContextVar[Kernels] = ContextVar("reprfn_kernels", default=EAGER)
_WINDOW: ContextVar[Window | None] = ContextVar("reprfn_esa_window", default=None)


@contextmanager
def use_kernels(kernels: Kernels) -> Iterator[None]:
    """Run the forwards inside the block with ``kernels`` (this thread only)."""
    token = _KERNELS.set(kernels)
    try:
        yield
    finally:
        _KERNELS.reset(token)


def conv_act(x: Tensor, conv: nn.Conv2d, act: Act = None) -> Tensor:
    """``conv(x)``, then LeakyReLU(0.05) (``"lrelu"``), a sigmoid, or nothing (None)."""
    return _KERNELS.get().conv_act(x, conv, act)


def conv_add(x: Tensor, other: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x) + other``."""
    return _KERNELS.get().conv_add(x, other, conv)


def add_(x: Tensor, other: Tensor) -> Tensor:
    """``x + other``, possibly written into ``x``."""
    return _KERNELS.get().add_(x, other)


def mul_(x: Tensor, other: Tensor) -> Tensor:
    """``x * other``, possibly written into ``x``."""
    return _KERNELS.get().mul_(x, other)


@contextmanager
def esa_window(window: Window | None) -> Iterator[None]:
    """Every ESA run inside the block samples its attention as the whole image would, its input
    sitting at ``window`` = (top, left, height, width) of the whole image; None: a whole image."""
    token = _WINDOW.set(window)
    try:
        yield
    finally:
        _WINDOW.reset(token)


def conv(in_channels: int, out_channels: int, kernel_size: int = 3, **kw: Any) -> nn.Conv2d:
    """A conv with 'same' padding for odd kernels (the convention of every model here)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, **kw)


def as_conv(module: nn.Module) -> nn.Conv2d:
    """``module``, checked to be the conv an architecture put there: the items of an
    ``nn.ModuleList`` or ``nn.Sequential`` are typed as any module."""
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"expected a Conv2d, got a {type(module).__name__}")
    return module


def lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


ESA_STRIDE = 6  # conv2 (stride 2) then max-pool (stride 3): one pooled cell per 6 pixels
ESA_MIN_SIZE = 15  # conv2 (3x3, no padding) then a 7x7 pool need at least 15 pixels


def pooled_length(n: int) -> int:
    """Length of ESA's pooled map for an input of length ``n`` (3x3/2 valid conv, 7x7/3 pool)."""
    return ((n - 3) // 2 + 1 - 7) // 3 + 1


def upsample_in_window(c3: Tensor, size: tuple[int, int], window: Window) -> Tensor:
    """Bilinear upsampling (align_corners=False) of a window's pooled map *as the whole image would*.

    ``window = (top, left, height, width)``: where this feature map sits in the full one, with
    ``top`` and ``left`` multiples of ``ESA_STRIDE``, so that the window's pooled cells are the
    full map's cells ``top/6 ...``. Each output pixel samples at the full image's coordinate
    ``(Y + 0.5) * P / H - 0.5`` (clamped at 0), which ``F.interpolate`` on the window alone would
    not: its grid depends on the window's size. This is what makes tiled inference match the whole.
    """
    top, left, height, width = window
    out = c3
    for axis, (start, full, n) in enumerate(((top, height, size[0]), (left, width, size[1]))):
        dim = axis - 2
        cells = pooled_length(full)
        scale = torch.tensor(cells / full, dtype=torch.float32)  # float32, as F.interpolate computes it
        pos = (torch.arange(start, start + n, device=c3.device, dtype=torch.float32) + 0.5) * scale - 0.5
        pos = pos.clamp_(min=0)
        i0 = pos.floor()
        frac = (pos - i0).to(c3.dtype)
        i0 = i0.long()
        i1 = torch.clamp(i0 + 1, max=cells - 1)
        offset = start // ESA_STRIDE
        last = out.shape[dim] - 1
        a = out.index_select(dim, (i0 - offset).clamp_(0, last))
        b = out.index_select(dim, (i1 - offset).clamp_(0, last))
        shape = [1] * out.dim()
        shape[dim] = n
        frac = frac.view(shape)
        out = a + (b - a) * frac
    return out


class ESA(nn.Module):
    """Enhanced spatial attention (RFANet, as used by RFDN and RepRFN).

    ``full=True`` is RFDN's version, whose conv group after the max-pool has three 3x3 convs
    (``conv_max``, ``conv3``, ``conv3_``) with ReLUs between them; ``full=False`` is RepRFN's,
    reduced to the single ``conv3``. Attribute names follow the released checkpoints.

    Written in the kernel operations (see the module doc), so that the fused CPU engine runs this
    one definition; during tiled inference ``esa_window`` places the upsampling grid.
    """

    def __init__(self, channels: int, esa_channels: int, full: bool = False) -> None:
        super().__init__()
        f = esa_channels
        self.full = full
        self.conv1 = nn.Conv2d(channels, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        if full:
            self.conv_max = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        if full:
            self.conv3_ = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x * sigmoid(conv4(up(c3) + conv_f(c1_)))``; ``x`` may be overwritten by a kernel set
        for inference (``mul_``), so callers give ESA a tensor of their own."""
        c1_ = conv_act(x, self.conv1)
        c1 = F.max_pool2d(conv_act(c1_, self.conv2), kernel_size=7, stride=3)
        if self.full:
            c3 = self.conv3_(F.relu(self.conv3(F.relu(self.conv_max(c1)))))
        else:
            c3 = self.conv3(c1)
        up = upsample(c3, (x.shape[-2], x.shape[-1]))
        return mul_(x, conv_act(conv_add(c1_, up, self.conv_f), self.conv4, "sigmoid"))


def upsample(c3: Tensor, size: tuple[int, int]) -> Tensor:
    """ESA's bilinear upsampling to ``size``: of the whole image, or of the tile ``esa_window`` names."""
    window = _WINDOW.get()
    if window is None:
        return F.interpolate(c3, size=size, mode="bilinear", align_corners=False)
    return upsample_in_window(c3, size, window)


def pixelshuffle_block(in_channels: int, out_channels: int, scale: int) -> nn.Sequential:
    """The UB of the paper: one 3x3 conv to ``out * scale**2`` channels, then PixelShuffle."""
    return nn.Sequential(conv(in_channels, out_channels * scale**2, 3), nn.PixelShuffle(scale))


class SRModel(nn.Module):
    """Base class: every model maps (N, C, H, W) to (N, C, H*scale, W*scale).

    Subclasses set the attributes below and name their first and last conv so that a
    checkpoint's native data range (e.g. 0..255) can be folded into the weights exactly.
    """

    arch: str = ""
    first_conv_name: str = "fea_conv"
    last_conv_name: str = "upsampler.0"
    # What a runtime may rely on (``reprfn.runtime.describe``), declared with the architecture:
    # ``kernel_ops``: the whole forward is written in the kernel operations (``conv_act`` ...),
    # so another kernel set may run it; ``exact_tiles``: tiles can equal the whole image, its only
    # whole-image operation (ESA's upsampling) taking the tile's window.
    kernel_ops: bool = False
    exact_tiles: bool = True

    def __init__(self, *, scale: int, in_channels: int, channels: int, blocks: int) -> None:
        super().__init__()
        if scale not in (1, 2, 3, 4, 8):
            raise UsageError(f"unsupported scale {scale}; use 2, 3 or 4")
        self.scale, self.in_channels, self.channels, self.num_blocks = scale, in_channels, channels, blocks
        self.form = "train"

    def config(self) -> dict[str, Any]:
        """What is needed to rebuild this model with ``build``; stored in checkpoint metadata."""
        return {
            "arch": self.arch,
            "scale": self.scale,
            "in_channels": self.in_channels,
            "channels": self.channels,
            "blocks": self.num_blocks,
            "form": self.form,
        }

    def fuse(self) -> SRModel:
        """A new, deploy-form copy of this model (see ``reprfn.models.rep.fuse``)."""
        from .rep import fuse

        return fuse(self)

    def first_conv(self) -> nn.Conv2d:
        return self._conv(self.first_conv_name)

    def last_conv(self) -> nn.Conv2d:
        return self._conv(self.last_conv_name)

    def _conv(self, name: str) -> nn.Conv2d:
        return as_conv(self.get_submodule(name))


class DistillationNet(SRModel):
    """The skeleton shared by RFDN and IMDN: every block's output is concatenated, fused by a
    1x1 conv + LeakyReLU (``c``), then ``LR_conv``, the global residual and the upsampler.

    Blocks are registered as ``{block_prefix}1..N``, the names of the released checkpoints.
    """

    block_prefix = "B"

    def __init__(self, *, scale: int, in_channels: int, channels: int, blocks: int) -> None:
        super().__init__(scale=scale, in_channels=in_channels, channels=channels, blocks=blocks)
        self.fea_conv = conv(in_channels, channels, 3)
        for i in range(blocks):
            self.add_module(f"{self.block_prefix}{i + 1}", self.make_block())
        self.c = nn.Sequential(conv(channels * blocks, channels, 1), nn.LeakyReLU(LRELU_SLOPE))
        self.LR_conv = conv(channels, channels, 3)
        self.upsampler = pixelshuffle_block(channels, in_channels, scale)

    def make_block(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        feat = self.fea_conv(x)
        outs, out = [], feat
        for i in range(self.num_blocks):
            out = getattr(self, f"{self.block_prefix}{i + 1}")(out)
            outs.append(out)
        return self.upsampler(self.LR_conv(self.c(torch.cat(outs, dim=1))) + feat)
