"""IMDN (Hui et al., ACM MM 2019): information multi-distillation network.

Attribute names follow the released code so that its checkpoints load strictly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import DistillationNet, conv, lrelu


class CCALayer(nn.Module):
    """Contrast-aware channel attention: per-channel (std + mean) -> squeeze-excite -> scale."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return x * self.conv_du(std + mean)


class IMDModule(nn.Module):
    """Keep a quarter of the channels at each of four progressive steps, concatenate, attend, fuse."""

    def __init__(self, channels: int, distillation_rate: float = 0.25) -> None:
        super().__init__()
        self.dc = int(channels * distillation_rate)
        self.rc = channels - self.dc
        self.c1 = conv(channels, channels, 3)
        self.c2 = conv(self.rc, channels, 3)
        self.c3 = conv(self.rc, channels, 3)
        self.c4 = conv(self.rc, self.dc, 3)
        self.c5 = conv(self.dc * 4, channels, 1)
        self.cca = CCALayer(self.dc * 4)

    def forward(self, x: Tensor) -> Tensor:
        distilled, remaining = [], x
        for c in (self.c1, self.c2, self.c3):
            d, remaining = torch.split(lrelu(c(remaining)), [self.dc, self.rc], dim=1)
            distilled.append(d)
        distilled.append(self.c4(remaining))
        return self.c5(self.cca(torch.cat(distilled, dim=1))) + x


class IMDN(DistillationNet):
    """IMDN: 6 IMDBs of 64 channels by default."""

    arch = "imdn"
    block_prefix = "IMDB"
    exact_tiles = False  # CCA's per-channel mean and std are over the whole input: a tile's differ

    def __init__(self, *, scale: int = 4, in_channels: int = 3, channels: int = 64, blocks: int = 6) -> None:
        super().__init__(scale=scale, in_channels=in_channels, channels=channels, blocks=blocks)

    def make_block(self) -> nn.Module:
        return IMDModule(self.channels)
