"""The EMA (torch's AveragedModel) against the hand-written average it replaced, and checkpoints in
the layout written before it: they resume, and the run ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import reprfn.train as train_mod
from reprfn.models import build
from reprfn.train import build_model, train
from reprfn.training.build import make_state
from reprfn.training.ema import make_ema
from reprfn.training.state import seed_all
from tests.helpers import randomize
from tests.test_train import photos, tiny_config  # noqa: F401  (photos is a fixture)

# the keys of last.ckpt as the trainer wrote them before the EMA was an AveragedModel
OLD_KEYS = ("iteration", "model", "ema", "optimizer", "scheduler", "rng", "best", "config", "data")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes: equal bits, not merely equal values (0.0 == -0.0, NaN != NaN)."""
    return t.detach().flatten().view(torch.uint8)


def _same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(_bits(a[k]), _bits(b[k])) for k in a)


def hand_written_ema(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """The average as the trainer computed it before: a lerp of every parameter, buffers untouched."""
    with torch.no_grad():
        for pe, pm in zip(average.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1.0 - decay)


@pytest.mark.parametrize("decay", [0.9, 0.999])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ema_is_the_hand_written_average_bit_for_bit(decay, channels_last):
    model = randomize(build("reprfn", scale=2, channels=8, blocks=1, esa_channels=4), seed=3)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    old = copy.deepcopy(model).requires_grad_(False)  # taken before the first step, as before
    ema = make_ema(model, decay)
    assert _same_bits(ema.module.state_dict(), model.state_dict())  # starts at the model's weights
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.rand(2, 3, 16, 16, generator=g)
        loss = (model(x) - torch.rand(2, 3, 32, 32, generator=g)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        hand_written_ema(old, model, decay)
        ema.update_parameters(model)
        assert _same_bits(ema.module.state_dict(), old.state_dict())
        assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(ema.module.buffers(), old.buffers(), strict=True))
    assert not _same_bits(ema.module.state_dict(), model.state_dict())  # it did average
    assert all(p.dtype == torch.float32 for p in ema.module.parameters())


def test_a_checkpoint_in_the_old_layout_resumes_bit_identically(tmp_path: Path, photos, monkeypatch):  # noqa: F811
    """A ``last.ckpt`` with the old keys and an EMA computed by the old loop, written by hand at
    iteration 3, resumes to iteration 6 with the weights of an uninterrupted 6-iteration run."""
    extra = ("train.ema=0.9", "train.checkpoint_every=1")
    cfg = tiny_config(photos, "train.iters=6", *extra)
    weights: list[dict[str, torch.Tensor]] = []  # the model after each iteration
    real_save = train_mod.save_checkpoint

    def recording(state, cfg_, path):
        weights.append({k: v.clone() for k, v in state.model.state_dict().items()})
        if state.iteration == 3:
            torch.save(state.checkpoint(cfg_), tmp_path / "at3.ckpt")
        real_save(state, cfg_, path)

    monkeypatch.setattr(train_mod, "save_checkpoint", recording)
    train(cfg, tmp_path / "straight", progress=False)
    monkeypatch.undo()
    assert len(weights) == 6
    at3 = torch.load(tmp_path / "at3.ckpt", weights_only=True)
    assert tuple(at3) == OLD_KEYS and at3["ema"].keys() == at3["model"].keys()  # the layout is unchanged

    # the EMA as the old trainer computed it: from the initial weights, one lerp per iteration
    seed_all(cfg.seed)
    average = build_model(cfg).requires_grad_(False)
    for done in weights[:3]:
        model = copy.deepcopy(average)
        model.load_state_dict(done)
        hand_written_ema(average, model, 0.9)
    assert _same_bits(average.state_dict(), at3["ema"])

    old = {key: at3[key] for key in OLD_KEYS}
    old["ema"] = average.state_dict()  # plain module keys: no "module." prefix, no n_averaged
    (tmp_path / "resumed").mkdir()
    torch.save(old, tmp_path / "resumed" / "last.ckpt")

    state = make_state(cfg, torch.device("cpu"))
    state.resume(tmp_path / "resumed" / "last.ckpt", cfg)
    assert state.iteration == 3 and int(state.ema.n_averaged) == 4  # the seed and 3 updates
    assert _same_bits(state.ema.module.state_dict(), old["ema"])

    summary = train(cfg, tmp_path / "resumed", resume="auto", progress=False)
    assert summary["started_at"] == 3
    assert _same_bits(load_file(tmp_path / "resumed" / "final.safetensors"),
                      load_file(tmp_path / "straight" / "final.safetensors"))
    again = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)
    assert tuple(again) == OLD_KEYS and again["ema"].keys() == again["model"].keys()
