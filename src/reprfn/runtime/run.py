"""Running a model on an image of any size: tiles with enough context that the seams do not show.

What a tile needs, and why (see docs/inference.md):

* **Context.** Every 3x3 conv sees one pixel further; ESA sees much further: a pooled cell covers
  15 pixels (3x3 conv with stride 2, then a 7x7 max-pool with stride 3), ``conv3`` looks one cell
  (6 pixels) each way, and bilinear upsampling reads the next cell. Each RepRFB therefore reaches
  about 4 + 33 pixels, and the whole network about 140. Missing context only perturbs pixels near
  a tile's edge, and the perturbation fades as it crosses the blocks; ``DEFAULT_PAD`` keeps what
  reaches the kept part of a tile to float noise: on a photo with the bundled x4 model, 48 pixels
  give a max |tiled - whole| of 5e-7 (36: 4e-5, 24: 3e-4, 12: 7e-3, 0: 0.26).
* **Stride alignment.** ESA's pooled grid has a stride of 6 pixels (``ModelInfo.tile_align``). A
  tile that starts at a multiple of 6 sees the same pooled cells as the whole image does; any
  other start sees other maxima. Tiles and their context windows therefore start at multiples of 6.
* **The upsampling grid.** ``F.interpolate(size=...)`` places its samples relative to the size of
  the map it is given, so a tile would sample ESA's attention at positions that drift by up to
  2.5 cells from where the whole image samples it. Each tile is therefore run with its window
  (``Engine.__call__(x, window)``), and ESA samples at the whole image's coordinates
  (``models.blocks.upsample_in_window``); without this, 48 pixels of context still leave
  differences of 3 levels (0.012).

Which engine runs what is the ``Runner``'s policy (``prepare``): whole images through the
whole-image engine, tiles through the exact one. The whole image stays in host memory; only one
padded tile at a time is on the device. ``run_pixels`` (what ``reprfn upscale`` runs) holds the
output once, in the picture's own uint8/uint16, and quantizes each tile into it: memory is the
output plus one tile's forward, not several float32 copies of the output (a 24 MP photo at x4 is
1.2 GB as uint8, 4.6 GB per float32 copy). A request that cannot fit in the memory available is
refused before any work (``memory.check_memory``), and a tile holding NaN or infinity is never
quantized (``io.check_finite``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ResourceError, UsageError
from ..images import check_finite
from ..models.blocks import Window
from .hardware import PrecisionChoice as Precision
from .memory import DEFAULT_PAD, check_memory, round_up, whole
from .prepare import Model, Runner, as_runner

Crop = Callable[[int, int, int, int], Tensor]  # (y0, y1, x0, x1) -> float (N, C, y1-y0, x1-x0)


def spans(length: int, tile: int, pad: int, min_size: int, align: int) -> list[tuple[int, int, int, int]]:
    """(keep_start, keep_end, window_start, window_end) along one axis; starts aligned to ``align``.

    Every window spans at least ``min_size`` (when ``length`` does): a short last tile widens its
    window backwards, and a short first one (a small ``tile`` with a small ``pad``) forwards, as
    ESA cannot pool a window narrower than that (``--tile 1 --tile-pad 0`` once failed inside it).
    """
    out = []
    for start in range(0, length, tile):
        end = min(start + tile, length)
        lo = max(0, start - pad)
        hi = min(length, end + pad)
        if hi - lo < min_size:  # a short last tile: widen its window backwards
            lo = max(0, (hi - min_size) // align * align)
        if hi - lo < min_size:  # a short first tile: there is nothing before it, widen forwards
            hi = min(length, lo + min_size)
        out.append((start, end, lo, hi))
    return out


def _forward(runner: Runner, x: Tensor, window: Window | None = None) -> Tensor:
    """One engine call; an allocation failure becomes a ``ResourceError`` that names the cure."""
    try:
        return runner(x, window)
    except RuntimeError as exc:  # the allocator's own text names neither the cause nor the cure
        if isinstance(exc, torch.OutOfMemoryError) or "alloc" in str(exc).lower():
            side = f"{x.shape[-1]}x{x.shape[-2]}"
            raise ResourceError(f"out of memory in a forward of {side} pixels on {runner.device.type}: "
                                "use a smaller --tile (e.g. --tile 256)") from None
        raise


def pad_small(x: Tensor, min_size: int) -> tuple[Tensor, int, int]:
    """Replicate-pad an image smaller than ``min_size``; returns the padded image and its size."""
    h, w = x.shape[-2:]
    ph, pw = max(0, min_size - h), max(0, min_size - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


def _pad_small_array(pixels: np.ndarray, min_size: int) -> np.ndarray:
    """``pad_small`` for an HxW[xC] array: edge replication (the same values as F.pad 'replicate')."""
    ph, pw = max(0, min_size - pixels.shape[0]), max(0, min_size - pixels.shape[1])
    if not (ph or pw):
        return pixels
    return np.pad(pixels, ((0, ph), (0, pw)) + ((0, 0),) * (pixels.ndim - 2), mode="edge")


def _padded_size(runner: Runner) -> int:
    """Inputs are padded to one pixel more than ESA's minimum, as they always were."""
    return runner.info.min_size + 1


def tiles(runner: Runner, crop: Crop, height: int, width: int, *, tile: int,
          pad: int) -> Iterator[tuple[int, int, Tensor]]:
    """The output one tile at a time: (top, left, output) in output pixels, on the host.

    ``crop(y0, y1, x0, x1)`` gives the input there, so a caller can convert its image a window
    at a time. ``tile=0`` (or a tile covering the image) yields the whole image's output once.
    """
    scale, align = runner.info.scale, runner.info.tile_align
    if whole(tile, height, width):
        yield 0, 0, _forward(runner, crop(0, height, 0, width)).cpu()
        return
    tile, pad = round_up(max(tile, align), align), round_up(pad, align)
    min_size = runner.info.min_size
    for ys, ye, wy0, wy1 in spans(height, tile, pad, min_size, align):
        for xs, xe, wx0, wx1 in spans(width, tile, pad, min_size, align):
            y = _forward(runner, crop(wy0, wy1, wx0, wx1), (wy0, wx0, height, width))
            top, left = (ys - wy0) * scale, (xs - wx0) * scale
            yield ys * scale, xs * scale, y[..., top : top + (ye - ys) * scale, left : left + (xe - xs) * scale].cpu()


@torch.inference_mode()
def run(model: Model | Runner, x: Tensor, *, tile: int = 0, pad: int = DEFAULT_PAD,
        device: torch.device | str | None = None, precision: Precision = "fp32") -> Tensor:
    """Super-resolve a float (N, C, H, W) tensor in [0, 1] on the host; returns it on the host.

    ``model``: a ``Runner`` (``prepare``), or a model run as it is on ``device`` (default: where
    its weights are) in ``precision``. ``tile=0`` runs the whole image at once; otherwise tiles of
    ``tile`` LR pixels (rounded up to a multiple of 6) with ``pad`` pixels of context on each side
    (rounded up likewise).
    """
    runner = as_runner(model, device, precision)
    scale = runner.info.scale
    _check_tensor(x, runner.info.in_channels)
    x, h0, w0 = pad_small(x, _padded_size(runner))
    n, _, h, w = x.shape
    parts = tiles(runner, lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1], h, w, tile=tile, pad=pad)
    if whole(tile, h, w):
        y = next(parts)[2][..., : h0 * scale, : w0 * scale]
        check_finite(y)  # before the clamp, which would turn +inf into white and keep NaN
        # clamped straight into a contiguous (NCHW) tensor: one pass over the engine's output,
        # whatever its layout (channels-last engines), instead of a clamp and then a copy
        return torch.clamp(y, 0, 1, out=torch.empty(y.shape, dtype=y.dtype, device=y.device))
    out = torch.empty(n, x.shape[1], h0 * scale, w0 * scale)
    for top, left, y in parts:
        check_finite(y)
        bottom, right = min(top + y.shape[-2], out.shape[-2]), min(left + y.shape[-1], out.shape[-1])
        out[..., top:bottom, left:right] = y[..., : bottom - top, : right - left]
    return out.clamp_(0, 1)


def _check_tensor(x: Tensor, channels: int | None) -> None:
    """Refuse, as ``UsageError``, a tensor the model cannot take: PyTorch's own errors (a conv's
    channel count, a pooling "output size too small") read as internal failures, and a NaN or
    infinite input would come back as a NaN image, or clamped to white, without a word.
    ``channels``: the model's input channels (None: any)."""
    if x.dim() != 4:
        raise UsageError(f"expected a float (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise UsageError(f"a {x.shape[1]}-channel tensor for a model of {channels} input channels")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise UsageError(f"an empty image ({x.shape[-1]}x{x.shape[-2]} pixels)")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise UsageError("the input holds NaN or infinite values")


@torch.inference_mode()
def run_pixels(model: Model | Runner, pixels: np.ndarray, *, tile: int = 0, pad: int = DEFAULT_PAD,
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
    if 0 in pixels.shape[:2]:  # np.pad cannot replicate the edge of nothing
        raise UsageError(f"an empty image ({pixels.shape[1]}x{pixels.shape[0]} pixels)")
    runner = as_runner(model, device, precision)
    scale, grey = runner.info.scale, pixels.ndim == 2
    given = 1 if grey else pixels.shape[2]
    channels = runner.info.in_channels or given  # None: any number (bicubic)
    if given != channels and not (grey and channels == 3):
        raise UsageError(f"a {given}-channel image for a model of {channels} input channels")
    h0, w0 = pixels.shape[:2]
    shape = (h0 * scale, w0 * scale) + pixels.shape[2:]
    check_memory(h0, w0, scale, math.prod(shape) * pixels.itemsize, tile=tile, pad=pad, device=runner.device,
                 bytes_per_pixel=runner.bytes_per_pixel, reserve=reserve)
    src = _pad_small_array(pixels, _padded_size(runner))
    top_value = float(np.iinfo(pixels.dtype).max)
    try:
        out = np.empty(shape, pixels.dtype)
    except MemoryError:
        raise ResourceError(f"out of memory for the {shape[1]}x{shape[0]} output: use a smaller --scale, "
                            "or upscale the image in parts") from None

    def crop(y0: int, y1: int, x0: int, x1: int) -> Tensor:
        part = torch.from_numpy(src[y0:y1, x0:x1].astype(np.float32) / np.float32(top_value))
        return part[None, None].expand(-1, channels, -1, -1) if grey else part.permute(2, 0, 1)[None]

    for top, left, y in tiles(runner, crop, *src.shape[:2], tile=tile, pad=pad):
        bottom, right = min(top + y.shape[-2], shape[0]), min(left + y.shape[-1], shape[1])
        store(y[0, :, : bottom - top, : right - left], out[top:bottom, left:right], top_value, grey)
    return out


def store(y: Tensor, dst: np.ndarray, top_value: float, grey: bool) -> None:
    """Quantize a (C, h, w) output into ``dst`` (h x w [x C] of the picture's integer type): refused
    if not finite (``check_finite``), clamped to [0, 1], scaled, rounded (half to even, as
    ``np.rint``), the channels averaged for a greyscale picture.

    In torch, in place on the HxWxC view of ``y`` (an engine's output is its caller's): a
    channels-last engine's output is already laid out so, and torch's element-wise ops use every
    thread (the single-threaded numpy passes this replaces cost 10-15% of a bf16 forward at 720p).
    """
    check_finite(y)
    hwc = y.permute(1, 2, 0).clamp_(0, 1)
    hwc = hwc.mean(dim=2, dtype=torch.float32) if grey else hwc
    torch.from_numpy(dst).copy_(hwc.mul_(top_value).round_())  # integral and in range: the cast is exact
