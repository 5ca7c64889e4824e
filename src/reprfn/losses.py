"""Training losses: pixel losses, the FFT loss of the paper, and weighted sums from a config."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

CHARBONNIER_EPS2 = 1e-6


def l1_loss(sr: Tensor, hr: Tensor) -> Tensor:
    return F.l1_loss(sr, hr)


def l2_loss(sr: Tensor, hr: Tensor) -> Tensor:
    return F.mse_loss(sr, hr)


def charbonnier_loss(sr: Tensor, hr: Tensor, eps2: float = CHARBONNIER_EPS2) -> Tensor:
    """mean(sqrt((sr - hr)^2 + eps^2)): L1 that stays smooth at zero (eps^2 = 1e-6)."""
    return torch.sqrt((sr - hr).square() + eps2).mean()


def fft_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """Mean absolute value of the complex difference of the 2-D FFTs over H and W.

    Computed in float32 even under autocast: half-precision FFTs are neither supported for every
    size nor accurate enough for a loss.
    """
    diff = torch.fft.fft2(sr.float()) - torch.fft.fft2(hr.float())
    return diff.abs().mean()


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l1": l1_loss,
    "l2": l2_loss,
    "charbonnier": charbonnier_loss,
    "fft": fft_loss,
}


def loss_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The non-zero terms of a ``loss`` config section. An unknown name or an all-zero sum is
    refused: either would train on something other than what the config says."""
    unknown = sorted(set(weights) - set(LOSSES))
    if unknown:
        raise ConfigError(f"config loss.{unknown[0]}: unknown loss {unknown[0]!r}; choose from {', '.join(LOSSES)}")
    terms = {k: float(v) for k, v in weights.items() if float(v) != 0.0}
    if not terms:
        raise ConfigError("config loss: no term has a non-zero weight")
    return terms


class WeightedLoss(nn.Module):
    """A weighted sum of named losses, e.g. ``{"charbonnier": 0.9, "fft": 0.1}`` (the paper's)."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.weights = loss_weights(weights)

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        sr = sr.float()
        return reduce(operator.add, (w * LOSSES[name](sr, hr) for name, w in self.weights.items()))
