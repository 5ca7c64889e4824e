"""Validation during training: the images of ``val.dir`` and the score of the weights on them,
with the protocol of ``reprfn eval`` (fused model, Y-PSNR with ``scale`` border pixels cropped)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import Config
from ..data import DataError
from ..models import SRModel


def validate(model: SRModel, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean Y-PSNR of the fused model on (HR, LR) pairs, with the protocol of ``reprfn eval``."""
    from ..evaluate import super_resolve
    from ..metrics import psnr

    fused = model.fuse().eval()
    return float(np.mean([psnr(super_resolve(fused, lr), hr, crop_border=model.scale, test_y_channel=True)
                          for hr, lr in pairs]))


def val_pairs(cfg: Config) -> list[tuple[np.ndarray, np.ndarray]]:
    """The validation images, decoded once: a benchmark folder as ``reprfn eval`` reads it."""
    from ..evaluate import grey_to_rgb, load_pairs, read_pair

    if not cfg.val.dir:
        return []
    scale = cfg.model.scale
    pairs, errors = load_pairs(cfg.val.dir, scale)
    if errors or not pairs:
        raise DataError(f"val.dir: {errors[0] if errors else 'no images'}")
    pairs = pairs[: cfg.val.max_images or None]
    read = [read_pair(p, scale) for p in pairs]
    if cfg.model.in_channels != 3:
        return read
    return [(grey_to_rgb(hr), grey_to_rgb(lr)) for hr, lr in read]
