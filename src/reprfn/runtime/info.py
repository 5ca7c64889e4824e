"""What a model is, for running it: ``ModelInfo``, kept beside the network rather than on it.

The runtime never asks a network what it is by its name. ``describe`` reads what each
architecture declares (``SRModel.kernel_ops``, ``SRModel.exact_tiles``) and what its modules are,
or the metadata an ONNX export carries, into one frozen record that engines, tiling and memory
planning read. (The idea is spandrel's ``ImageModelDescriptor``: the descriptor travels with the
network, the network stays a plain ``nn.Module``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from torch import nn

from ..errors import UsageError
from ..models.blocks import ESA_MIN_SIZE, ESA_STRIDE

if TYPE_CHECKING:
    from .engines import Engine

# Peak memory per LR pixel of a whole-image forward, fused RepRFN x4, fp32, CPU: 1.4 KB measured
# (benchmarks/upscale_memory.py); OpenVINO's: 898 MB at 3x540x960, 1.7 KB measured.
BYTES_PER_PIXEL = 1_500
OPENVINO_BYTES_PER_PIXEL = 1_800
Form = Literal["train", "deploy"]


@dataclass(frozen=True)
class ModelInfo:
    """What running a model needs to know about it.

    ``form``: "train" when the network has branches that ``fuse()`` folds (RepBlocks), else
    "deploy" (what runs is then the network itself). ``min_size``: the smallest input side ESA
    takes (3x3 stride-2 conv, then a 7x7 max-pool); smaller images are padded. ``tile_align``:
    tiles start at multiples of it (ESA's pooled grid, 6 pixels), so that they see the pooled
    cells the whole image sees. ``exact_tiles``: tiles can equal the whole image (given an engine
    that honours a tile's window). ``bytes_per_pixel``: peak memory per LR pixel of a whole-image
    torch forward. ``kernel_ops``: the forward is written in the kernel operations of
    ``models.blocks``, so the fused CPU engine may run it with the oneDNN set.
    ``in_channels`` is None for a model that takes any number (bicubic).
    """

    arch: str
    scale: int
    in_channels: int | None
    form: Form = "deploy"
    min_size: int = ESA_MIN_SIZE
    tile_align: int = ESA_STRIDE
    exact_tiles: bool = True
    bytes_per_pixel: int = BYTES_PER_PIXEL
    kernel_ops: bool = False


class Described(Protocol):
    """Anything that carries its ``ModelInfo``: a ``Runner``, an ``OnnxEngine``, the bicubic baseline."""

    info: ModelInfo


def describe(model: nn.Module | Described | Engine | Mapping[str, str]) -> ModelInfo:
    """The ``ModelInfo`` of a torch model, of anything that carries one (``.info``: a prepared
    ``Runner``, an engine, the bicubic baseline), or of an ONNX export's metadata (a mapping)."""
    info = getattr(model, "info", None)
    if isinstance(info, ModelInfo):
        return info
    if isinstance(model, Mapping):
        return _from_metadata(model)
    scale = getattr(model, "scale", None)
    if not isinstance(model, nn.Module) or not isinstance(scale, int):
        raise UsageError(f"cannot run a {type(model).__name__}: give a reprfn model (reprfn.load_model)")
    from ..models.rep import RepBlock

    return ModelInfo(
        arch=str(getattr(model, "arch", "") or type(model).__name__),
        scale=scale,
        in_channels=getattr(model, "in_channels", 3),
        form="train" if any(isinstance(m, RepBlock) for m in model.modules()) else "deploy",
        exact_tiles=bool(getattr(model, "exact_tiles", True)),
        kernel_ops=bool(getattr(model, "kernel_ops", False)),
    )


def _from_metadata(meta: Mapping[str, str]) -> ModelInfo:
    """An ONNX export (``export.onnx_metadata``): always the deploy form; its graph places ESA's
    upsampling grid by the size of what it is given, so it cannot run a tile as the whole image."""
    try:
        return ModelInfo(arch=meta.get("arch", ""), scale=int(meta["scale"]),
                         in_channels=int(meta.get("in_channels", 3)), form="deploy", exact_tiles=False)
    except (KeyError, ValueError):
        raise UsageError("not a reprfn ONNX export (no reprfn metadata)") from None
