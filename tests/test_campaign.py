"""The training campaign's snapshot: the run's EMA in training form, loadable and resumable from."""

from __future__ import annotations

import sys

import pytest
import torch

from reprfn import load_model
from reprfn.train import train
from tests.test_train import ROOT, photos, tiny_config  # noqa: F401  (photos is a fixture)

sys.path.insert(0, str(ROOT / "experiments"))
import campaign  # noqa: E402


def test_snapshot_holds_the_ema_in_training_form_and_seeds_a_new_stage(photos, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train(tiny_config(photos, "train.iters=3", "train.ema=0.9"), run, progress=False)
    out = campaign.snapshot(run, tmp_path / "campaign" / "ema_train.safetensors")
    snap = load_model(out)
    state = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    assert snap.form == "train"
    own = snap.state_dict()
    assert own.keys() == state["ema"].keys()
    assert all(torch.equal(own[k], state["ema"][k]) for k in own)
    assert not all(torch.equal(own[k], state["model"][k]) for k in own)  # the EMA, not the raw weights

    # the next stage starts from it: same function before any step
    cfg = tiny_config(photos, "train.iters=1", f"model.init={out}")
    from reprfn.train import build_model

    model = build_model(cfg).eval()
    x = torch.rand(1, 3, 24, 24)
    torch.testing.assert_close(model(x), snap(x), rtol=0, atol=1e-6)
    assert [r[1] for r in campaign.curve([run])] == []  # no validation in this run


def test_curves_of_stages_are_drawn_on_the_campaign_axis(tmp_path):
    """A stage that started from another's snapshot at iteration N is drawn from N on."""
    for name, rows in (("s1", [(250, 31.61), (500, 31.63)]), ("s2", [(250, 31.64)])):
        (tmp_path / name).mkdir()
        lines = ["iteration,loss,lr,seconds,val_psnr_y"] + [f"{i - 50},0.5,1e-4,1.0," for i, _ in rows[:1]]
        lines += [f"{i},0.5,1e-4,1.0,{v}" for i, v in rows]
        (tmp_path / name / "log.csv").write_text("\n".join(lines) + "\n")
    rows = campaign.curve([tmp_path / "s1", tmp_path / "s2"])
    assert rows == [("s1", 250, 31.61), ("s1", 500, 31.63), ("s2", 250, 31.64)]
    assert campaign.series(rows, {"s2": 400}) == {"s1": [(250, 31.61), (500, 31.63)], "s2": [(650, 31.64)]}
    png = campaign.plot(rows, {"s2": 400}, tmp_path / "docs" / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


def test_interpolate_is_exact_at_its_ends_and_linear_between():
    gen = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(4, generator=gen)}
    b = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(4, generator=gen)}
    assert all(torch.equal(campaign.interpolate(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.equal(campaign.interpolate(a, b, 1.0)[k], b[k]) for k in a)
    mid = campaign.interpolate(a, b, 0.25)
    assert all(torch.allclose(mid[k], 0.75 * a[k] + 0.25 * b[k]) for k in a)
    for bad in ({"w": b["w"]}, {"w": b["w"], "b": torch.zeros(5)}):
        with pytest.raises(ValueError, match="same weights"):
            campaign.interpolate(a, bad, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        campaign.interpolate(a, b, 1.5)


def test_soup_of_two_weight_files_is_a_loadable_model_between_them(tmp_path):
    from reprfn import build, fuse, save_model

    torch.manual_seed(0)
    one, two = fuse(build("reprfn", scale=2)), fuse(build("reprfn", scale=2))
    save_model(one, tmp_path / "a.safetensors")
    save_model(two, tmp_path / "b.safetensors")
    out = campaign.soup(tmp_path / "a.safetensors", tmp_path / "b.safetensors", 0.5, tmp_path / "s.safetensors")
    got = load_model(out)
    assert got.form == "deploy" and got.scale == 2
    ref = campaign.interpolate(one.state_dict(), two.state_dict(), 0.5)
    assert all(torch.allclose(got.state_dict()[k], ref[k]) for k in ref)
    save_model(fuse(build("reprfn", scale=3)), tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="differ"):
        campaign.soup(tmp_path / "a.safetensors", tmp_path / "c.safetensors", 0.5, tmp_path / "t.safetensors")
