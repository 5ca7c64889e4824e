"""Test helpers: random weights, the optional ../shared data (tests skip without it), and the
model's own output as the reference for everything that upscales."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REPRFN_SHARED", ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a clean skip when it is not there (a failure where
    ``REPRFN_REQUIRE_SHARED`` is set, as CI does: there a skip would hide an untested reference)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("REPRFN_REQUIRE_SHARED"):
            pytest.fail(f"{path} not available, and REPRFN_REQUIRE_SHARED is set")
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



# ------------------------------------------------------------------------------------------------
# The model's own output: the reference for everything that upscales
# ------------------------------------------------------------------------------------------------

SAMPLE = ROOT / "src" / "reprfn" / "assets" / "astronaut.png"


def asymmetric_photo() -> np.ndarray:
    """A 36x52 RGB crop of the bundled photo (orange suit, purple patch): R, G and B differ pixel by
    pixel and neither axis is a mirror of itself, so a channel swap, a flip or a transpose shows."""
    from PIL import Image

    crop = np.asarray(Image.open(SAMPLE).convert("RGB"))[160:196, 56:108].copy()
    c = crop.astype(int)
    assert min(np.abs(c[..., i] - c[..., j]).mean() for i, j in ((0, 1), (1, 2), (0, 2))) > 20
    assert np.abs(c - c[::-1]).mean() > 20 and np.abs(c - c[:, ::-1]).mean() > 20
    return crop


@torch.inference_mode()
def reference_sr(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    """What the docs say ``reprfn.upscale`` returns for an HxW or HxWx3 uint8/uint16 image, computed
    the plain way: ``model`` (eager PyTorch, float32) called once on the whole image scaled to
    [0, 1] (a grey image on three equal channels), its output clamped to [0, 1], averaged back to
    one channel for grey, scaled to the image's range and rounded to the nearest level."""
    peak = float(np.iinfo(pixels.dtype).max)
    x = torch.from_numpy(pixels.astype(np.float64) / peak).float()
    x = x[None].expand(3, -1, -1) if x.dim() == 2 else x.permute(2, 0, 1)
    y = model(x[None].contiguous())[0].clamp(0, 1).double()
    y = y.mean(dim=0) if pixels.ndim == 2 else y.permute(1, 2, 0)
    return np.rint(y.numpy() * peak).astype(pixels.dtype)


def assert_close_levels(got: np.ndarray, want: np.ndarray, max_fraction: float) -> None:
    """Equal to within one level, and off by that level on at most ``max_fraction`` of the samples:
    float rounding (<= 1e-5) only moves values that sit on a rounding boundary."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    off = float((diff > 0).mean())
    assert diff.max() <= 1 and off <= max_fraction, f"max {diff.max()} levels, {off:.2%} of samples differ"


def assert_default_engine_ran(prepared: list, whole_images: bool = True) -> None:
    """Every runner ``prepare`` handed out is what ``--backend auto`` picks: the fused PyTorch engine
    for tiles and whole images (or, where ``REPRFN_ENGINE`` names one, that engine for whole images,
    opened rather than fallen back)."""
    from reprfn.runtime.engines import FusedCPUEngine
    from reprfn.runtime.prepare import whole_image_engine

    assert prepared, "prepare was not called"
    engine = whole_image_engine()
    for net in prepared:
        assert isinstance(net.tiles, FusedCPUEngine), type(net.tiles)
        assert net.whole_name == engine, net.describe()
        assert net.fallback is None, net.describe()
        if engine is not None and whole_images:
            assert net.opened is not None and net.opened.name == engine, "the engine never ran"


# ------------------------------------------------------------------------------------------------
# A training run that goes wrong at a chosen iteration
# ------------------------------------------------------------------------------------------------


def loss_goes_wrong_at(monkeypatch: pytest.MonkeyPatch, call: int,
                       change: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Make ``reprfn train``'s loss go wrong at its ``call``-th call (one call per iteration):
    ``change`` gets the true loss and returns what the loop sees, or raises (a killed process).
    Undone with ``monkeypatch``, e.g. at the end of a ``monkeypatch.context()``."""
    import reprfn.train as train_mod

    class WrongAt(train_mod.WeightedLoss):
        calls = 0

        def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
            WrongAt.calls += 1
            loss = super().forward(sr, hr)
            return change(loss) if WrongAt.calls == call else loss

    monkeypatch.setattr(train_mod, "WeightedLoss", WrongAt)
