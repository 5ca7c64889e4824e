"""RepRFN and the RFN family: one residual-feature-network skeleton with two kinds of block.

Skeleton (the paper's RFN layout)::

    x -> fea_conv (SFB) -> blocks (DFB) -> lr_conv -> (+ fea_conv output) -> upsampler (UB)

Blocks:
* ``RepRFB``: three RepBlocks, a 3x3 conv + LeakyReLU(0.05), a local residual, ESA(16, one conv).
  Its ablations (``RepRFN.VARIANTS``, for docs/experiments.md): without the edge branches, with
  only the 3x3 branch (no reparameterization), with RFDN's full ESA, with RFDB's 1x1 convs.
* ``RFB``: RFDN's RFDB with the channel split and concatenation removed: three 3x3 convs feeding
  each other, a 3x3 conv, RFDN's full ESA; ``local`` and ``block`` select the residuals of the
  paper's Table 1 (plain, RFB1, RFB2, RFB3). See ``docs/models.md`` for this reading.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .blocks import ESA, SRModel, add_, as_conv, conv, conv_act, conv_add, lrelu, pixelshuffle_block
from .rep import ConvLReLU, Mode, RepBlock


class RepRFB(nn.Module):
    """Reparameterized residual feature block.

    Ablation switches (all off in RepRFN): ``edges=False`` drops the RepBlocks' edge branches;
    ``esa_full`` uses RFDN's ESA conv group; ``distill`` adds RFDB's 1x1 convs back: a 1x1
    distillation conv (C -> C/2) on the input of each RepBlock, and a 1x1 conv fusing those and
    the last conv's output back to C, before the local residual.
    """

    def __init__(self, channels: int, esa_channels: int = 16, deploy: bool = False, mode: Mode = "online",
                 *, edges: bool = True, esa_full: bool = False, distill: bool = False) -> None:
        super().__init__()
        self.rep = nn.ModuleList(
            ConvLReLU(channels, channels) if deploy else RepBlock(channels, channels, mode, edges=edges)
            for _ in range(3)
        )
        self.conv = conv(channels, channels, 3)
        if distill:
            self.distill = nn.ModuleList(conv(channels, channels // 2, 1) for _ in range(3))
            self.fusion = conv(channels // 2 * 3 + channels, channels, 1)
        self.esa = ESA(channels, esa_channels, full=esa_full)

    def forward(self, x: Tensor) -> Tensor:
        out, distilled = x, []
        for i, block in enumerate(self.rep):
            if hasattr(self, "distill"):
                distilled.append(conv_act(out, as_conv(self.distill[i]), "lrelu"))
            out = block(out)
        out = conv_act(out, self.conv, "lrelu")
        if distilled:
            out = conv_act(torch.cat([*distilled, out], dim=1), self.fusion)
        return self.esa(add_(out, x))  # out is this block's own: the sum may take its memory


class RFB(nn.Module):
    """Residual feature block: RFDB without distillation, with selectable residual connections.

    ``local``: a residual around each of the three 3x3 convs (RFDN's shallow residual block).
    ``block``: one residual from the block input to the output of the last conv, before ESA.
    """

    def __init__(self, channels: int, *, local: bool, block: bool, esa_channels: int | None = None) -> None:
        super().__init__()
        self.local, self.block = local, block
        self.convs = nn.ModuleList(conv(channels, channels, 3) for _ in range(3))
        self.conv = conv(channels, channels, 3)
        self.esa = ESA(channels, esa_channels or channels // 4, full=True)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for c in self.convs:
            out = lrelu(c(out) + out) if self.local else lrelu(c(out))
        out = lrelu(self.conv(out))
        return self.esa(out + x if self.block else out)


class RFNet(SRModel):
    """The RFN skeleton; subclasses choose the block."""

    def __init__(self, *, scale: int = 4, in_channels: int = 3, channels: int = 48, blocks: int = 4) -> None:
        super().__init__(scale=scale, in_channels=in_channels, channels=channels, blocks=blocks)
        self.fea_conv = conv(in_channels, channels, 3)
        self.blocks = nn.ModuleList(self.make_block() for _ in range(blocks))
        self.lr_conv = conv(channels, channels, 3)
        self.upsampler = pixelshuffle_block(channels, in_channels, scale)

    def make_block(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        feat = conv_act(x, self.fea_conv)
        out = feat
        for block in self.blocks:
            out = block(out)
        shuffle_conv, shuffle = self.upsampler
        return shuffle(conv_act(conv_add(out, feat, self.lr_conv), as_conv(shuffle_conv)))


class RepRFN(RFNet):
    """RepRFN (Deng et al., CVPRW 2023). ``deploy=True`` builds the fused form directly.

    ``variant`` selects an ablation of ``VARIANTS`` (registered under its name); ``reprfn-3x3``
    is the deploy structure trained as it is, with no branches to fold.
    """

    arch = "reprfn"
    kernel_ops = True  # RepRFB, ConvLReLU and ESA are written in the kernel operations
    VARIANTS: dict[str, dict[str, bool]] = {
        "reprfn": {},
        "reprfn-noedge": {"edges": False},
        "reprfn-3x3": {"deploy": True},
        "reprfn-esafull": {"esa_full": True},
        "reprfn-1x1": {"distill": True},
    }

    def __init__(
        self,
        *,
        scale: int = 4,
        in_channels: int = 3,
        channels: int = 48,
        blocks: int = 4,
        esa_channels: int = 16,
        deploy: bool = False,
        mode: Mode = "online",
        variant: str = "reprfn",
    ) -> None:
        if variant not in self.VARIANTS:
            raise UsageError(f"unknown RepRFN variant {variant!r}; choose from {', '.join(self.VARIANTS)}")
        self.arch, self.options = variant, dict(self.VARIANTS[variant])
        deploy = self.options.pop("deploy", deploy)
        self.esa_channels, self.deploy, self.mode = esa_channels, deploy, mode
        super().__init__(scale=scale, in_channels=in_channels, channels=channels, blocks=blocks)
        self.form = "deploy" if deploy else "train"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "esa_channels": self.esa_channels}

    def make_block(self) -> nn.Module:
        return RepRFB(self.channels, self.esa_channels, deploy=self.deploy, mode=self.mode, **self.options)


class RFN(RFNet):
    """RFN variants of the paper's Table 1, built from ``RFB``."""

    VARIANTS = {
        "rfn-plain": (False, False),
        "rfn-rfb1": (True, False),
        "rfn-rfb2": (False, True),
        "rfn-rfb3": (True, True),
    }

    def __init__(self, variant: str = "rfn-rfb3", **kw: int) -> None:
        if variant not in self.VARIANTS:
            raise UsageError(f"unknown RFN variant {variant!r}; choose from {sorted(self.VARIANTS)}")
        self.arch = variant
        self.local, self.block = self.VARIANTS[variant]
        super().__init__(**kw)

    def make_block(self) -> nn.Module:
        return RFB(self.channels, local=self.local, block=self.block)
