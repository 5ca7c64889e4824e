"""The training campaign's snapshot: the run's EMA in training form, loadable and resumable from."""

from __future__ import annotations

import sys

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
