"""The model registry: every architecture the paper builds or compares against, by name."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from functools import partial
from typing import Any

from ..errors import UsageError
from .blocks import ESA, SRModel
from .imdn import IMDN
from .rep import ConvLReLU, RepBlock, fuse, set_mode
from .reprfn import RFN, RepRFN
from .rfdn import RFDN

REGISTRY: dict[str, Callable[..., SRModel]] = {
    **{name: partial(RepRFN, variant=name) for name in RepRFN.VARIANTS},
    **{name: partial(RFN, name) for name in RFN.VARIANTS},
    "rfdn": RFDN,
    "imdn": IMDN,
}


def names() -> list[str]:
    return list(REGISTRY)


def build(name: str, scale: int = 4, **kw: Any) -> SRModel:
    """Build a registered model, e.g. ``build("reprfn", scale=2, channels=32)``.

    Keyword arguments: ``in_channels``, ``channels``, ``blocks``; for ``reprfn`` also
    ``deploy`` (build the fused form directly) and ``mode`` ("online" or "branches").
    A ``form`` keyword ("train" or "deploy") is accepted for RepRFN and its ablations, as stored
    in checkpoints.
    """
    if name not in REGISTRY:
        raise UsageError(f"unknown model {name!r}; choose from {', '.join(REGISTRY)}")
    _check_sizes(kw)
    form = kw.pop("form", None)
    if form is not None:
        if form not in ("train", "deploy"):
            raise UsageError(f"unknown form {form!r}; use 'train' or 'deploy'")
        if name in RepRFN.VARIANTS:
            kw["deploy"] = form == "deploy"
    return REGISTRY[name](scale=scale, **kw)


def _check_sizes(kw: dict[str, Any]) -> None:
    """Widths and depths must be positive integers: ``channels=0`` or ``blocks=-1`` built a model of
    empty convs (or none at all) without a word, which then ran and returned a constant image."""
    for key in ("channels", "blocks", "esa_channels"):
        value = kw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise UsageError(f"{key} must be a positive integer, got {value!r}")


__all__ = [
    "ESA",
    "IMDN",
    "RFDN",
    "RFN",
    "ConvLReLU",
    "RepBlock",
    "RepRFN",
    "SRModel",
    "build",
    "fuse",
    "names",
    "set_mode",
]
