"""Memory: what is free, what a run needs, and tile sizes that fit.

A request that cannot fit in the memory available is refused before any work (``check_memory``):
past it the allocator fails with text that names neither cause nor cure, or the kernel kills the
process. Figures are per LR pixel of a forward (``Engine.bytes_per_pixel``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..errors import ResourceError
from ..models.blocks import ESA_STRIDE
from .info import BYTES_PER_PIXEL

DEFAULT_PAD = 48  # LR pixels of context on each side of a tile (a multiple of ESA_STRIDE)
MIN_TILE = 48
_CGROUP_FILES = (  # (limit, usage, stat, reclaimable page cache key): cgroup v2, then v1
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "inactive_file"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
     "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"),
)


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def whole(tile: int, height: int, width: int) -> bool:
    """Whether ``tile`` means one forward of the whole image (0, or a tile covering it)."""
    return not tile or (tile >= height and tile >= width)


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

    ``bytes_per_pixel``: the peak memory of a forward per LR pixel (the engine's own figure:
    ``Runner.bytes_per_pixel``). ``held``: bytes that will be taken from the same memory
    meanwhile (the output being assembled).
    """
    budget = max(0, available_memory(device) - held) * fraction
    if height * width * bytes_per_pixel <= budget:
        return 0
    side = int(math.sqrt(budget / bytes_per_pixel)) - 2 * DEFAULT_PAD
    return max(MIN_TILE, side // ESA_STRIDE * ESA_STRIDE)


def forward_bytes(height: int, width: int, tile: int, pad: int, bytes_per_pixel: int = BYTES_PER_PIXEL) -> int:
    """Peak memory of the largest forward of a run: the whole image (tile 0), else one padded tile."""
    if whole(tile, height, width):
        return height * width * bytes_per_pixel
    side = round_up(max(tile, ESA_STRIDE), ESA_STRIDE) + 2 * round_up(pad, ESA_STRIDE)
    return min(side, height) * min(side, width) * bytes_per_pixel


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def check_memory(height: int, width: int, scale: int, out_bytes: int, *, tile: int, pad: int,
                 device: torch.device, bytes_per_pixel: int = BYTES_PER_PIXEL, reserve: int = 0) -> None:
    """Refuse, before any work, a run whose output and largest forward do not fit in memory.

    ``out_bytes``: the output held on the host; ``reserve``: what the caller needs besides at
    the same time (alpha, the writer). A ``ResourceError`` says how large the output would be and
    what to do: a smaller scale or parts when the output itself does not fit, a smaller ``--tile``
    when the forward does not.
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
        side = int(math.sqrt(free / 2 / bytes_per_pixel)) - 2 * round_up(pad, ESA_STRIDE)
        suggestion = max(MIN_TILE, side // ESA_STRIDE * ESA_STRIDE)
        what = "a whole-image forward" if whole(tile, height, width) else f"a forward of {tile}-pixel tiles"
        raise ResourceError(
            f"{what} needs about {_size(forward)} of memory on {device.type}, but {_size(free)} is left "
            f"beside the output: use --tile {suggestion} (or --tile auto)")
