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
``run_model_pixels`` (what ``reprfn upscale`` runs) holds the output once, in the picture's own
uint8/uint16, and quantizes each tile into it: memory is the output plus one tile's forward,
not several float32 copies of the output (a 24 MP photo at x4 is 1.2 GB as uint8, 4.6 GB per
float32 copy). A request that cannot fit in the memory available is refused before any work
(``check_memory``), and a tile holding NaN or infinity is never quantized (``io.check_finite``).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ResourceError, UsageError
from .images import check_finite
from .models.blocks import ESA, ESA_MIN_SIZE, ESA_STRIDE

DEFAULT_PAD = 48  # LR pixels of context on each side of a tile (a multiple of ESA_STRIDE)
MIN_TILE = 48
BYTES_PER_PIXEL = 1_500  # peak memory per LR pixel, fused RepRFN x4, fp32, CPU: 1.4 KB measured (benchmarks/upscale_memory.py)
OPENVINO_BYTES_PER_PIXEL = 1_800  # the same through OpenVINO: 898 MB at 3x540x960, 1.7 KB measured
Precision = Literal["fp32", "bf16", "fp16"]
Window = Callable[[int, int, int, int], Tensor]  # (y0, y1, x0, x1) -> float (N, C, y1-y0, x1-x0)
_CGROUP_FILES = (  # (limit, usage, stat, reclaimable page cache key): cgroup v2, then v1
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "inactive_file"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
     "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"),
)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's free memory, or the host's MemAvailable (less where a
    memory cgroup, e.g. a container's limit, leaves less)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    host = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024
    except OSError:
        pass
    if host is None:
        host = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    cgroup = _cgroup_free()
    return host if cgroup is None else min(host, cgroup)


def _cgroup_free() -> int | None:
    """What this process's memory cgroup still allows (reclaimable page cache counted as free);
    None without a limit. Past it the kernel kills the process rather than failing an allocation."""
    for limit_file, usage_file, stat_file, key in _CGROUP_FILES:
        try:
            text = Path(limit_file).read_text().strip()
            if text == "max" or int(text) >= 1 << 60:
                return None
            usage = int(Path(usage_file).read_text())
            stat = dict(line.split() for line in Path(stat_file).read_text().splitlines() if line.count(" ") == 1)
            return max(0, int(text) - usage + int(stat.get(key, 0)))
        except (OSError, ValueError):
            continue
    return None


def auto_tile(height: int, width: int, device: torch.device, fraction: float = 0.25,
              bytes_per_pixel: int = BYTES_PER_PIXEL, held: int = 0) -> int:
    """A tile size (LR pixels) whose forward fits in ``fraction`` of free memory; 0 = no tiling.

    ``bytes_per_pixel``: the peak memory of a forward per LR pixel; a model that runs through an
    engine hungrier than PyTorch says so with a ``bytes_per_pixel`` attribute (``model_bytes_per_pixel``).
    ``held``: bytes that will be taken from the same memory meanwhile (the output being assembled).
    """
    budget = max(0, available_memory(device) - held) * fraction
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
    try:
        if dtype is None:
            return model(x).float()
        with torch.autocast(device.type, dtype=dtype):
            return model(x).float()
    except RuntimeError as exc:  # the allocator's own text names neither the cause nor the cure
        if isinstance(exc, torch.OutOfMemoryError) or "alloc" in str(exc).lower():
            side = f"{x.shape[-1]}x{x.shape[-2]}"
            raise ResourceError(f"out of memory in a forward of {side} pixels on {device.type}: "
                                "use a smaller --tile (e.g. --tile 256)") from None
        raise


def pad_small(x: Tensor, min_size: int = ESA_MIN_SIZE + 1) -> tuple[Tensor, int, int]:
    """Replicate-pad an image smaller than ESA's minimum; returns the padded image and its size."""
    h, w = x.shape[-2:]
    ph, pw = max(0, min_size - h), max(0, min_size - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


def _whole(tile: int, height: int, width: int) -> bool:
    return not tile or (tile >= height and tile >= width)


def _device_of(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device``, else where the model's weights are (the CPU for a model without any)."""
    if device is None:
        params = getattr(model, "parameters", None)
        first = next(iter(params()), None) if params else None
        device = first.device if first is not None else torch.device("cpu")
    return torch.device(device)


def _tiles(model: nn.Module, window: Window, height: int, width: int, *, tile: int, pad: int,
           device: torch.device, precision: Precision) -> Iterator[tuple[int, int, Tensor]]:
    """The model's output one tile at a time: (top, left, output) in output pixels, on the host.

    ``window(y0, y1, x0, x1)`` gives the input there, so a caller can convert its image a window
    at a time. ``tile=0`` (or a tile covering the image) yields the whole image's output once.
    """
    scale = model.scale
    if _whole(tile, height, width):
        yield 0, 0, _forward(model, window(0, height, 0, width), device, precision).cpu()
        return
    tile, pad = _round_up(max(tile, ESA_STRIDE), ESA_STRIDE), _round_up(pad, ESA_STRIDE)
    for ys, ye, wy0, wy1 in _spans(height, tile, pad):
        for xs, xe, wx0, wx1 in _spans(width, tile, pad):
            with esa_window(model, (wy0, wx0, height, width)):
                y = _forward(model, window(wy0, wy1, wx0, wx1), device, precision)
            top, left = (ys - wy0) * scale, (xs - wx0) * scale
            yield ys * scale, xs * scale, y[..., top : top + (ye - ys) * scale, left : left + (xe - xs) * scale].cpu()


@torch.inference_mode()
def run_model(model: nn.Module, x: Tensor, *, tile: int = 0, pad: int = DEFAULT_PAD,
              device: torch.device | str | None = None, precision: Precision = "fp32") -> Tensor:
    """Super-resolve a float (N, C, H, W) tensor in [0, 1] on the host; returns it on the host.

    ``tile=0`` runs the whole image at once; otherwise tiles of ``tile`` LR pixels (rounded up to
    a multiple of 6) with ``pad`` pixels of context on each side (rounded up likewise).
    """
    device = _device_of(model, device)
    scale = model.scale
    x, h0, w0 = pad_small(x)
    n, _, h, w = x.shape
    tiles = _tiles(model, lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1], h, w,
                   tile=tile, pad=pad, device=device, precision=precision)
    if _whole(tile, h, w):
        return next(tiles)[2][..., : h0 * scale, : w0 * scale].clamp_(0, 1)
    out = torch.empty(n, x.shape[1], h0 * scale, w0 * scale)
    for top, left, y in tiles:
        bottom, right = min(top + y.shape[-2], out.shape[-2]), min(left + y.shape[-1], out.shape[-1])
        out[..., top:bottom, left:right] = y[..., : bottom - top, : right - left]
    return out.clamp_(0, 1)


def forward_bytes(height: int, width: int, tile: int, pad: int, bytes_per_pixel: int = BYTES_PER_PIXEL) -> int:
    """Peak memory of the largest forward of a run: the whole image (tile 0), else one padded tile."""
    if _whole(tile, height, width):
        return height * width * bytes_per_pixel
    side = _round_up(max(tile, ESA_STRIDE), ESA_STRIDE) + 2 * _round_up(pad, ESA_STRIDE)
    return min(side, height) * min(side, width) * bytes_per_pixel


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def check_memory(height: int, width: int, scale: int, out_bytes: int, *, tile: int, pad: int,
                 device: torch.device, bytes_per_pixel: int = BYTES_PER_PIXEL, reserve: int = 0) -> None:
    """Refuse, before any work, a run whose output and largest forward do not fit in memory.

    ``out_bytes``: the output held on the host; ``reserve``: what the caller needs besides at
    the same time (alpha, the writer). Past the memory available the allocator fails with text
    that says nothing useful, or the kernel kills the process; instead a ``ResourceError`` says
    how large the output would be and what to do: a smaller scale or parts when the output
    itself does not fit, a smaller ``--tile`` when the forward does not.
    """
    host = available_memory(torch.device("cpu"))
    held = out_bytes + reserve
    smallest = forward_bytes(height, width, MIN_TILE, pad, bytes_per_pixel) if device.type == "cpu" else 0
    if held + smallest > host:
        out_h, out_w = height * scale, width * scale
        raise ResourceError(
            f"the x{scale} output would be {out_w}x{out_h} ({out_w * out_h / 1e6:,.0f} megapixels) and needs "
            f"about {_size(held + smallest)} of memory, but {_size(host)} is available: use a smaller "
            "--scale, or upscale the image in parts")
    forward = forward_bytes(height, width, tile, pad, bytes_per_pixel)
    free = host - held if device.type == "cpu" else available_memory(device)
    if forward > free:
        side = int(math.sqrt(free / 2 / bytes_per_pixel)) - 2 * _round_up(pad, ESA_STRIDE)
        suggestion = max(MIN_TILE, side // ESA_STRIDE * ESA_STRIDE)
        what = "a whole-image forward" if _whole(tile, height, width) else f"a forward of {tile}-pixel tiles"
        raise ResourceError(
            f"{what} needs about {_size(forward)} of memory on {device.type}, but {_size(free)} is left "
            f"beside the output: use --tile {suggestion} (or --tile auto)")


def _pad_small_array(pixels: np.ndarray, min_size: int = ESA_MIN_SIZE + 1) -> np.ndarray:
    """``pad_small`` for an HxW[xC] array: edge replication (the same values as F.pad 'replicate')."""
    ph, pw = max(0, min_size - pixels.shape[0]), max(0, min_size - pixels.shape[1])
    if not (ph or pw):
        return pixels
    return np.pad(pixels, ((0, ph), (0, pw)) + ((0, 0),) * (pixels.ndim - 2), mode="edge")


@torch.inference_mode()
def run_model_pixels(model: nn.Module, pixels: np.ndarray, *, tile: int = 0, pad: int = DEFAULT_PAD,
                     device: torch.device | str | None = None, precision: Precision = "fp32",
                     reserve: int = 0) -> np.ndarray:
    """SR of an HxW or HxWx3 uint8/uint16 array; the same layout and dtype out, C-contiguous.

    The output is allocated once, in the input's dtype, and every tile is checked for NaN and
    infinity (``io.check_finite``), clamped, scaled, rounded and stored into it as it comes;
    the input is converted to float a window at a time. A greyscale image is given to an RGB
    model on three equal channels and the output averaged back. The run is refused up front when
    it cannot fit in memory (``check_memory``; ``reserve``: bytes the caller needs besides).
    """
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim not in (2, 3):
        raise UsageError(f"expected an HxW or HxWx3 uint8/uint16 array, got {pixels.dtype} {pixels.shape}")
    device = _device_of(model, device)
    scale, grey = model.scale, pixels.ndim == 2
    channels, given = getattr(model, "in_channels", 3), 1 if grey else pixels.shape[2]
    if given != channels and not (grey and channels == 3):
        raise UsageError(f"a {given}-channel image for a model of {channels} input channels")
    h0, w0 = pixels.shape[:2]
    shape = (h0 * scale, w0 * scale) + pixels.shape[2:]
    check_memory(h0, w0, scale, math.prod(shape) * pixels.itemsize, tile=tile, pad=pad, device=device,
                 bytes_per_pixel=model_bytes_per_pixel(model), reserve=reserve)
    src = _pad_small_array(pixels)
    top_value = np.float32(np.iinfo(pixels.dtype).max)
    try:
        out = np.empty(shape, pixels.dtype)
    except MemoryError:
        raise ResourceError(f"out of memory for the {shape[1]}x{shape[0]} output: use a smaller --scale, "
                            "or upscale the image in parts") from None

    def window(y0: int, y1: int, x0: int, x1: int) -> Tensor:
        part = torch.from_numpy(src[y0:y1, x0:x1].astype(np.float32) / top_value)
        return part[None, None].expand(-1, channels, -1, -1) if grey else part.permute(2, 0, 1)[None]

    for top, left, y in _tiles(model, window, *src.shape[:2], tile=tile, pad=pad, device=device, precision=precision):
        arr = y[0].numpy()  # (C, h, w), a view; numpy: no thread start-up per small tile
        check_finite(arr)
        np.clip(arr, 0, 1, out=arr)
        arr = arr.mean(axis=0, dtype=np.float32) if grey else arr.transpose(1, 2, 0)
        np.rint(np.multiply(arr, top_value, out=arr), out=arr)
        bottom, right = min(top + arr.shape[0], shape[0]), min(left + arr.shape[1], shape[1])
        out[top:bottom, left:right] = arr[: bottom - top, : right - left]
    return out
