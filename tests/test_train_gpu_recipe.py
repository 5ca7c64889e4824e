"""The GPU recipe's parts, run on the CPU at small sizes: batches cut on the device
(``data.resident``), ``train.compile``, and a run that stops at ``train.time_limit`` and resumes."""

from __future__ import annotations

import torch

from reprfn.train import train
from tests.test_train import _identical, _weights, photos, tiny_config  # noqa: F401 (fixture)


def _last_weights(run):
    return torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["model"]


def test_resident_batches_train_and_resume_bit_identically(tmp_path, photos):  # noqa: F811
    straight = tmp_path / "straight"
    train(tiny_config(photos, "train.iters=6", "data.resident=true"), straight, progress=False)
    split = tmp_path / "split"
    train(tiny_config(photos, "train.iters=3", "data.resident=true"), split, progress=False)
    summary = train(tiny_config(photos, "train.iters=6", "data.resident=true"), split, resume="auto", progress=False)
    assert summary["started_at"] == 3
    assert _identical(_weights(straight), _weights(split))
    host = tmp_path / "host"  # the other batch stream: a different run, so the check above could fail
    train(tiny_config(photos, "train.iters=6"), host, progress=False)
    assert not _identical(_weights(straight), _weights(host))


def test_time_limit_stops_with_a_checkpoint_and_resume_finishes_the_same_run(tmp_path, photos):  # noqa: F811
    straight = tmp_path / "straight"
    train(tiny_config(photos, "train.iters=5"), straight, progress=False)
    run = tmp_path / "limited"
    summary = train(tiny_config(photos, "train.iters=5", "train.time_limit=1e-9"), run, progress=False)
    assert summary["stopped"].startswith("time limit") and summary["iterations"] == 1
    assert torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["iteration"] == 1
    assert not (run / "final.safetensors").exists()
    done = train(tiny_config(photos, "train.iters=5"), run, resume="auto", progress=False)
    assert done["started_at"] == 1 and "stopped" not in done
    assert _identical(_weights(straight), _weights(run))


def test_compile_wraps_the_network_and_trains_the_same(tmp_path, photos, monkeypatch):  # noqa: F811
    """``train.compile`` hands the network to ``torch.compile`` (here a recording stand-in: a real
    inductor build takes minutes on two cores; the GPU script runs the real one)."""
    compiled = []

    def fake_compile(module, **kw):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    plain, comp = tmp_path / "plain", tmp_path / "compiled"
    train(tiny_config(photos, "train.iters=3"), plain, progress=False)
    train(tiny_config(photos, "train.iters=3", "train.compile=true"), comp, progress=False)
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)
    assert _identical(_weights(plain), _weights(comp))
