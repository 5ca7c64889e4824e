"""Export and profiling with hostile names and shapes, and checkpoints of every architecture as
``reprfn fuse`` writes them: one line and exit status 2 for the user's mistakes, nothing written."""

from __future__ import annotations

import pytest
import torch

import reprfn
from reprfn.checkpoint import load_model
from reprfn.cli import main
from reprfn.models import build

from .helpers import randomize


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("arch", ["rfdn", "imdn", "rfn-plain", "rfn-rfb2"])
def test_fused_checkpoints_of_one_form_archs_load(tmp_path, arch):
    """RFDN, IMDN and RFN have no RepBlocks, so ``fuse()`` returns the same network tagged deploy;
    the file it saves (``reprfn fuse``, and ``reprfn profile``'s memory child) must load."""
    model = randomize(build(arch, scale=2, channels=16, blocks=1)).eval()
    path = reprfn.save_model(model.fuse(), tmp_path / f"{arch}.safetensors")
    loaded = load_model(path)
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_ncnn_output_naming_a_folder_is_refused(tmp_path, capsys):
    weights = reprfn.save_model(randomize(build("rfdn", scale=2, channels=8, blocks=1)), tmp_path / "w.safetensors")
    folder = tmp_path / "models"
    folder.mkdir()
    for output in (f"{folder}/", str(folder), ""):
        code, err = run(["export", "-w", str(weights), "--format", "ncnn", "-o", output], capsys)
        assert code == 2 and len(err) == 1, (output, err)
        assert err[0].startswith(f"reprfn: error: {output!r} names a folder (or nothing), not the ncnn pair"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "w.safetensors"] and not any(folder.iterdir())


@pytest.mark.parametrize("shape, words", [
    ("4x32x32", "--input 4x32x32: 4 channel(s), but the model takes 3"),
    ("1x3x16", "--input 1x3x16: 1 channel(s), but the model takes 3"),
    ("3x14x40", "--input 3x14x40: sides of at least 15 pixels are needed"),
    ("3x1000000x1000000", "--input 3x1000000x1000000: one forward needs about"),
])
def test_profile_input_the_model_cannot_take_is_one_line(capsys, shape, words):
    code, err = run(["profile", "rfdn", "--input", shape, "--runtime", "--runs", "1", "--warmup", "0"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"reprfn: error: {words}"), err


@pytest.mark.parametrize(("name", "flags", "words"), [
    ("m.pt", ["--fp16"], "TorchScript export is float32 only; drop --fp16, or write .onnx or ncnn"),
    ("m.ts", ["--opset", "13"], "--opset applies to ONNX only, and this writes torchscript; drop --opset"),
    ("m.param", ["--opset", "13"], "--opset applies to ONNX only, and this writes ncnn; drop --opset"),
])
def test_a_flag_the_format_does_not_use_is_refused(tmp_path, capsys, name, flags, words):
    """``export -o m.pt --fp16`` wrote a float32 TorchScript file with exit 0, and ``--opset`` was
    dropped without a word for TorchScript and ncnn: now one line, before the model is loaded."""
    out = tmp_path / name
    code, err = run(["export", "-o", str(out), *flags], capsys)
    assert code == 2 and err == [f"reprfn: error: {out}: {words}"], err
    assert list(tmp_path.iterdir()) == []
