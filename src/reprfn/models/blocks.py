"""Building blocks shared by the model families: convs, ESA, the pixel-shuffle upsampler, a base class."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.05


def conv(in_channels: int, out_channels: int, kernel_size: int = 3, **kw: Any) -> nn.Conv2d:
    """A conv with 'same' padding for odd kernels (the convention of every model here)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, **kw)


def lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


class ESA(nn.Module):
    """Enhanced spatial attention (RFANet, as used by RFDN and RepRFN).

    ``full=True`` is RFDN's version, whose conv group after the max-pool has three 3x3 convs
    (``conv_max``, ``conv3``, ``conv3_``) with ReLUs between them; ``full=False`` is RepRFN's,
    reduced to the single ``conv3``. Attribute names follow the released checkpoints.
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
        c1_ = self.conv1(x)
        c1 = F.max_pool2d(self.conv2(c1_), kernel_size=7, stride=3)
        if self.full:
            c3 = self.conv3_(F.relu(self.conv3(F.relu(self.conv_max(c1)))))
        else:
            c3 = self.conv3(c1)
        c3 = F.interpolate(c3, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * self.conv4(c3 + self.conv_f(c1_)).sigmoid()


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

    def __init__(self, *, scale: int, in_channels: int, channels: int, blocks: int) -> None:
        super().__init__()
        if scale not in (1, 2, 3, 4, 8):
            raise ValueError(f"unsupported scale {scale}; use 2, 3 or 4")
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

    def fuse(self) -> "SRModel":
        """A new, deploy-form copy of this model (see ``reprfn.models.rep.fuse``)."""
        from .rep import fuse

        return fuse(self)

    def first_conv(self) -> nn.Conv2d:
        return self.get_submodule(self.first_conv_name)

    def last_conv(self) -> nn.Conv2d:
        return self.get_submodule(self.last_conv_name)


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
