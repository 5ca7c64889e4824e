"""Checkpoints: our format, third-party layouts, round trips, range folding and bad files."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from reprfn import CheckpointError, load_model, save_model
from reprfn.checkpoint import fold_data_range, read_state_dict, recognise
from reprfn.models import build
from reprfn.models.rep import EDGE_KERNELS
from tests.helpers import randomize, shared_path

EDGE_NAMES = {"sobel_x": "sbx", "sobel_y": "sby", "laplacian": "lpl"}
BRANCH_NAMES = {
    "conv3x3": "rbr_3x3_branch", "conv3x1": "rbr_3x1_branch", "conv1x3": "rbr_1x3_branch",
    "conv1x1": "rbr_1x1_branch", "expand": "rbr_1x1_3x3_branch_1x1", "expand3x3": "rbr_1x1_3x3_branch_3x3",
}


def to_authors_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write one of our RepRFN state dicts with the authors' key names (independent of the loader)."""
    out = {}
    for key, value in sd.items():
        k = re.sub(r"^blocks\.(\d+)\.", lambda m: f"reprfb{int(m.group(1)) + 1}.", key)
        k = re.sub(r"\.rep\.(\d+)\.", lambda m: f".repblock{int(m.group(1)) + 1}.", k)
        k = re.sub(r"^(reprfb\d+)\.conv\.", r"\1.conv3.", k)
        k = re.sub(r"(\.repblock\d+)\.conv\.", r"\1.rbr_reparam.", k)
        k = k.replace("upsampler.0.", "upsampler.conv.")
        for ours, theirs in BRANCH_NAMES.items():
            k = k.replace(f".{ours}.", f".{theirs}.")
        m = re.search(r"\.edges\.(\w+)\.(conv\.weight|conv\.bias|scale|bias)$", k)
        if m:
            kind, field = m.groups()
            prefix = k[: m.start()] + f".rbr_conv1x1_{EDGE_NAMES[kind]}_branch."
            name = {"conv.weight": "k0", "conv.bias": "b0"}.get(field, field)
            if field == "scale":
                value = value.reshape(-1, 1, 1, 1)
                out[prefix + "mask"] = torch.tensor(EDGE_KERNELS[kind]).expand(value.shape[0], 1, 3, 3).clone()
            k = prefix + name
        out[k] = value
    return out


def _out(model, x):
    with torch.no_grad():
        return model(x)


def tiny_reprfn(**kw):
    return randomize(build("reprfn", channels=8, blocks=2, esa_channels=4, **kw))


# ---------------------------------------------------------------------------------------------


def test_round_trip_train_save_load_fuse_save_load(tmp_path):
    model = tiny_reprfn(scale=3).eval()
    x = torch.rand(1, 3, 20, 17)
    p1 = save_model(model, tmp_path / "train.safetensors")
    loaded = load_model(p1)
    assert loaded.form == "train" and loaded.scale == 3
    assert torch.equal(_out(loaded, x), _out(model, x))
    fused = loaded.fuse()
    p2 = save_model(fused, tmp_path / "deploy.safetensors")
    reloaded = load_model(p2)
    assert reloaded.form == "deploy"
    assert torch.equal(_out(reloaded, x), _out(fused, x))
    assert (_out(reloaded, x) - _out(model, x)).abs().max() <= 1e-5


def test_metadata_is_written(tmp_path):
    path = save_model(tiny_reprfn(scale=2), tmp_path / "m.safetensors")
    _, meta = read_state_dict(path)
    assert meta["format"] == "reprfn" and meta["arch"] == "reprfn" and meta["form"] == "train"
    assert meta["scale"] == "2" and meta["channels"] == "8" and meta["blocks"] == "2"
    assert float(meta["data_range"]) == 1.0 and meta["version"]


def test_save_is_atomic_and_leaves_no_temporary(tmp_path):
    save_model(tiny_reprfn(), tmp_path / "m.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize("form", ["train", "deploy"])
@pytest.mark.parametrize("wrapper", [None, "params", "params_ema", "state_dict", "module."])
def test_authors_layouts_load(tmp_path, form, wrapper):
    model = tiny_reprfn(scale=2).eval()
    if form == "deploy":
        model = model.fuse()
    sd = to_authors_layout(model.state_dict())
    assert any(k.startswith("reprfb1.") for k in sd)
    if wrapper == "module.":
        sd = {f"module.{k}": v for k, v in sd.items()}
    elif wrapper:
        sd = {wrapper: sd, "iter": 10}
    torch.save(sd, tmp_path / "authors.pth")
    loaded = load_model(tmp_path / "authors.pth")
    assert loaded.form == form and loaded.scale == 2 and loaded.channels == 8 and loaded.num_blocks == 2
    x = torch.rand(1, 3, 16, 18)
    assert torch.equal(_out(loaded, x), _out(model, x))


def test_fold_data_range_is_exact():
    model = randomize(build("rfdn", channels=16, blocks=2), seed=2).double().eval()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    native = _out(model, x * 255) / 255
    folded = fold_data_range(model, 255.0)
    torch.testing.assert_close(_out(folded, x), native, rtol=1e-10, atol=1e-10)


def test_rfn_variant_needs_arch_without_metadata(tmp_path):
    model = randomize(build("rfn-rfb2", channels=8, blocks=2))
    torch.save(model.state_dict(), tmp_path / "rfn.pth")
    with pytest.raises(CheckpointError, match="pass --arch"):
        load_model(tmp_path / "rfn.pth")
    assert load_model(tmp_path / "rfn.pth", arch="rfn-rfb2").arch == "rfn-rfb2"
    save_model(model, tmp_path / "rfn.safetensors")
    assert load_model(tmp_path / "rfn.safetensors").arch == "rfn-rfb2"


# --------------------------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nope.pth")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "a.pth").write_text("hello, I am text\n")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(tmp_path / "a.pth")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "empty.safetensors")


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_truncated_files(tmp_path, ext):
    model = tiny_reprfn()
    full = tmp_path / f"full.{ext}"
    if ext == "safetensors":
        save_model(model, full)
    else:
        torch.save(model.state_dict(), full)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut"):
        load_model(cut)


def test_arbitrary_pickles_are_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"fea_conv.weight": Evil()}, fh)
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()


def test_other_architecture(tmp_path):
    torch.save({"conv_first.weight": torch.zeros(64, 3, 3, 3), "conv_last.weight": torch.zeros(3, 64, 3, 3)},
               tmp_path / "edsr.pth")
    with pytest.raises(CheckpointError, match="unrecognised state dict"):
        load_model(tmp_path / "edsr.pth")


def test_damaged_state_dict_names_the_problem(tmp_path):
    sd = tiny_reprfn().fuse().state_dict()
    del sd["blocks.1.esa.conv3.weight"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model(tmp_path / "partial.pth")


def test_scale_mismatch(tmp_path):
    save_model(tiny_reprfn(scale=3), tmp_path / "x3.safetensors")
    with pytest.raises(CheckpointError, match="x3 model, but x4"):
        load_model(tmp_path / "x3.safetensors", scale=4)


def test_scale_and_width_come_from_shapes():
    for scale in (2, 3, 4):
        sd = build("reprfn", scale=scale, channels=24, blocks=3, deploy=True).state_dict()
        cfg = recognise(sd).config
        assert (cfg["scale"], cfg["channels"], cfg["blocks"], cfg["form"]) == (scale, 24, 3, "deploy")


# --------------------------------------------------------------------------------------------- official files


def _y_psnr_set5(model) -> float:
    from PIL import Image

    from reprfn.metrics import psnr

    lr_dir = shared_path("data", "benchmark", "Set5", "x4", "LR")
    values = []
    for lr_path in sorted(lr_dir.glob("*.png")):
        lr = np.array(Image.open(lr_path).convert("RGB"))
        hr = np.array(Image.open(lr_path.parent.parent / "HR" / lr_path.name).convert("RGB"))
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
        sr = _out(model, x).clamp(0, 1).mul(255).round().byte()[0].permute(1, 2, 0).numpy()
        values.append(psnr(sr, hr, crop_border=4, test_y_channel=True))
    return float(np.mean(values))


def test_authors_checkpoint_reaches_published_set5_psnr():
    model = load_model(shared_path("weights", "official", "reprfn_ntire_x4.pth"))
    assert model.form == "deploy" and sum(p.numel() for p in model.parameters()) == 401_504
    assert _y_psnr_set5(model) == pytest.approx(32.20, abs=0.01)


def test_authors_layout_helper_matches_the_released_keys():
    """Guards the helper above: it must produce exactly the keys of the authors' deploy file."""
    path = shared_path("weights", "official", "reprfn_ntire_x4.pth")
    official = torch.load(path, map_location="cpu", weights_only=True)
    ours = to_authors_layout(build("reprfn", deploy=True).state_dict())
    assert set(ours) == set(official)


def test_ntire_rfdn_loads_strictly_and_works_on_0_255():
    path = shared_path("weights", "official", "rfdn_ntire_x4.pth")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    build("rfdn").load_state_dict(sd, strict=True)
    model = load_model(path)
    assert model.arch == "rfdn" and model.scale == 4
    assert _y_psnr_set5(model) > 31.9  # a working x4 model (bicubic: 28.43 dB)
    assert _y_psnr_set5(load_model(path, data_range=1.0)) < 29.0  # the wrong range is visibly wrong
