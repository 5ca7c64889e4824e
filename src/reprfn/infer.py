"""Inference on images of any size: tiles with enough context that the seams do not show.

What a tile needs, and why (see docs/inference.md):

* **Context.** Every 3x3 conv sees one pixel further; ESA sees much further: a pooled cell covers
  15 pixels (3x3 conv with stride 2, then a 7x7 max-pool with stride 3), ``conv3`` looks one cell
  (6 pixels) each way, and bilinear upsampling reads the next cell. Each RepRFB therefore reaches
  about 4 + 33 pixels, and the whole network about 140. Missing context only perturbs pixels near
  a tile's edge, and the perturbation fades as it crosses the blocks; ``DEFAULT_PAD`` keeps what
  reaches the kept part of a tile to float noise: on a photo with the bundled x4 model, 48 pixels
  give a max |tiled - whole| of 5e-7 (36: 4e-5, 24: 3e-4, 12: 7e-3, 0: 0.26).
* **Stride alignment.** ESA's pooled grid has a stride of 6 pixels. A tile that starts at a
  multiple of 6 sees the same pooled cells as the whole image does; any other start sees other
  maxima. Tiles and their context windows therefore start at multiples of 6.
* **The upsampling grid.** ``F.interpolate(size=...)`` places its samples relative to the size of
  the map it is given, so a tile would sample ESA's attention at positions that drift by up to
  2.5 cells from where the whole image samples it. During tiled inference each ESA samples at
  the whole image's coordinates instead (``models.blocks.upsample_in_window``); without this,
  48 pixels of context still leave differences of 3 levels (0.012).

The whole image stays in host memory; only one padded tile at a time is on the device.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models.blocks import ESA, ESA_MIN_SIZE, ESA_STRIDE

DEFAULT_PAD = 48  # LR pixels of context on each side of a tile (a multiple of ESA_STRIDE)
MIN_TILE = 48
BYTES_PER_PIXEL = 1_500  # peak memory per LR pixel, fused RepRFN x4, fp32, CPU: 1.4 KB measured (benchmarks/upscale_memory.py)
OPENVINO_BYTES_PER_PIXEL = 1_800  # the same through OpenVINO: 898 MB at 3x540x960, 1.7 KB measured
Precision = Literal["fp32", "bf16", "fp16"]


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def auto_tile(height: int, width: int, device: torch.device, fraction: float = 0.25,
              bytes_per_pixel: int = BYTES_PER_PIXEL) -> int:
    """A tile size (LR pixels) whose forward fits in ``fraction`` of free memory; 0 = no tiling.

    ``bytes_per_pixel``: the peak memory of a forward per LR pixel; a model that runs through an
    engine hungrier than PyTorch says so with a ``bytes_per_pixel`` attribute (``model_bytes_per_pixel``).
    """
    budget = available_memory(device) * fraction
    if height * width * bytes_per_pixel <= budget:
        return 0
    side = int(math.sqrt(budget / bytes_per_pixel)) - 2 * DEFAULT_PAD
    return max(MIN_TILE, side // ESA_STRIDE * ESA_STRIDE)


def model_bytes_per_pixel(model: nn.Module) -> int:
    """What a whole-image forward of ``model`` needs per LR pixel: its own figure, else PyTorch's."""
    return int(getattr(model, "bytes_per_pixel", BYTES_PER_PIXEL))


@contextmanager
def esa_window(model: nn.Module, window: tuple[int, int, int, int]) -> Iterator[None]:
    """Tell every ESA of ``model`` where its input sits in the full image (for one tile)."""
    modules = [m for m in model.modules() if isinstance(m, ESA)]
    for m in modules:
        m.window = window
    try:
        yield
    finally:
        for m in modules:
            m.window = None


def _spans(length: int, tile: int, pad: int) -> list[tuple[int, int, int, int]]:
    """(keep_start, keep_end, window_start, window_end) along one axis; starts aligned to 6."""
    spans = []
    for start in range(0, length, tile):
        end = min(start + tile, length)
        lo = max(0, start - pad)
        hi = min(length, end + pad)
        if hi - lo < ESA_MIN_SIZE:  # a short last tile: widen its window backwards
            lo = max(0, (hi - ESA_MIN_SIZE) // ESA_STRIDE * ESA_STRIDE)
        spans.append((start, end, lo, hi))
    return spans


def _forward(model: nn.Module, x: Tensor, device: torch.device, precision: Precision) -> Tensor:
    x = x.to(device, non_blocking=True)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype is None:
        return model(x).float()
    with torch.autocast(device.type, dtype=dtype):
        return model(x).float()


def pad_small(x: Tensor, min_size: int = ESA_MIN_SIZE + 1) -> tuple[Tensor, int, int]:
    """Replicate-pad an image smaller than ESA's minimum; returns the padded image and its size."""
    h, w = x.shape[-2:]
    ph, pw = max(0, min_size - h), max(0, min_size - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


@torch.inference_mode()
def run_model(model: nn.Module, x: Tensor, *, tile: int = 0, pad: int = DEFAULT_PAD,
              device: torch.device | str | None = None, precision: Precision = "fp32") -> Tensor:
    """Super-resolve a float (N, C, H, W) tensor in [0, 1] on the host; returns it on the host.

    ``tile=0`` runs the whole image at once; otherwise tiles of ``tile`` LR pixels (rounded up to
    a multiple of 6) with ``pad`` pixels of context on each side (rounded up likewise).
    """
    if device is None:
        params = getattr(model, "parameters", None)
        device = next(params()).device if params else torch.device("cpu")
    device = torch.device(device)
    scale = model.scale
    x, h0, w0 = pad_small(x)
    n, _, h, w = x.shape
    if not tile or (tile >= h and tile >= w):
        return _forward(model, x, device, precision)[..., : h0 * scale, : w0 * scale].cpu().clamp_(0, 1)
    tile, pad = _round_up(max(tile, ESA_STRIDE), ESA_STRIDE), _round_up(pad, ESA_STRIDE)
    out = torch.empty(n, x.shape[1], h * scale, w * scale)
    for ys, ye, wy0, wy1 in _spans(h, tile, pad):
        for xs, xe, wx0, wx1 in _spans(w, tile, pad):
            with esa_window(model, (wy0, wx0, h, w)):
                y = _forward(model, x[..., wy0:wy1, wx0:wx1], device, precision)
            top, left = (ys - wy0) * scale, (xs - wx0) * scale
            out[..., ys * scale : ye * scale, xs * scale : xe * scale] = \
                y[..., top : top + (ye - ys) * scale, left : left + (xe - xs) * scale].cpu()
    return out[..., : h0 * scale, : w0 * scale].clamp_(0, 1)
