"""RFDN (Liu et al., ECCVW 2020), as in the NTIRE/AIM efficient-SR baseline.

Attribute names follow the released code so that its checkpoints load strictly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import ESA, DistillationNet, conv, lrelu


class RFDB(nn.Module):
    """Residual feature distillation block: distil half the channels at each of three steps."""

    def __init__(self, channels: int, esa_channels: int | None = None) -> None:
        super().__init__()
        dc = channels // 2
        for i in (1, 2, 3):
            self.add_module(f"c{i}_d", conv(channels, dc, 1))
            self.add_module(f"c{i}_r", conv(channels, channels, 3))
        self.c4 = conv(channels, dc, 3)
        self.c5 = conv(dc * 4, channels, 1)
        self.esa = ESA(channels, esa_channels or channels // 4, full=True)

    def forward(self, x: Tensor) -> Tensor:
        distilled = []
        for i in (1, 2, 3):
            distilled.append(lrelu(getattr(self, f"c{i}_d")(x)))
            x = lrelu(getattr(self, f"c{i}_r")(x) + x)
        distilled.append(lrelu(self.c4(x)))
        return self.esa(self.c5(torch.cat(distilled, dim=1)))


class RFDN(DistillationNet):
    """RFDN: 4 RFDBs of 50 channels by default."""

    arch = "rfdn"
    block_prefix = "B"

    def __init__(self, *, scale: int = 4, in_channels: int = 3, channels: int = 50, blocks: int = 4) -> None:
        super().__init__(scale=scale, in_channels=in_channels, channels=channels, blocks=blocks)

    def make_block(self) -> nn.Module:
        return RFDB(self.channels)
