"""Which model a state dict holds: its architecture, form, scale and width, from its keys and shapes.

Recognises our layout and the third-party ones ``load_model`` accepts (the authors' RepRFN names,
the NTIRE RFDN file, IMDN), converts them to our key names, and checks the metadata of our own
files against the tensors. Reading files and building models is ``checkpoint.py``'s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import CheckpointError
from .models import names
from .models.rep import EDGE_KERNELS

FORMAT = "reprfn"
DEFAULT_DATA_RANGE = {"rfdn": 255.0}  # the NTIRE baseline RFDN works on 0..255; everything else 0..1
INT_FIELDS = ("scale", "in_channels", "channels", "blocks", "esa_channels")
ONE_FORM = ("rfn", "rfdn", "imdn")  # no RepBlocks: their train and deploy forms are one network


@dataclass
class Checkpoint:
    """A state dict in our key layout plus what is needed to build the model for it."""

    config: dict[str, Any]
    state_dict: dict[str, Tensor]
    data_range: float = 1.0
    source: str = "reprfn"  # which layout the file used: reprfn, reprfn-authors, rfdn, imdn
    metadata: dict[str, str] = field(default_factory=dict)


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
_AUTHORS_RULES: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
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
        if key == "form" and _family(config["arch"]) in ONE_FORM:
            continue  # either tag is right: fuse() tags its copy deploy, and it is the same network
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
