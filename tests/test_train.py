"""The trainer: configs, resumable determinism, NaN handling, distributed equivalence."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from reprfn import load_model
from reprfn.data import DataError
from reprfn.train import TrainingError, load_config, parse_set, train, val_pairs, validate
from tests.helpers import loss_goes_wrong_at

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six smooth synthetic 'photos' (noise would make a meaningless training signal)."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:80] / 10.0
    for i in range(6):
        phase = rng.random(3) * 6
        img = np.stack([np.sin(xx * (1 + c) + yy * (i + 1) / 3 + phase[c]) for c in range(3)], axis=2)
        Image.fromarray(((img + 1) * 127.5).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def tiny_config(photos: Path, *extra: str) -> dict:
    return load_config(ROOT / "configs" / "smoke.yaml", [
        f"data.train={photos}", "val.dir=null", "train.batch_size=4", "train.patch_size=32",
        "train.checkpoint_every=3", "train.log_every=1", "model.channels=8", "model.blocks=1", *extra,
    ])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final.safetensors")


def _identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------- config


def test_config_keys_and_overrides(tmp_path):
    cfg = load_config(ROOT / "configs" / "smoke.yaml", ["train.iters=7", "data.train=one/folder"])
    assert cfg.train.iters == 7 and cfg.data.train == ("one/folder",)
    for key in ("data.train", "train.iters", "train.batch_size", "train.patch_size",
                "train.checkpoint_every", "val.every", "seed"):
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
    with pytest.raises(ValueError, match="unknown config key 'train.iterations'"):
        load_config(None, ["train.iterations=3"])
    (tmp_path / "bad.yaml").write_text("model: {nme: reprfn}\n")
    with pytest.raises(ValueError, match="'model.nme'"):
        load_config(tmp_path / "bad.yaml")
    assert parse_set(["a.b=[1, 2]", "c=null"]) == {"a": {"b": [1, 2]}, "c": None}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set(["novalue"])


@pytest.mark.parametrize("name", ["reprfn_x2", "reprfn_x3", "reprfn_x4", "cpu", "smoke"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.train.patch_size % cfg.model.scale == 0


# --------------------------------------------------------------------------------------- runs


def test_resume_is_bit_identical(tmp_path, photos):
    straight = tmp_path / "straight"
    one = "train.threads=1"  # as in the test below: two threads do not always sum in one order
    train(tiny_config(photos, "train.iters=6", one), straight, progress=False)
    split = tmp_path / "split"
    train(tiny_config(photos, "train.iters=3", one), split, progress=False)  # stops at its checkpoint
    summary = train(tiny_config(photos, "train.iters=6", one), split, resume="auto", progress=False)
    assert summary["started_at"] == 3
    assert _identical(_weights(straight), _weights(split))
    # and the run really trained: weights moved away from a fresh start
    fresh = tmp_path / "fresh"
    train(tiny_config(photos, "train.iters=1"), fresh, progress=False)
    assert not _identical(_weights(straight), _weights(fresh))


def test_resume_after_sigkill_is_bit_identical(tmp_path, photos):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "reprfn", "train", "-c", str(ROOT / "configs" / "smoke.yaml"), "--out", str(run),
           "--quiet", "--set", f"data.train={photos}", "--set", "val.dir=null", "--set", "train.batch_size=4",
           "--set", "train.patch_size=32", "--set", "train.checkpoint_every=2", "--set", "model.channels=8",
           "--set", "model.blocks=1",
           # one thread: with two, oneDNN's fp32 kernels now and then sum in another order (a straight
           # run differed from an identical one by 7e-7 in about 1 of 12), which is not the resume's doing
           "--set", "train.threads=1", "--set", "train.iters=100000"]
    log = (tmp_path / "stderr.txt").open("wb")  # a file, not a pipe: a full pipe would stall the run
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    # generous: on a loaded machine starting Python, torch and the data takes far longer than usual
    # (a 60 s deadline was missed there, failing this test for a reason that was not the resume)
    deadline = time.time() + 300
    try:
        while not (run / "last.ckpt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    assert (run / "last.ckpt").exists(), f"no checkpoint: {(tmp_path / 'stderr.txt').read_text()[-500:]}"
    reached = torch.load(run / "last.ckpt", weights_only=True)["iteration"]
    assert reached >= 2 and not (run / "final.safetensors").exists()
    # the resume and the uninterrupted run are fresh processes too, as a user's would be: the test
    # process has run inference engines that may change floating-point state (denormal flushing)
    target = reached + 3
    straight = tmp_path / "straight"
    again = [str(straight) if part == str(run) else part for part in cmd[:-2]]
    last = ["--set", f"train.iters={target}"]
    subprocess.run([*cmd[:-2], *last, "--resume", "auto"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*again, *last], check=True, stdout=subprocess.DEVNULL)
    assert _identical(_weights(straight), _weights(run))


def test_outputs_of_a_run(tmp_path, photos):
    cfg = tiny_config(photos, "train.iters=4", "train.ema=0.9", f"val.dir={photos}", "val.every=2")
    summary = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("last.ckpt", "final.safetensors", "final_fused.safetensors", "best_fused.safetensors",
                 "log.csv", "config.yaml"):
        assert (run / name).is_file(), name
    # the best validation PSNR is the highest the log records, and what the saved best model scores
    logged = [float(r["val_psnr_y"]) for r in csv.DictReader((run / "log.csv").open()) if r["val_psnr_y"]]
    assert len(logged) == 2 and summary["best_val_psnr_y"] == pytest.approx(max(logged), abs=1e-9)
    best = load_model(run / "best_fused.safetensors")
    assert validate(best, val_pairs(cfg)) == pytest.approx(summary["best_val_psnr_y"], abs=1e-9)
    assert load_model(run / "final.safetensors").form == "train"
    fused = load_model(run / "final_fused.safetensors")
    assert fused.form == "deploy" and fused.scale == 2
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert {"model", "ema", "optimizer", "scheduler", "rng", "iteration"} <= ckpt.keys()
    # `reprfn fuse last.ckpt` / load_model read a training checkpoint, preferring its EMA weights
    from_ckpt = load_model(run / "last.ckpt").state_dict()
    final = load_file(run / "final.safetensors")
    assert all(torch.equal(from_ckpt[k], final[k]) for k in final)
    lines = (run / "log.csv").read_text().splitlines()
    assert lines[0].startswith("iteration,loss") and len(lines) == 5


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, photos, monkeypatch):
    loss_goes_wrong_at(monkeypatch, 5, lambda loss: loss * float("nan"))
    run = tmp_path / "nan"
    with pytest.raises(TrainingError, match="iteration 5.*last good checkpoint"):
        train(tiny_config(photos, "train.iters=10"), run, progress=False)
    assert torch.load(run / "last.ckpt", weights_only=True)["iteration"] == 3
    assert not (run / "final.safetensors").exists()


def test_clear_data_errors(tmp_path, photos):
    with pytest.raises(DataError, match="does not exist"):
        train(tiny_config(photos, f"data.train={tmp_path / 'missing'}"), tmp_path / "r1", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        train(tiny_config(photos, f"data.train={tmp_path / 'empty'}"), tmp_path / "r2", progress=False)
    with pytest.raises(DataError, match="lower train.patch_size"):
        train(tiny_config(photos, "train.patch_size=96"), tmp_path / "r3", progress=False)


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "reprfn", "train", "-c", str(ROOT / "configs" / "smoke.yaml"),
                           "--out", str(tmp_path / "r"), "--set", "train.bogus=1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown config key 'train.bogus'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_processes_match_one(tmp_path, photos):
    """DDP over 2 CPU ranks (gloo), each with half the global batch, gives one process's weights."""
    common = ["-m", "reprfn", "train", "-c", str(ROOT / "configs" / "smoke.yaml"), "--quiet",
              "--set", f"data.train={photos}", "--set", "val.dir=null", "--set", "train.batch_size=4",
              "--set", "train.patch_size=32", "--set", "model.channels=8", "--set", "model.blocks=1",
              "--set", "train.iters=3", "--set", "train.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(29500 + os.getpid() % 1000), *common, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
