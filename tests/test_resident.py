"""Training patches cut on the device (``data.ResidentPatches``) against the host sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reprfn.data import Pair, PatchSampler, ResidentPatches, dihedral, dihedral_coords
from reprfn.errors import DataError


def _pairs(scale: int = 3, channels: int = 3) -> list[Pair]:
    rng = np.random.default_rng(0)
    out = []
    for k, (h, w) in enumerate([(20, 31), (27, 22), (18, 18)]):
        lr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        hr = rng.integers(0, 256, (h * scale + k, w * scale + 2, channels), dtype=np.uint8)  # ragged HR edges
        out.append(Pair(f"im{k}", hr, lr))
    return out


@pytest.mark.parametrize("code", range(8))
def test_dihedral_coords_index_like_dihedral(code: int) -> None:
    img = np.arange(5 * 5).reshape(5, 5, 1)
    rows, cols = dihedral_coords(torch.tensor([code]), 5)
    np.testing.assert_array_equal(img[rows[0].numpy(), cols[0].numpy()], dihedral(img, code))


def test_crop_equals_the_host_sampler_for_the_same_plan() -> None:
    pairs, scale = _pairs(), 3
    host = PatchSampler(pairs, scale, patch_size=12 * scale, batch_size=24, seed=5)
    dev = ResidentPatches(pairs, scale, patch_size=12 * scale, batch_size=24, seed=5, device="cpu")
    for it in (0, 7):
        plan = torch.tensor(host.plan(it))
        lr, hr = dev.crop(plan[:, 0], plan[:, 1], plan[:, 2], plan[:, 3])
        want_lr, want_hr = host[it]
        assert lr.shape == want_lr.shape and hr.shape == want_hr.shape
        assert torch.equal(lr, want_lr) and torch.equal(hr, want_hr)
        assert lr.is_contiguous(memory_format=torch.channels_last)
    assert set(plan[:, 3].tolist()) != {0}  # the check covered flips, not only the identity


def test_batches_are_a_pure_function_of_seed_and_iteration() -> None:
    dev = ResidentPatches(_pairs(), 3, patch_size=36, batch_size=16, seed=1, device="cpu")
    again = ResidentPatches(_pairs(), 3, patch_size=36, batch_size=16, seed=1, device="cpu")
    a, b = dev.batch(3), again.batch(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(dev.batch(4)[0], a[0])
    image, top, left, code = dev.plan(3)
    assert ((top >= 0) & (top < dev.limits[image, 0])).all() and ((left >= 0) & (left < dev.limits[image, 1])).all()
    assert len(set(image.tolist())) > 1 and len(set(code.tolist())) > 1


def test_every_crop_stays_inside_its_image() -> None:
    """Padding must never be sampled: crops of an image of ones padded with zeros stay all ones."""
    pairs = [Pair(f"p{k}", np.full((h * 2, w * 2, 1), 255, np.uint8), np.full((h, w, 1), 255, np.uint8))
             for k, (h, w) in enumerate([(9, 30), (30, 9), (12, 12)])]
    dev = ResidentPatches(pairs, 2, patch_size=18, batch_size=64, seed=0, device="cpu")
    for it in range(20):
        lr, hr = dev.batch(it)
        assert lr.min() == 1.0 and hr.min() == 1.0


def test_small_images_and_bad_patch_are_refused() -> None:
    with pytest.raises(DataError, match="multiple of the scale"):
        ResidentPatches(_pairs(), 3, patch_size=35, batch_size=4, seed=0, device="cpu")
    with pytest.raises(DataError, match="smaller than"):
        ResidentPatches(_pairs(), 3, patch_size=60, batch_size=4, seed=0, device="cpu")
