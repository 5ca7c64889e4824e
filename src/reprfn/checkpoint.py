"""Checkpoints: our safetensors format, and recognition of third-party state dicts by their keys.

Our format is a safetensors file whose metadata says what the tensors cannot: the architecture,
the form (train | deploy), the native data range, the package version. Everything else (scale,
width, depth) is also written down, but for third-party files it is inferred from tensor shapes,
the way spandrel does it.

Loading never unpickles arbitrary objects: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import __version__
from .errors import CheckpointError, UsageError, one_line
from .files import atomic_path
from .hub import resolve_weights
from .models import SRModel, build, names
from .models.rep import EDGE_KERNELS

FORMAT = "reprfn"
WRAPPER_KEYS = ("params_ema", "params", "ema", "state_dict", "model")  # first found wins
DEFAULT_DATA_RANGE = {"rfdn": 255.0}  # the NTIRE baseline RFDN works on 0..255; everything else 0..1
INT_FIELDS = ("scale", "in_channels", "channels", "blocks", "esa_channels")


@dataclass
class Checkpoint:
    """A state dict in our key layout plus what is needed to build the model for it."""

    config: dict[str, Any]
    state_dict: dict[str, Tensor]
    data_range: float = 1.0
    source: str = "reprfn"  # which layout the file used: reprfn, reprfn-authors, rfdn, imdn
    metadata: dict[str, str] = field(default_factory=dict)


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
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if _is_safetensors(path):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                metadata = dict(fh.metadata() or {})
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
            metadata = _training_metadata(tensors)
    except Exception as exc:  # truncated, corrupt, or a pickle with arbitrary objects
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason[:200]})") from None
    tensors = unwrap(tensors, path)
    check_finite(tensors, path)
    return tensors, metadata


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


def unwrap(obj: Any, path: Path | str = "checkpoint") -> dict[str, Tensor]:
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
# Recognition: which architecture, which layout, and the shapes that give scale and width
# ----------------------------------------------------------------------------------------------


def _dim(sd: Mapping[str, Tensor], key: str, axis: int) -> int:
    """One axis of a conv weight the layout needs; a missing or misshapen tensor is named."""
    t = sd.get(key)
    if t is None:
        raise CheckpointError(f"tensor {key!r} is missing")
    if t.dim() != 4 or t.shape[axis] < 1:
        raise CheckpointError(f"tensor {key!r} has shape {tuple(t.shape)}: not a conv weight")
    return int(t.shape[axis])


def _scale_from(sd: Mapping[str, Tensor], key: str, in_channels: int) -> int:
    out = _dim(sd, key, 0)
    scale = math.isqrt(out // in_channels)
    if scale < 1 or scale * scale * in_channels != out:
        raise CheckpointError(f"tensor {key!r} has {out} output channels: not {in_channels} x scale^2")
    return scale


def _count(sd: Mapping[str, Tensor], pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


# The authors' RepRFN names -> ours. Order matters: specific rules first.
_AUTHORS_RULES = [
    (r"^reprfb(\d+)\.", lambda m: f"blocks.{int(m.group(1)) - 1}."),
    (r"\.repblock(\d+)\.", lambda m: f".rep.{int(m.group(1)) - 1}."),
    (r"\.rbr_reparam\.", ".conv."),
    (r"\.rbr_3x3_branch\.", ".conv3x3."),
    (r"\.rbr_3x1_branch\.", ".conv3x1."),
    (r"\.rbr_1x3_branch\.", ".conv1x3."),
    (r"\.rbr_1x1_branch\.", ".conv1x1."),
    (r"\.rbr_1x1_3x3_branch_1x1\.", ".expand."),
    (r"\.rbr_1x1_3x3_branch_3x3\.", ".expand3x3."),
    (r"\.rbr_conv1x1_sbx_branch\.", ".edges.sobel_x."),
    (r"\.rbr_conv1x1_sby_branch\.", ".edges.sobel_y."),
    (r"\.rbr_conv1x1_lpl_branch\.", ".edges.laplacian."),
    (r"(\.edges\.\w+)\.k0$", r"\1.conv.weight"),
    (r"(\.edges\.\w+)\.b0$", r"\1.conv.bias"),
    (r"^(blocks\.\d+)\.conv3\.", r"\1.conv."),
    (r"^upsampler\.conv\.", "upsampler.0."),
]


def convert_authors_reprfn(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the authors' RepRFN keys (deploy or training form) to ours.

    Their edge branches store the fixed operator as ``mask`` (checked, then dropped: ours is a
    buffer) and the scale as (C, 1, 1, 1) (flattened).
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in _AUTHORS_RULES:
            new = re.sub(pattern, repl, new)
        if new.endswith(".mask"):
            kind = new.split(".")[-2]
            expected = torch.tensor(EDGE_KERNELS[kind]).expand_as(value[:, 0])
            if not torch.equal(value[:, 0].float(), expected):
                raise CheckpointError(f"{key}: edge mask is not the {kind} operator")
            continue
        if new.endswith(".scale"):
            value = value.reshape(-1)
        out[new] = value
    return out


def recognise(sd: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> Checkpoint:
    """Work out architecture, form, scale and width of a state dict; convert it to our layout.

    Everything is read from the tensors' keys and shapes. Metadata adds only what the tensors
    cannot say (the RepRFN/RFN variant, the data range) and is otherwise checked against them:
    a 1.6 MB file claiming 20,000 blocks is refused here, before anything is built.
    """
    metadata = dict(metadata or {})
    if any(k.startswith("reprfb1.") for k in sd):
        sd, source = convert_authors_reprfn(sd), "reprfn-authors"
    else:
        source = "reprfn"
    config, evidence, source = _infer(sd, source)
    if "arch" in metadata:
        config["arch"] = _metadata_arch(metadata["arch"], config["arch"])
    ours = metadata.get("format") == FORMAT
    if ours:
        _check_metadata(metadata, config, evidence)
        source = "reprfn"
    data_range = _positive_float(metadata, "data_range") if ours and "data_range" in metadata \
        else DEFAULT_DATA_RANGE.get(config["arch"], 1.0)
    if config["arch"] == "rfn":
        config["arch"] = ""  # the variant must come from metadata or the caller
    return Checkpoint(config, dict(sd), data_range, source, metadata)


def _infer(sd: Mapping[str, Tensor], source: str) -> tuple[dict[str, Any], dict[str, str], str]:
    """Config from keys and shapes, where each value came from (for messages), and the layout.

    ``arch`` is the family: ``reprfn`` (any RepRFN variant), ``rfn`` (any RFN variant), ``rfdn``
    or ``imdn``; the variant is not in the weights.
    """
    keys = set(sd)
    if "fea_conv.weight" not in keys:
        raise CheckpointError(_unknown(keys))
    first = "tensor 'fea_conv.weight'"
    evidence = {"in_channels": first, "channels": first, "scale": "tensor 'upsampler.0.weight'"}
    config: dict[str, Any] = {"in_channels": _dim(sd, "fea_conv.weight", 1),
                              "channels": _dim(sd, "fea_conv.weight", 0), "form": "train"}
    if "blocks.0.rep.0.conv.weight" in keys or "blocks.0.rep.0.conv3x3.weight" in keys:
        deploy = "blocks.0.rep.0.conv.weight" in keys
        config.update(arch="reprfn", form="deploy" if deploy else "train",
                      blocks=_count(sd, r"^blocks\.(\d+)\."),
                      esa_channels=_dim(sd, "blocks.0.esa.conv1.weight", 0))
        evidence.update(blocks="keys blocks.N.*", esa_channels="tensor 'blocks.0.esa.conv1.weight'",
                        form=f"key 'blocks.0.rep.0.conv.weight' {'present' if deploy else 'absent'}")
    elif "blocks.0.convs.0.weight" in keys:
        config.update(arch="rfn", blocks=_count(sd, r"^blocks\.(\d+)\."))
        evidence.update(blocks="keys blocks.N.*", form="an RFN has one form")
    elif "B1.c1_d.weight" in keys:
        config.update(arch="rfdn", blocks=_count(sd, r"^B(\d+)\."))
        evidence.update(blocks="keys BN.*", form="an RFDN has one form")
        source = "rfdn" if source == "reprfn" else source
    elif "IMDB1.c1.weight" in keys:
        config.update(arch="imdn", blocks=_count(sd, r"^IMDB(\d+)\."))
        evidence.update(blocks="keys IMDBN.*", form="an IMDN has one form")
        source = "imdn" if source == "reprfn" else source
    else:
        raise CheckpointError(_unknown(keys))
    config["scale"] = _scale_from(sd, "upsampler.0.weight", config["in_channels"])
    return config, evidence, source


def _family(arch: str) -> str:
    """``reprfn-noedge`` -> ``reprfn``, ``rfn-rfb2`` -> ``rfn``: what the weights can tell apart."""
    return arch.split("-")[0]


def _metadata_arch(arch: str, family: str) -> str:
    """The variant named in metadata, if it is one and the tensors are of its family."""
    if arch not in names():
        raise CheckpointError(f"metadata arch={arch!r} is not a known model ({', '.join(names())})")
    if _family(arch) != family:
        raise CheckpointError(f"metadata arch={arch!r} contradicts the tensors (they hold a {family} layout)")
    return arch


def _check_metadata(metadata: Mapping[str, str], config: Mapping[str, Any], evidence: Mapping[str, str]) -> None:
    """Every shape field of our metadata must parse and agree with the tensors."""
    for key in ("form", *INT_FIELDS):
        if key not in metadata:
            continue
        text = metadata[key]
        if key == "form":
            if text not in ("train", "deploy"):
                raise CheckpointError(f"metadata form={text!r} is not train or deploy")
            value: Any = text
        else:
            value = _positive_int(metadata, key)
        if key not in config:
            raise CheckpointError(f"metadata {key}={text!r} does not apply to a {config['arch']} model")
        if value != config[key]:
            raise CheckpointError(f"metadata {key}={text!r} contradicts the tensors "
                                  f"({config[key]}, from {evidence[key]}): refusing to load")


def _positive_int(metadata: Mapping[str, str], key: str) -> int:
    text = metadata[key]
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) < 1:
        raise CheckpointError(f"metadata {key}={text!r} is not a positive whole number")
    return int(text)


def _positive_float(metadata: Mapping[str, str], key: str) -> float:
    text = metadata[key]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise CheckpointError(f"metadata {key}={text!r} is not a positive number")
    return value


def _unknown(keys: set[str]) -> str:
    sample = ", ".join(sorted(keys)[:3])
    return f"unrecognised state dict (keys like {sample}): not a {', '.join(names())} checkpoint"


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
            model.last_conv().weight.div_(data_range)
            model.last_conv().bias.div_(data_range)
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
        raise CheckpointError(f"{path}: an RFN variant whose residuals cannot be inferred; pass --arch rfn-plain|rfn-rfb1|rfn-rfb2|rfn-rfb3")
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
               extra: Mapping[str, str] | None = None) -> Path:
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
