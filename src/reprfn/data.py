"""Training data: HR photos decoded once, their LR made once with the exact resizer, random
aligned patches with flips and 90-degree rotations.

Why the LR of the whole image rather than of each HR crop: a crop resized on its own sees
replicated pixels at its borders, a defect no benchmark LR has. Cropping the LR of the whole image
gives exactly the LR a benchmark would, and costs nothing per iteration. The two are the same
resizer (``resize.imresize``, MATLAB-exact).

Sampling is a pure function of ``(seed, iteration)``: a batch never depends on what came before,
so a resumed run, any number of loader workers, and any number of distributed ranks all see the
same patches.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, ImageError
from .files import atomic_path
from .images import list_images, read_image
from .resize import imresize


@dataclass(frozen=True)
class Pair:
    name: str
    hr: np.ndarray  # uint8 HxWxC
    lr: np.ndarray  # uint8 (H/s)x(W/s)xC


def _as_list(folders: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[Path]:
    if folders is None:
        return []
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    return [Path(f) for f in folders]


CACHE_VERSION = 2  # bump when a cached pair would differ for the same file (decoding, resizer)


def _cache_key(path: Path, scale: int, channels: int) -> str:
    """The file's content hash with everything else the pair depends on. Content, not size and
    mtime: a file replaced by another of the same size with its time kept (``cp -p``, ``rsync -a``)
    would otherwise be served from a stale entry. Hashing costs far less than decoding."""
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    return f"{digest}-x{scale}-c{channels}-v{CACHE_VERSION}"


def _decode_pair(path: Path, scale: int, lr_path: Path | None, channels: int) -> Pair:
    hr = read_image(path)
    hr = _channels(hr, channels, path)
    h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
    if lr_path is not None:
        lr = _channels(read_image(lr_path), channels, lr_path)
        if lr.shape[0] * scale > hr.shape[0] or lr.shape[1] * scale > hr.shape[1]:
            raise DataError(f"{lr_path}: LR {lr.shape[1]}x{lr.shape[0]} does not fit "
                            f"HR {hr.shape[1]}x{hr.shape[0]} at x{scale}")
        return Pair(path.name, hr[: lr.shape[0] * scale, : lr.shape[1] * scale], lr)
    hr = np.ascontiguousarray(hr[:h, :w])
    return Pair(path.name, hr, imresize(hr, 1 / scale))


def _channels(img: np.ndarray, channels: int, path: Path) -> np.ndarray:
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == channels:
        return img
    if channels == 3 and img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if channels == 1 and img.shape[2] == 3:
        return np.round(img @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None]
    raise DataError(f"{path}: has {img.shape[2]} channels, the model takes {channels}")


def decode_training_set(
    folders: str | os.PathLike | Sequence[str | os.PathLike],
    scale: int,
    *,
    lr_folders: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    min_hr_size: int = 0,
    channels: int = 3,
    cache_dir: str | os.PathLike | None = None,
) -> list[Pair]:
    """Decode every HR image (and its LR) once. Images smaller than ``min_hr_size`` are skipped
    with a warning; unreadable files are errors. With ``cache_dir``, decoded pairs are kept on disk
    as ``.npz`` files keyed by content, scale and channels, so later runs skip decoding."""
    hr_dirs, lr_dirs = _as_list(folders), _as_list(lr_folders)
    if not hr_dirs:
        raise DataError("data.train names no folder")
    if lr_dirs and len(lr_dirs) != len(hr_dirs):
        raise DataError(f"data.train_lr has {len(lr_dirs)} folders for {len(hr_dirs)} HR folders")
    pairs: list[Pair] = []
    too_small: list[str] = []
    for i, folder in enumerate(hr_dirs):
        if folder.exists() and not folder.is_dir():
            raise DataError(f"{folder}: a file, not a folder of training images")
        if not folder.is_dir():
            raise DataError(f"{folder}: training folder does not exist")
        files = list_images(folder)
        if not files:
            raise DataError(f"{folder}: training folder holds no images")
        for path in files:
            lr_path = _lr_partner(path, lr_dirs[i]) if lr_dirs else None
            pair = _cached(path, scale, lr_path, channels, cache_dir)
            if min(pair.hr.shape[:2]) < min_hr_size:
                too_small.append(f"{path} ({pair.hr.shape[1]}x{pair.hr.shape[0]})")
                continue
            pairs.append(pair)
    if too_small:
        warnings.warn(
            f"skipped {len(too_small)} images smaller than the {min_hr_size}-pixel HR patch, e.g. {too_small[0]}",
            stacklevel=2,
        )
    if not pairs:
        raise DataError(f"no training image is at least {min_hr_size}x{min_hr_size} pixels: lower train.patch_size")
    return pairs


def _lr_partner(hr_path: Path, lr_dir: Path) -> Path:
    for candidate in [lr_dir / hr_path.name, *sorted(lr_dir.glob(hr_path.stem + ".*"))]:
        if candidate.is_file():
            return candidate
    raise DataError(f"{hr_path}: no LR image with the same name in {lr_dir}")


def _cached(path: Path, scale: int, lr_path: Path | None, channels: int,
            cache_dir: str | os.PathLike | None) -> Pair:
    """The pair from the cache when it holds one for this content, else decoded (and cached)."""
    try:
        if cache_dir is None or lr_path is not None:
            return _decode_pair(path, scale, lr_path, channels)
        file = Path(cache_dir) / f"{_cache_key(path, scale, channels)}.npz"
        pair = _read_cached(file, path.name)
        if pair is None:
            pair = _decode_pair(path, scale, None, channels)
            with atomic_path(file) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, hr=pair.hr, lr=pair.lr)
        return pair
    except ImageError as exc:
        raise DataError(str(exc)) from None


def _read_cached(file: Path, name: str) -> Pair | None:
    """A cache entry, or None when there is none or it cannot be read (it is then decoded and
    written again: a damaged cache costs time, never a failed or wrong run)."""
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            hr, lr = z["hr"], z["lr"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return Pair(name, hr, lr)


def dihedral(img: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 flips/rotations of the square's symmetry group, by ``code`` in 0..7."""
    if code & 1:
        img = img[:, ::-1]
    if code & 2:
        img = img[::-1]
    if code & 4:
        img = img.transpose(1, 0, 2)
    return img


class PatchSampler(torch.utils.data.Dataset):
    """Item ``it`` is batch number ``it``: HR and LR patch tensors in [0, 1], (B, C, h, w).

    ``rank``/``world`` select a contiguous slice of the global batch, so that N ranks together see
    exactly the batch one process would.
    """

    def __init__(self, pairs: Sequence[Pair], scale: int, patch_size: int, batch_size: int,
                 seed: int, *, augment: bool = True, rank: int = 0, world: int = 1) -> None:
        if patch_size % scale:
            raise DataError(f"train.patch_size {patch_size} is not a multiple of the scale {scale}")
        if batch_size % world:
            raise DataError(f"train.batch_size {batch_size} does not split over {world} processes")
        self.pairs, self.scale, self.patch, self.batch = list(pairs), scale, patch_size, batch_size
        self.seed, self.augment, self.rank, self.world = seed, augment, rank, world

    def __len__(self) -> int:  # an effectively endless stream, indexed by iteration
        return 2**62

    def plan(self, iteration: int) -> list[tuple[int, int, int, int]]:
        """(image, lr_top, lr_left, augmentation) for every sample of the global batch."""
        rng = np.random.default_rng([self.seed, iteration])
        lp = self.patch // self.scale
        out = []
        for _ in range(self.batch):
            i = int(rng.integers(len(self.pairs)))
            lh, lw = self.pairs[i].lr.shape[:2]
            top, left = int(rng.integers(lh - lp + 1)), int(rng.integers(lw - lp + 1))
            code = int(rng.integers(8)) if self.augment else 0
            out.append((i, top, left, code))
        return out

    def __getitem__(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_rank = self.batch // self.world
        plan = self.plan(iteration)[self.rank * per_rank : (self.rank + 1) * per_rank]
        lp, s = self.patch // self.scale, self.scale
        lrs, hrs = [], []
        for i, top, left, code in plan:
            pair = self.pairs[i]
            lrs.append(dihedral(pair.lr[top : top + lp, left : left + lp], code))
            hrs.append(dihedral(pair.hr[top * s : (top + lp) * s, left * s : (left + lp) * s], code))
        return _to_batch(lrs), _to_batch(hrs)


def _to_batch(images: Iterable[np.ndarray]) -> torch.Tensor:
    arr = np.stack([np.ascontiguousarray(im) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def dihedral_coords(codes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source (row, column) in a ``size``-square crop of every output pixel, per sample: the index
    form of ``dihedral`` (flip columns if ``code & 1``, then rows if ``code & 2``, then transpose
    if ``code & 4``), so that a batch of crops and their flips/rotations is one gather."""
    grid = torch.arange(size, device=codes.device)
    y, x = grid.view(1, size, 1), grid.view(1, 1, size)
    c = codes.view(-1, 1, 1)
    transpose = (c & 4).bool()
    i, j = torch.where(transpose, x, y), torch.where(transpose, y, x)
    rows = torch.where((c & 2).bool(), size - 1 - i, i)
    cols = torch.where((c & 1).bool(), size - 1 - j, j)
    return rows, cols


class ResidentPatches:
    """Training batches cut where the model runs, from every image held there once as uint8.

    On a GPU a DataLoader feeding a lightweight network is the bottleneck (launch- and
    host-bound at about a thousand patches per second); the whole training set is a few hundred
    megabytes as uint8, so it lives on the device, padded into one (N, H, W, C) tensor per
    resolution, and a batch (random aligned crops with their eight flips/rotations) is one gather
    per resolution. ``batch(iteration)`` is a pure function of ``(seed, iteration)`` drawn with a
    generator on the device, so a resumed run sees the same patches on the same kind of device
    (the stream differs between CPU and CUDA generators). ``crop(plan)`` cuts exactly what
    ``PatchSampler`` cuts for the same plan (tested), in channels-last memory.
    """

    def __init__(self, pairs: Sequence[Pair], scale: int, patch_size: int, batch_size: int,
                 seed: int, device: torch.device | str, *, augment: bool = True) -> None:
        if patch_size % scale:
            raise DataError(f"train.patch_size {patch_size} is not a multiple of the scale {scale}")
        self.scale, self.lp, self.batch_size = scale, patch_size // scale, batch_size
        self.seed, self.augment, self.device = seed, augment, torch.device(device)
        sizes = [p.lr.shape[:2] for p in pairs]
        if any(min(s) < self.lp for s in sizes):
            raise DataError(f"an LR image is smaller than the {self.lp}-pixel LR patch")
        channels = pairs[0].lr.shape[2] if pairs[0].lr.ndim == 3 else 1
        h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
        self.lr = torch.zeros(len(pairs), h, w, channels, dtype=torch.uint8, device=self.device)
        self.hr = torch.zeros(len(pairs), h * scale, w * scale, channels, dtype=torch.uint8, device=self.device)
        for k, p in enumerate(pairs):
            lh, lw = p.lr.shape[:2]
            self.lr[k, :lh, :lw] = torch.tensor(p.lr.reshape(lh, lw, channels), device=self.device)
            self.hr[k, : lh * scale, : lw * scale] = torch.tensor(
                p.hr[: lh * scale, : lw * scale].reshape(lh * scale, lw * scale, channels), device=self.device)
        self.limits = torch.tensor([[s[0] - self.lp + 1, s[1] - self.lp + 1] for s in sizes], device=self.device)

    def plan(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image, lr_top, lr_left, augmentation) tensors of the batch of ``iteration``."""
        gen = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + iteration)
        n, b = self.limits.shape[0], self.batch_size
        image = torch.randint(n, (b,), generator=gen, device=self.device)
        u = torch.rand(b, 2, generator=gen, device=self.device)
        corner = (u * self.limits[image]).long()  # uniform in [0, limit) per image
        code = (torch.randint(8, (b,), generator=gen, device=self.device) if self.augment
                else torch.zeros(b, dtype=torch.long, device=self.device))
        return image, corner[:, 0], corner[:, 1], code

    def crop(self, image: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
             code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LR and HR float batches in [0, 1], (B, C, h, w) channels-last, for the given plan."""
        lr = self._gather(self.lr, image, top, left, code, 1)
        return lr, self._gather(self.hr, image, top, left, code, self.scale)

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.crop(*self.plan(iteration))

    def _gather(self, images: torch.Tensor, image: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                code: torch.Tensor, s: int) -> torch.Tensor:
        size = self.lp * s
        rows, cols = dihedral_coords(code, size)
        rows = rows + (top * s).view(-1, 1, 1)
        cols = cols + (left * s).view(-1, 1, 1)
        patches = images[image.view(-1, 1, 1), rows, cols]  # (B, size, size, C)
        return patches.permute(0, 3, 1, 2).float().div_(255.0)
