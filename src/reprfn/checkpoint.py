"""Checkpoints: our safetensors format; reading any supported file, loading and saving models.

Our format is a safetensors file whose metadata says what the tensors cannot: the architecture,
the form (train | deploy), the native data range, the package version. Everything else (scale,
width, depth) is also written down, but for third-party files it is inferred from tensor shapes,
the way spandrel does it (``layouts.recognise``).

Loading never unpickles arbitrary objects: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import __version__
from .errors import CheckpointError, UsageError, one_line
from .files import atomic_path
from .hub import resolve_weights
from .layouts import FORMAT, recognise
from .models import SRModel, build
from .runtime.hardware import resolve_device

WRAPPER_KEYS = ("params_ema", "params", "ema", "state_dict", "model")  # first found wins


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors or torch file, unwrapped and without ``module.``."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if _is_safetensors(path):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                metadata = dict(fh.metadata() or {})
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        else:
            with warnings.catch_warnings():  # torch warns before it refuses a file (TorchScript, a pickle
                # of another protocol), beside the one line that says why
                warnings.filterwarnings("ignore", message=".*(TorchScript archive|Detected pickle protocol)")
                tensors = torch.load(path, map_location="cpu", weights_only=True)
            metadata = _training_metadata(tensors)
    except Exception as exc:  # truncated, corrupt, or a pickle with arbitrary objects
        raise CheckpointError(f"{path}: not a readable checkpoint ({_unreadable(path, exc)[:200]})") from None
    tensors = unwrap(tensors, path)
    check_finite(tensors, path)
    return tensors, metadata


def _unreadable(path: Path, exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` (or safetensors) could not read ``path``, in words.

    PyTorch's own text for a refused pickle is a page that advises ``weights_only=False`` (running
    whatever the file holds: never for a file from elsewhere) and carries terminal escape codes; and
    it says the same of a file that is no pickle at all (an image given as weights).
    """
    if path.stat().st_size == 0:
        return "empty file"
    text = str(exc)
    if "TorchScript" in text:
        return "a TorchScript archive (what reprfn export writes), not a checkpoint: give the weights it came from"
    if "Weights only load failed" not in text:
        return one_line(exc)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return ("a pickle that is not plain tensors saved by torch.save, never unpickled as it could run code; "
                "save the model's state_dict() with torch.save, or as safetensors")
    return "not a safetensors file or a PyTorch checkpoint"


def check_finite(tensors: Mapping[str, Tensor], path: Path | str = "checkpoint") -> None:
    """Refuse NaN/Inf weights: such a model runs, and silently turns every image black.

    Checked on the file's own key names (before any renaming), so the message points at what
    is in the file.
    """
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not bad:
        return
    t = tensors[bad[0]]
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    counts = " and ".join(c for c in (f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else "") if c)
    more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
    raise CheckpointError(f"{path}: tensor {bad[0]!r} has {counts} value(s){more}: refusing to load")


def _training_metadata(obj: Any) -> dict[str, str]:
    """A ``reprfn train`` checkpoint names its architecture in its config (RFN variants need it)."""
    try:
        return {"arch": str(obj["config"]["model"]["name"])}
    except (KeyError, TypeError):
        return {}


def unwrap(obj: object, path: Path | str = "checkpoint") -> dict[str, Tensor]:
    """Find the state dict inside common wrappers (``params_ema``, ``params``, ``state_dict``)."""
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping) and obj[k]), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def bundled_weights(scale: int) -> Path:
    """The default model shipped in the package for ``scale`` (our own training, deploy form)."""
    path = Path(__file__).parent / "weights" / f"reprfn_x{scale}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"no bundled model for x{scale}; bundled scales: 2, 3, 4")
    return path


def fold_data_range(model: SRModel, data_range: float) -> SRModel:
    """Make a model trained on 0..data_range map 0..1 to 0..1, exactly, by rescaling weights.

    ``f(r * x) / r``: the input factor goes into the first conv's weight (zero padding commutes
    with scaling), the output factor into the last conv's weight and bias (PixelShuffle commutes).
    """
    if data_range != 1.0:
        with torch.no_grad():
            model.first_conv().weight.mul_(data_range)
            last = model.last_conv()
            last.weight.div_(data_range)
            if last.bias is not None:
                last.bias.div_(data_range)
    return model


def load_model(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    scale: int | None = None,
    data_range: float | None = None,
    device: str | torch.device = "cpu",
) -> SRModel:
    """Load any supported checkpoint as a model mapping float RGB in [0, 1] to [0, 1], in eval mode.

    Accepts our safetensors files, the authors' RepRFN state dicts (deploy or training form), the
    NTIRE RFDN file, IMDN files, wrapped in ``params``/``params_ema``/``state_dict`` or prefixed
    with ``module.``. ``arch`` names an RFN variant (not inferable); ``scale`` is checked against
    the file; ``data_range`` overrides the native range (default: metadata, else 255 for RFDN
    files, else 1). ``path`` may also name a known model (``reprfn models``; ``hub.resolve_weights``).
    """
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Integral)):
        raise UsageError(f"scale must be 2, 3 or 4, got {scale!r}")  # "2" read "is a x2 model, but x2 was asked for"
    device = resolve_device(device)  # "tpu", or cuda where there is none: one line, not PyTorch's page
    path = resolve_weights(path)
    sd, metadata = read_state_dict(path)
    try:
        ckpt = recognise(sd, metadata)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    cfg = dict(ckpt.config)
    if arch:
        if cfg.get("arch") and cfg["arch"] != arch and not (
            cfg["arch"].startswith("rfn-") and arch.startswith("rfn-")
        ):
            raise CheckpointError(f"{path}: holds a {cfg['arch']} model, not {arch}")
        cfg["arch"] = arch
    if not cfg.get("arch"):
        raise CheckpointError(f"{path}: an RFN variant whose residuals cannot be inferred; "
                              "pass --arch rfn-plain|rfn-rfb1|rfn-rfb2|rfn-rfb3")
    if scale is not None and scale != cfg["scale"]:
        raise CheckpointError(f"{path}: is a x{cfg['scale']} model, but x{scale} was asked for")
    name = cfg.pop("arch")
    try:
        problem = _mismatch(name, _expected_shapes(name, cfg), ckpt.state_dict)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if problem:  # found on an empty (meta) model: nothing of the claimed size was allocated
        raise CheckpointError(f"{path}: {problem}")
    model = build(name, **cfg)
    model.load_state_dict(ckpt.state_dict, strict=True)
    if data_range is not None and not (math.isfinite(data_range) and data_range > 0):
        raise UsageError(f"data range must be a positive number, got {data_range}")
    fold_data_range(model, ckpt.data_range if data_range is None else float(data_range))
    return model.to(device).eval()


def _expected_shapes(arch: str, config: Mapping[str, Any]) -> dict[str, torch.Size]:
    """The state dict shapes of ``build(arch, **config)``, from a model built on the meta device.

    Costs no memory whatever the config claims, so keys and shapes are checked before a real
    model is allocated.
    """
    try:
        with torch.device("meta"):
            return {k: v.shape for k, v in build(arch, **config).state_dict().items()}
    except (TypeError, ValueError, RuntimeError) as exc:  # a config no model can be built for
        raise CheckpointError(f"cannot build a {arch} model with {dict(config)} ({one_line(exc)})") from None


def _mismatch(arch: str, own: Mapping[str, torch.Size], sd: Mapping[str, Tensor]) -> str:
    """What differs between the keys/shapes a model expects and a state dict ('' when nothing)."""
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if own[k] != sd[k].shape)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k])})")
    return f"does not match a {arch} model: {'; '.join(parts)}" if parts else ""


def metadata_for(model: SRModel, data_range: float = 1.0) -> dict[str, str]:
    meta = {k: str(v) for k, v in model.config().items()}
    meta.update(format=FORMAT, version=__version__, data_range=repr(float(data_range)))
    return meta


def save_model(model: SRModel, path: str | os.PathLike, *, data_range: float = 1.0,
               extra: Mapping[str, object] | None = None) -> Path:
    """Write ``model`` as safetensors with metadata, atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = metadata_for(model, data_range)
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def describe(model: SRModel) -> dict[str, Any]:
    """What ``reprfn info`` prints: the config plus the parameter count."""
    info = model.config()
    info["params"] = sum(p.numel() for p in model.parameters())
    return info
