"""The command line: ``reprfn info`` and ``reprfn fuse``, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from reprfn import load_model, save_model
from reprfn.cli import main
from reprfn.models import build
from tests.helpers import randomize


@pytest.fixture
def train_ckpt(tmp_path):
    model = randomize(build("reprfn", scale=2, channels=8, blocks=2, esa_channels=4))
    return save_model(model, tmp_path / "train.safetensors"), model


def test_info_on_a_file(train_ckpt, capsys):
    path, model = train_ckpt
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "reprfn" and info["form"] == "train" and info["scale"] == 2
    assert info["channels"] == 8 and info["params"] == sum(p.numel() for p in model.parameters())


def test_info_on_an_architecture_name(capsys):
    assert main(["info", "reprfn", "--form", "deploy"]) == 0
    out = capsys.readouterr().out
    assert "401,504" in out and "deploy" in out


def test_fuse(train_ckpt, tmp_path, capsys):
    path, model = train_ckpt
    out = tmp_path / "fused.safetensors"
    assert main(["fuse", str(path), str(out)]) == 0
    assert "deploy form" in capsys.readouterr().out
    fused = load_model(out)
    assert fused.form == "deploy"
    x = torch.rand(1, 3, 17, 16)
    with torch.no_grad():
        assert (fused(x) - model.eval()(x)).abs().max() <= 1e-5


def test_fuse_stores_extra_metadata_and_keeps_reserved_keys(train_ckpt, tmp_path, capsys):
    from reprfn.checkpoint import read_state_dict

    path, _ = train_ckpt
    out = tmp_path / "fused.safetensors"
    assert main(["fuse", str(path), str(out), "--meta", "training=1,000 iterations, x=y", "--meta", "status=test"]) == 0
    _, meta = read_state_dict(out)
    assert meta["training"] == "1,000 iterations, x=y" and meta["status"] == "test" and meta["form"] == "deploy"
    for bad, message in (("scale=3", "reserved"), ("novalue", "KEY=VALUE")):
        capsys.readouterr()
        assert main(["fuse", str(path), str(tmp_path / "other.safetensors"), "--meta", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not (tmp_path / "other.safetensors").exists()


@pytest.mark.parametrize(
    "argv_tail,content,message",
    [
        (["info"], b"not a checkpoint at all", "not a readable checkpoint"),
        (["info"], None, "no such file"),
        (["info", "--scale", "3"], "ckpt", "x2 model, but x3"),
        (["fuse"], b"\x00" * 100, "not a readable checkpoint"),
    ],
)
def test_errors_are_one_line_and_nonzero(tmp_path, train_ckpt, capsys, argv_tail, content, message):
    if content == "ckpt":
        path = train_ckpt[0]
    else:
        path = tmp_path / "bad.pth"
        if content is not None:
            path.write_bytes(content)
    out = tmp_path / "out.safetensors"
    argv = [argv_tail[0], str(path), *([str(out)] if argv_tail[0] == "fuse" else []), *argv_tail[1:]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_console_script_runs_as_a_module(tmp_path):
    bad = tmp_path / "x.pth"
    bad.write_text("nope")
    proc = subprocess.run([sys.executable, "-m", "reprfn", "info", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(bad) in proc.stderr
