"""The evaluation protocol of the SR literature, as functions (see docs/evaluation.md).

LR images are given (an ``HR/`` + ``LR/`` folder) or made from HR with the MATLAB-exact resizer;
the model's output is rounded to 8 bits; PSNR and SSIM are measured on the BT.601 Y channel with
``scale`` border pixels cropped. Per-file problems are collected as one-line messages, and the
remaining files are still evaluated.
"""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ImageError, UsageError
from .images import IMAGE_SUFFIXES, list_images, read_image, to_tensor, to_uint8, write_png
from .metrics import psnr, ssim
from .outputs import refuse_collisions
from .resize import imresize
from .runtime.info import BYTES_PER_PIXEL, ModelInfo, describe
from .runtime.prepare import Runner, model_device
from .runtime.run import run

Forward = Callable[[Tensor], Tensor]


class Bicubic:
    """MATLAB ``imresize(lr, scale, 'bicubic')``: the baseline row of every SR table, an ``Engine``
    (``reprfn.runtime.engines``) that carries its ``info``, so it is evaluated like a model.

    Works on the 8-bit values of its input (rounding between the two passes, as MATLAB does for
    uint8 images), so its output is byte-exact with MATLAB's. Its support is two pixels, far
    inside a tile's context, so its tiles are exact without a window. ``arch`` and ``scale`` are
    also plain attributes, for the report's columns.
    """

    name = arch = "bicubic"
    exact_tiles = True
    bytes_per_pixel = BYTES_PER_PIXEL  # not measured: PyTorch's figure, more than it needs

    def __init__(self, scale: int) -> None:
        self.scale = scale
        self.info = ModelInfo(arch="bicubic", scale=scale, in_channels=None)

    def __call__(self, x: Tensor, window: tuple[int, int, int, int] | None = None) -> Tensor:
        out = [to_tensor(imresize(to_uint8(im), self.scale)) for im in x]
        return torch.cat(out).to(x.device)


# ----------------------------------------------------------------------------------------------
# Super-resolution of one image: plain, self-ensemble, tiles
# ----------------------------------------------------------------------------------------------


def _variant(forward: Forward, x: Tensor, flip: bool, k: int) -> Tensor:
    """``forward`` of ``x`` flipped and rotated by ``k`` quarter turns, mapped back."""
    xf = x.flip(-1) if flip else x
    y = forward(xf.rot90(k, (-2, -1))).rot90(-k, (-2, -1))
    return y.flip(-1) if flip else y


def flip_rotate_mean(forward: Forward, x: Tensor) -> Tensor:
    """Self-ensemble: the mean of the outputs for the 8 flips/rotations of ``x`` (float, unrounded)."""
    return reduce(operator.add, (_variant(forward, x, flip, k) for flip in (False, True) for k in range(4))) / 8


def super_resolve(model: nn.Module | Bicubic | Runner, lr: np.ndarray, *, self_ensemble: bool = False,
                  tile: int | None = None) -> np.ndarray:
    """SR of a uint8 image (HxWx3 or HxW), rounded to 8 bits, as the benchmarks measure it.

    A greyscale image given to an RGB model is replicated to three channels and the output's
    channels are averaged back to one. ``tile``: LR pixels per tile, through ``runtime.run.run``
    (seamless: equal to the whole image to float noise for RepRFN and RFDN).
    """
    if tile is not None and tile < 1:
        raise UsageError(f"tile must be a positive number of pixels, got {tile}")
    x = to_tensor(lr).to(model_device(model))
    channels = describe(model).in_channels or x.shape[1]  # None: any (bicubic)
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != channels:
        raise UsageError(f"a {x.shape[1]}-channel image for a model of {channels} input channels")

    def forward(t: Tensor) -> Tensor:
        return run(model, t, tile=tile or 0, device=x.device)

    with torch.inference_mode():
        y = flip_rotate_mean(forward, x) if self_ensemble else forward(x)
        if lr.ndim == 2 and y.shape[1] != 1:
            y = y.mean(dim=1, keepdim=True)
    return to_uint8(y)


# ----------------------------------------------------------------------------------------------
# Data: HR/LR pairs, or HR images with LR made by the MATLAB-exact resizer
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One test image: its HR file, and its LR file (None: made from HR with ``imresize``)."""

    name: str
    hr: Path
    lr: Path | None = None


def load_pairs(folder: str | os.PathLike, scale: int) -> tuple[list[Pair], list[str]]:
    """The test images of a data set folder, and one-line messages for the files that cannot pair.

    ``folder`` holds ``HR/`` and ``LR/`` (paired by file stem; ``NAMExS`` LR names, the DIV2K
    convention, also pair with ``NAME``), or is itself a folder of HR images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [], [f"{folder}: no such folder"]
    hr_dir, lr_dir = folder / "HR", folder / "LR"
    if not (hr_dir.is_dir() and lr_dir.is_dir()):
        hrs = list_images(folder)
        if not hrs:
            hint = f" (it has HR/ but no LR/: pass {hr_dir})" if hr_dir.is_dir() else ""
            return [], [f"{folder}: no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}){hint}"]
        return [Pair(p.name, p) for p in hrs], []
    hrs, lrs = list_images(hr_dir), list_images(lr_dir)
    by_stem, errors = _lr_by_stem(hrs, lrs, lr_dir, scale)
    pairs = [Pair(p.name, p, by_stem[p.stem]) for p in hrs if by_stem.get(p.stem)]
    errors += [f"{p}: no LR partner in {lr_dir}" for p in hrs if p.stem not in by_stem]
    hr_stems = {p.stem for p in hrs}
    errors += [f"{p}: no HR partner in {hr_dir}" for p in lrs if _strip_scale(p.stem, scale) not in hr_stems]
    if not hrs:
        errors.append(f"{hr_dir}: no images")
    return pairs, errors


def _lr_by_stem(hrs: list[Path], lrs: list[Path], lr_dir: Path,
                scale: int) -> tuple[dict[str, Path | None], list[str]]:
    """The LR file of each stem (None: several), and a message for each HR image with several.

    ``img.png`` and ``imgx4.png`` (or ``img.jpg``) in one LR folder both pair with HR ``img``:
    taking one by sort order scored the other image's pair without a word, a wrong score with
    exit 0 when both have the right size. Such an HR image is not evaluated; the error names both.
    """
    found: dict[str, list[Path]] = {}
    for p in lrs:
        found.setdefault(_strip_scale(p.stem, scale), []).append(p)
    hr_by_stem = {p.stem: p for p in hrs}
    errors = [f"{hr_by_stem[stem]}: several LR partners in {lr_dir} ({', '.join(p.name for p in ps)})"
              for stem, ps in found.items() if len(ps) > 1 and stem in hr_by_stem]
    return {stem: ps[0] if len(ps) == 1 else None for stem, ps in found.items()}, errors


def _strip_scale(stem: str, scale: int) -> str:
    suffix = f"x{scale}"
    return stem[: -len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else stem


def grey_to_rgb(img: np.ndarray) -> np.ndarray:
    """A greyscale image as three equal channels (what ``cv2.imread`` gives BasicSR-style code)."""
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def crop_to_scale(hr: np.ndarray, scale: int) -> np.ndarray:
    """Top-left crop to a multiple of the scale, so that LR x scale is exactly the HR size."""
    h, w = hr.shape[:2]
    return hr[: h - h % scale, : w - w % scale]


def read_pair(pair: Pair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """HR and LR arrays of a pair; ``ImageError`` (naming the file) if they do not fit the scale."""
    hr = read_image(pair.hr)
    if pair.lr is None:
        hr = crop_to_scale(hr, scale)
        if min(hr.shape[:2]) == 0:
            raise ImageError(f"{pair.hr}: smaller than the scale ({scale})")
        return hr, imresize(hr, 1 / scale)
    lr = read_image(pair.lr)
    expected = (lr.shape[0] * scale, lr.shape[1] * scale)
    if hr.shape[:2] != expected or hr.ndim != lr.ndim:
        raise ImageError(
            f"{pair.lr}: LR {_size(lr)} x{scale} is {expected[1]}x{expected[0]}, "
            f"but HR {pair.hr.name} is {_size(hr)}"
        )
    return hr, lr


def _size(img: np.ndarray) -> str:
    kind = "grey" if img.ndim == 2 else "RGB"
    return f"{img.shape[1]}x{img.shape[0]} {kind}"


# ----------------------------------------------------------------------------------------------
# Metrics and data sets
# ----------------------------------------------------------------------------------------------


@dataclass
class ImageResult:
    name: str
    psnr_y: float
    ssim_y: float
    psnr_rgb: float


def measure(sr: np.ndarray, hr: np.ndarray, scale: int, name: str = "") -> ImageResult:
    """PSNR-Y, SSIM-Y and PSNR-RGB with ``scale`` border pixels cropped (grey: Y is the image)."""
    return ImageResult(
        name,
        psnr(sr, hr, crop_border=scale, test_y_channel=True),
        ssim(sr, hr, crop_border=scale, test_y_channel=True),
        psnr(sr, hr, crop_border=scale),
    )


@dataclass
class DatasetResult:
    dataset: str
    scale: int
    images: list[ImageResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0  # time spent in super-resolution (not decoding, not metrics)

    def mean(self, metric: str) -> float:
        return float(np.mean([getattr(r, metric) for r in self.images])) if self.images else float("nan")


def evaluate_dataset(
    model: nn.Module | Bicubic | Runner,
    folder: str | os.PathLike,
    scale: int,
    *,
    self_ensemble: bool = False,
    tile: int | None = None,
    grey_as_rgb: bool = True,
    save_dir: Path | None = None,
    progress: Callable[[Sequence[Pair]], Iterable[Pair]] = iter,
    on_image: Callable[[Pair, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> DatasetResult:
    """Evaluate ``model`` on every image of ``folder``; per-file problems go to ``errors``.

    ``grey_as_rgb`` (default): measure greyscale images as three equal channels
    (Y = 16 + 219 g / 255), the convention behind the published figures of RepRFN, RFDN and IMDN;
    ``False`` measures the grey image itself, as MATLAB evaluation scripts do.
    ``save_dir``: SR images are saved there (``saved_file``); two images that would be saved as
    one file are refused (``UsageError``) before any is evaluated.
    ``on_image(pair, hr, lr, sr)`` is called with the arrays of each evaluated image (the HTML
    report keeps some of them).
    """
    pairs, errors = load_pairs(folder, scale)
    if save_dir is not None:  # a.png and a.jpg would both be saved as a.png: refused before any work
        refuse_collisions((pair.hr, saved_file(save_dir, pair)) for pair in pairs)
    result = DatasetResult(str(folder), scale, errors=errors)
    for pair in progress(pairs):
        try:
            hr, lr = read_pair(pair, scale)
            if grey_as_rgb:
                hr, lr = grey_to_rgb(hr), grey_to_rgb(lr)
            start = time.perf_counter()
            sr = super_resolve(model, lr, self_ensemble=self_ensemble, tile=tile)
            result.seconds += time.perf_counter() - start
            result.images.append(measure(sr, hr, scale, pair.name))
        except (ValueError, RuntimeError) as exc:  # ImageError, too small for SSIM/ESA, out of memory
            result.errors.append(_one_line(exc, pair))
            continue
        if save_dir is not None:
            write_png(sr, saved_file(save_dir, pair))
        if on_image is not None:
            on_image(pair, hr, lr, sr)
    return result


def saved_file(save_dir: Path, pair: Pair) -> Path:
    """Where ``save_dir`` keeps the SR image of ``pair``: its HR name, as PNG (lossless)."""
    return Path(save_dir) / f"{pair.hr.stem}.png"


def _one_line(exc: Exception, pair: Pair) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return text if isinstance(exc, ImageError) else f"{pair.hr}: {text}"


def output_names(folders: Sequence[str | os.PathLike]) -> list[str]:
    """Folder names for saved outputs: the last path component, or as many as make them unique.

    ``Set5/x4`` and ``Set14/x4`` become ``Set5/x4`` and ``Set14/x4`` rather than ``x4`` twice.
    """
    parts = [Path(os.path.abspath(f)).parts[1:] for f in folders]  # without the root: stays relative
    for depth in range(1, max(map(len, parts), default=1) + 1):
        names = [str(Path(*p[-depth:])) for p in parts]
        if len(set(names)) == len(set(parts)):
            return names
    return [str(Path(*p)) for p in parts]  # the same folder given twice
