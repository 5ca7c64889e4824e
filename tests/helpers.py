"""Test helpers: random weights, and the optional ../shared data (tests skip without it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REPRFN_SHARED", ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a clean skip when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (shared data is optional)")
    return path


def randomize(model: torch.nn.Module, seed: int = 0, gain: float = 0.5) -> torch.nn.Module:
    """Give every parameter random values (not its init values), sized so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * gain / fan_in**0.5)
    return model

