"""The trainer against hostile input: bad config values, damaged checkpoints, interrupted logs,
and the promises of model.init, data.workers, data.cache_dir and data.train_lr."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import reprfn.data as data_mod
from reprfn import save_model
from reprfn.cli import main
from reprfn.config import DEFAULTS, load_config, merge, parse_config
from reprfn.data import decode_training_set
from reprfn.errors import CheckpointError, ConfigError, DataError, TrainingError
from reprfn.models import build
from reprfn.resize import imresize
from reprfn.train import train
from reprfn.training.state import load_weights
from tests.helpers import loss_goes_wrong_at, randomize

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _photo(i: int, h: int = 72, w: int = 80) -> np.ndarray:
    """A smooth synthetic photo (noise would make a meaningless training signal)."""
    yy, xx = np.mgrid[0:h, 0:w] / 10.0
    img = np.stack([np.sin(xx * (1 + c) + yy * (i + 1) / 3 + i) for c in range(3)], axis=2)
    return ((img + 1) * 127.5).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(4):
        Image.fromarray(_photo(i)).save(folder / f"p{i}.png")
    return folder


def tiny(photos: Path, *extra: str) -> list[str]:
    """``--set`` overrides of a run that takes a second: a 1-block, 8-channel x2 model."""
    return [f"data.train={photos}", "val.dir=null", "train.batch_size=2", "train.patch_size=32",
            "train.checkpoint_every=3", "train.log_every=1", "model.channels=8", "model.blocks=1",
            "train.iters=3", *extra]


def cli(run: Path, *sets: str, resume: str | None = None) -> list[str]:
    args = ["train", "-c", str(SMOKE), "--out", str(run), "--quiet"]
    for item in sets:
        args += ["--set", item]
    return args + (["--resume", resume] if resume else [])


def _refused_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reprfn: error: "), err
    assert "internal error" not in err
    return lines[0]


# --------------------------------------------------------------------------------- 1. config


@pytest.mark.parametrize("item, message", [
    ("train.iters=-5", "config train.iters: expected a positive integer, got -5"),
    ("train.iters=abc", "config train.iters: expected a positive integer, got 'abc'"),
    ("train.iters=2.5", "config train.iters: expected a positive integer, got 2.5"),
    ("train.lr=abc", "config train.lr: expected a positive number, got 'abc'"),
    ("train.lr=0", "config train.lr: expected a positive number, got 0"),
    ("train.lr=.nan", "config train.lr: expected a positive number, got nan"),
    ("train.batch_size=0", "config train.batch_size: expected a positive integer, got 0"),
    ("train.patch_size=1", "config train.patch_size: expected a multiple of model.scale (2), got 1"),
    ("train.patch_size=33", "config train.patch_size: expected a multiple of model.scale (2), got 33"),
    ("train.amp=fp32", "config train.amp: expected one of none, bf16, fp16, got 'fp32'"),
    ("train.lr_schedule=poly", "config train.lr_schedule: expected one of step, cosine, got 'poly'"),
    ("train.device=tpu", "config train.device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("train.ema=1", "config train.ema: expected a number in [0, 1), got 1"),
    ("train.betas=[0.9]", "config train.betas: expected two numbers in [0, 1)"),
    ("train.channels_last=maybe", "config train.channels_last: expected true or false, got 'maybe'"),
    ("data.workers=-1", "config data.workers: expected a non-negative integer, got -1"),
    ("data.train=[]", "config data.train: expected a folder or a list of folders, got []"),
    ("model.scale=5", "config model.scale: expected one of 2, 3, 4, got 5"),
    ("model.name=resnet", "config model.name: expected one of reprfn,"),
    ("model.in_channels=4", "config model.in_channels: expected one of 1, 3, got 4"),
    ("seed=-1", "config seed: expected an integer in [0, 4294967295], got -1"),
    ("loss.ssim=1", "config loss.ssim: unknown loss 'ssim'"),
    ("loss.l1=-1", "config loss.l1: expected a non-negative number, got -1"),
    ("loss.l1=0", "config loss: no term has a non-zero weight"),
    ("train.bogus=1", "unknown config key 'train.bogus'"),
    ("model=3", "config model: expected a mapping, got 3"),
])
def test_bad_values_are_refused_naming_the_key(item, message):
    with pytest.raises(ConfigError) as info:
        load_config(SMOKE, [item])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_cli_refuses_a_bad_value_before_the_run_folder(tmp_path, photos, capsys):
    run = tmp_path / "run"
    assert main(cli(run, *tiny(photos, "train.iters=-5"))) == 2
    assert _refused_line(capsys) == "reprfn: error: config train.iters: expected a positive integer, got -5"
    assert not run.exists()


@pytest.mark.parametrize("extra, error, message", [
    (["train.patch_size=16"], ConfigError,
     "config train.patch_size: expected LR patches large enough for reprfn, got 16"),
    (["model.name=imdn"], ConfigError, "config model: imdn with channels=8"),
    (["model.init=missing.safetensors"], ConfigError, "config model.init: missing.safetensors: no such file"),
    (["data.train_lr=nowhere"], DataError, "no LR image with the same name in nowhere"),
])
def test_what_only_the_run_can_check_is_refused_before_the_run_folder(tmp_path, photos, extra, error, message):
    run = tmp_path / "run"
    with pytest.raises(error, match=message):
        train(load_config(SMOKE, tiny(photos, *extra)), run, progress=False)
    assert not run.exists()


def test_a_key_given_twice_is_refused_naming_it_and_its_line(tmp_path):
    """PyYAML keeps the last of two equal keys: the second ``lr:`` replaced the first silently."""
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 1.0e-3\n  iters: 5\n  lr: 2.0e-3\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == f"{config}: not valid YAML (the key 'lr' is given twice (line 4))"
    with pytest.raises(ConfigError, match="the key 'lr' is given twice"):
        load_config(SMOKE, ["train={lr: 1, lr: 2}"])
    config.write_text("train:\n  lr: 1.0e-3\nval:\n  every: 5\n")  # one key per mapping: fine
    assert load_config(config).train.lr == 1.0e-3


def test_a_training_path_that_is_a_file_is_named_as_such(tmp_path, photos):
    not_a_folder = tmp_path / "photo.png"
    not_a_folder.write_bytes(b"")
    with pytest.raises(DataError, match="photo.png: a file, not a folder of training images"):
        train(load_config(SMOKE, tiny(not_a_folder)), tmp_path / "run", progress=False)


def test_yaml_numbers_and_a_loss_section_that_replaces_the_default():
    cfg = load_config(SMOKE, ["train.lr=1e-4", "train.iters=1.0e3"])  # PyYAML reads both as strings
    assert cfg.train.lr == 1e-4 and cfg.train.iters == 1000
    assert load_config(SMOKE, ["loss.l1=1"]).loss == {"l1": 1.0}
    # the experiments build configs with merge(DEFAULTS, ...): their loss is the one given, alone
    assert parse_config(merge(DEFAULTS, {"loss": {"l2": 1.0}})).loss == {"l2": 1.0}


def test_a_fresh_run_does_not_overwrite_a_run(tmp_path, photos, capsys):
    run = tmp_path / "run"
    train(load_config(SMOKE, tiny(photos)), run, progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert isinstance(saved, dict) and saved["train"]["betas"] == [0.9, 0.999]
    assert parse_config(saved) == load_config(SMOKE, tiny(photos))  # config.yaml reloads as the run's config
    assert main(cli(run, *tiny(photos))) == 2
    assert "already holds a run (last.ckpt)" in _refused_line(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# --------------------------------------------------------------------------------- 2. checkpoints


@pytest.fixture(scope="module")
def finished(tmp_path_factory, photos) -> Path:
    """A run stopped at its checkpoint (iteration 3)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(load_config(SMOKE, tiny(photos)), run, progress=False)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    """A copy of a run whose config.yaml carries a marker: a rewrite would remove it."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    with open(dst / "config.yaml", "a") as fh:
        fh.write("# not rewritten\n")
    return dst


def _foreign_safetensors(ckpt: Path) -> None:
    save_model(build("reprfn", scale=2, channels=8, blocks=1), ckpt)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b""), "empty file, not a training checkpoint"),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or damaged training checkpoint"),
    (lambda p: p.write_bytes(os.urandom(300)), "not a PyTorch file, not a training checkpoint"),
    (_foreign_safetensors, "a safetensors weights file"),
    (lambda p: torch.save({"weight": torch.zeros(2)}, p), "not a training checkpoint of reprfn train (no 'iteration')"),
])
def test_a_damaged_checkpoint_is_one_line_and_changes_nothing(finished, tmp_path, photos, capsys, damage, message):
    run = _copy(finished, tmp_path)
    damage(run / "last.ckpt")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(cli(run, *tiny(photos, "train.iters=6"), resume="auto")) == 2
    line = _refused_line(capsys)
    assert line.startswith(f"reprfn: error: {run / 'last.ckpt'}: ") and message in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_checkpoint_of_another_width_names_the_tensor_and_shapes(finished, tmp_path, photos, capsys):
    run = _copy(finished, tmp_path)
    config = (run / "config.yaml").read_text()
    assert main(cli(run, *tiny(photos, "train.iters=6", "model.channels=16"), resume="auto")) == 2
    line = _refused_line(capsys)
    assert line.startswith(f"reprfn: error: {run / 'last.ckpt'}: tensor ")
    assert "is (8, 3, 3, 3) in the checkpoint but (16, 3, 3, 3) in the configured model" in line
    assert (run / "config.yaml").read_text() == config


@pytest.mark.parametrize("extra, message", [
    (["train.iters=2"], "is at iteration 3, past train.iters=2"),
    (["train.iters=6", "train.lr=1.0e-3"], "was written with train.lr=0.0005, the config says 0.001"),
    (["train.iters=6", "train.lr_schedule=cosine"], "was written with train.lr_schedule=step"),
])
def test_a_resume_that_would_ignore_the_config_is_refused(finished, tmp_path, photos, extra, message):
    run = _copy(finished, tmp_path)
    with pytest.raises(TrainingError, match=message):
        train(load_config(SMOKE, tiny(photos, *extra)), run, resume="auto", progress=False)
    assert (run / "config.yaml").read_text().endswith("# not rewritten\n")


def test_resumed_weights_with_a_missing_tensor_are_one_line(tmp_path):
    """Same shapes, one key fewer (another architecture's layout): named, not torch's key list."""
    model = build("reprfn", scale=2, channels=8, blocks=1)
    weights = model.state_dict()
    del weights["fea_conv.bias"]
    with pytest.raises(CheckpointError) as info:
        load_weights(model, weights, tmp_path / "last.ckpt")
    assert str(info.value) == (f"{tmp_path / 'last.ckpt'}: does not match a reprfn model: 1 missing keys "
                               "(e.g. fea_conv.bias) (a run with other model.* settings)")


# --------------------------------------------------------------------------------- 3. log rows


def _iterations(run: Path) -> list[int]:
    with open(run / "log.csv", newline="") as fh:
        return [int(row["iteration"]) for row in csv.DictReader(fh)]


class Killed(Exception):
    """Stands for the process being killed."""


def test_log_has_one_row_per_iteration_after_an_interrupted_run(tmp_path, photos, monkeypatch):
    def killed(loss: torch.Tensor) -> torch.Tensor:
        raise Killed  # killed at iteration 5: rows 1-4 logged, checkpoint at 3

    run = tmp_path / "run"
    with monkeypatch.context() as m, pytest.raises(Killed):
        loss_goes_wrong_at(m, 5, killed)
        train(load_config(SMOKE, tiny(photos, "train.iters=6")), run, progress=False)
    assert _iterations(run) == [1, 2, 3, 4]
    train(load_config(SMOKE, tiny(photos, "train.iters=6")), run, resume="auto", progress=False)
    assert _iterations(run) == [1, 2, 3, 4, 5, 6]


# --------------------------------------------------------------------------------- 4. promises


def test_model_init_starts_from_the_weights_of_either_form(tmp_path, photos):
    """With a learning rate of 1e-9, one Adam step moves no weight by more than 1e-9: the final
    weights are the initial ones, which shows where the run started."""
    source = randomize(build("reprfn", scale=2, channels=8, blocks=1))
    save_model(source, tmp_path / "train_form.safetensors")
    save_model(source.fuse(), tmp_path / "deploy_form.safetensors")
    for name, reference in (("train_form", source.state_dict()), ("deploy_form", source.fuse().state_dict())):
        run = tmp_path / name
        cfg = load_config(SMOKE, tiny(photos, "train.iters=1", "train.lr=1.0e-9",
                                      f"model.init={tmp_path / name}.safetensors"))
        train(cfg, run, progress=False)
        got = load_file(run / ("final.safetensors" if name == "train_form" else "final_fused.safetensors"))
        assert got.keys() == reference.keys()
        assert max((got[k] - reference[k]).abs().max().item() for k in got) < 1e-5, name
    fresh = tmp_path / "fresh"
    train(load_config(SMOKE, tiny(photos, "train.iters=1", "train.lr=1.0e-9")), fresh, progress=False)
    got = load_file(fresh / "final.safetensors")
    assert max((got[k] - source.state_dict()[k]).abs().max().item() for k in got) > 0.01


_WORKERS_CHECK = """
import sys, torch
from reprfn.data import PatchSampler, decode_training_set
from reprfn.training.build import make_loader

pairs = decode_training_set(sys.argv[1], 2, min_hr_size=32)
sampler = PatchSampler(pairs, 2, 32, 3, seed=7)
cpu = torch.device("cpu")
alone = list(make_loader(sampler, 0, 4, 0, cpu))
pooled = list(make_loader(sampler, 0, 4, 2, cpu))
resumed = list(make_loader(sampler, 2, 4, 2, cpu))
assert len(alone) == len(pooled) == 4, (len(alone), len(pooled))
for a, b in zip(alone, pooled):
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "workers changed a batch"
for a, b in zip(alone[2:], resumed):
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "a resumed loader changed a batch"
assert not torch.equal(alone[0][0], alone[1][0]), "batches do not differ"
print("same batches")
"""


def test_batches_do_not_depend_on_the_number_of_workers(photos):
    """Run in a fresh process: DataLoader worker processes leave signal handlers and worker
    bookkeeping behind in the process that started them, which is no place for a test runner."""
    proc = subprocess.run([sys.executable, "-c", _WORKERS_CHECK, str(photos)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "same batches", proc.stderr[-2000:]


def test_cache_is_read_and_invalidated_by_content(tmp_path, monkeypatch):
    hr_dir, cache = tmp_path / "hr", tmp_path / "cache"
    hr_dir.mkdir()
    for i in range(2):  # BMP: the file size depends on the dimensions only
        Image.fromarray(_photo(i, 40, 48)).save(hr_dir / f"p{i}.bmp")
    first = decode_training_set(hr_dir, 2, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as m:
        m.setattr(data_mod, "_decode_pair", no_decoding)
        second = decode_training_set(hr_dir, 2, cache_dir=cache)
    assert all(np.array_equal(a.hr, b.hr) and np.array_equal(a.lr, b.lr) for a, b in zip(first, second, strict=True))

    # another picture, same size, same modification time: the cache must not serve the old one
    path = hr_dir / "p0.bmp"
    st = path.stat()
    new = 255 - _photo(0, 40, 48)
    Image.fromarray(new).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    third = decode_training_set(hr_dir, 2, cache_dir=cache)
    assert np.array_equal(third[0].hr, new) and np.array_equal(third[0].lr, imresize(new, 1 / 2))

    for entry in cache.glob("*.npz"):  # a damaged entry is decoded again, not an error
        entry.write_bytes(b"garbage")
    fourth = decode_training_set(hr_dir, 2, cache_dir=cache)
    assert np.array_equal(fourth[0].hr, new) and np.array_equal(fourth[1].hr, first[1].hr)


def test_given_lr_images_are_used_instead_of_resizing(tmp_path):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    hr = _photo(3, 40, 48)
    lr = np.ascontiguousarray(hr[::2, ::2])  # nearest-neighbour: unlike the bicubic the trainer makes
    Image.fromarray(hr).save(hr_dir / "a.png")
    Image.fromarray(lr).save(lr_dir / "a.png")
    (pair,) = decode_training_set(hr_dir, 2, lr_folders=lr_dir)
    assert np.array_equal(pair.lr, lr) and np.array_equal(pair.hr, hr)
    assert not np.array_equal(pair.lr, imresize(hr, 1 / 2))


@pytest.mark.parametrize("name", ["config.yaml", "final_fused.safetensors", "best_fused.safetensors"])
def test_a_fresh_run_does_not_overwrite_other_files_of_its_names(tmp_path, photos, capsys, name):
    """``--out .`` beside one's own config.yaml replaced it with the run's resolved configuration."""
    (tmp_path / name).write_text("mine\n")
    assert main(cli(tmp_path, *tiny(photos))) == 2
    assert _refused_line(capsys) == (f"reprfn: error: {tmp_path}: already holds {name}, which a fresh run would "
                                     "overwrite; choose another --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name] and (tmp_path / name).read_text() == "mine\n"


def test_an_empty_out_is_refused(tmp_path, photos, capsys, monkeypatch):
    """``--out ""`` is the current folder: the run's files were written among whatever was there."""
    monkeypatch.chdir(tmp_path)
    args = cli(tmp_path, *tiny(photos))
    args[args.index("--out") + 1] = ""
    assert main(args) == 2
    assert _refused_line(capsys) == "reprfn: error: --out is empty: name the run folder"
    assert list(tmp_path.iterdir()) == []
