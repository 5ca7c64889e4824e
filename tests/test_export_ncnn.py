"""ncnn export: the .param/.bin pair and nothing else, blob names the ncnn apps look for, outputs
equal to PyTorch at sizes other than the traced one (in ncnn's own Python binding), float16
weights, and the refusals: a failed check or conversion writes nothing and leaves no temporary
files, missing packages and unwritable targets are one line."""

from __future__ import annotations

import importlib.util
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import reprfn
from reprfn.errors import ExportError
from reprfn.export import TRACE_SIZE, image_batch
from reprfn.export_ncnn import export_ncnn, ncnn_paths, rename_blobs
from tests.helpers import randomize

HAVE_NCNN = all(importlib.util.find_spec(m) is not None for m in ("pnnx", "ncnn"))
needs_ncnn = pytest.mark.skipif(not HAVE_NCNN, reason="pnnx / ncnn not installed (extra 'ncnn')")
INSTALL_LINE = r"is not installed: pip install 'reprfn\[ncnn\]'$"


def tiny(scale: int, seed: int = 0) -> reprfn.models.SRModel:
    """A small RepRFN in training form with random but moderate weights (fused by the export)."""
    model = reprfn.build("reprfn", scale=scale, channels=8, blocks=1, esa_channels=4)
    return randomize(model, seed=seed).eval()


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder temporary directories go to (pnnx's working folder); checked empty afterwards."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One float32 export of a small x3 model, shared by the tests that only read it."""
    out, root = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("tmp")
    model = tiny(3, seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(root))
        report = export_ncnn(model, out / "tiny-x3")
    yield {"report": report, "model": model, "out": out, "tmp": root}


def run_ncnn(param: Path, weights: Path, x: torch.Tensor) -> torch.Tensor:
    """One (C, H, W) image through ncnn as an app would: blob names "data" and "output", float32."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
    arr = np.ascontiguousarray(x.numpy(), dtype=np.float32)  # ncnn.Mat wraps it: keep it referenced
    ex = net.create_extractor()
    assert ex.input("data", ncnn.Mat(arr)) == 0
    ret, out = ex.extract("output")
    assert ret == 0
    return torch.from_numpy(np.array(out))


# ------------------------------------------------------------------------------ what is written


@needs_ncnn
def test_writes_the_pair_and_nothing_else(exported: dict[str, Any]) -> None:
    report = exported["report"]
    assert sorted(p.name for p in exported["out"].iterdir()) == ["tiny-x3.bin", "tiny-x3.param"]
    assert list(exported["tmp"].iterdir()) == []  # traced .pt, *.pnnx.*, *_pnnx.py, *_ncnn.py: all gone
    assert (report.param, report.bin) == ncnn_paths(exported["out"] / "tiny-x3.param")
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4 and not report.fp16
    assert all(shape[-2:] != TRACE_SIZE for shape in report.shapes_checked)
    assert report.summary().startswith(f"{report.param} + tiny-x3.bin: ncnn, x3, float32, blobs data -> output; ")


@needs_ncnn
def test_blob_names_and_a_size_free_resize(exported: dict[str, Any]) -> None:
    import ncnn

    text = exported["report"].param.read_text()
    net = ncnn.Net()
    assert net.load_param(str(exported["report"].param)) == 0
    assert (net.input_names(), net.output_names()) == (["data"], ["output"])
    assert re.search(r"^Input\s+data\s+0 1 data\b", text, re.M) and not re.search(r"\b(in0|out0)\b", text)
    interp = [line.split() for line in text.splitlines() if line.startswith("Interp")]
    assert interp and all(fields[2] == "2" for fields in interp)  # size read from a reference blob, not fixed


@needs_ncnn
@pytest.mark.parametrize("size", [(45, 33), (70, 58)])
def test_outputs_equal_pytorch_at_two_sizes(exported: dict[str, Any], size: tuple[int, int]) -> None:
    x = image_batch(1, *size)
    with torch.no_grad():
        want = exported["model"](x)[0]
    got = run_ncnn(exported["report"].param, exported["report"].bin, x[0])
    assert got.shape == want.shape == (3, 3 * size[0], 3 * size[1])
    assert (got - want).abs().max().item() <= 1e-4  # docs/export.md: 1e-4, as ONNX


@needs_ncnn
def test_float16_weights(tmp_path: Path, scratch: Path, exported: dict[str, Any]) -> None:
    report = export_ncnn(exported["model"], tmp_path / "tiny-x3-fp16.param", fp16=True)
    fp32 = exported["report"]
    assert report.fp16 and "float16 weights" in report.summary()
    assert report.param.read_text() == fp32.param.read_text()
    assert report.bin.stat().st_size < 0.55 * fp32.bin.stat().st_size
    assert report.max_abs_diff is not None and fp32.max_abs_diff is not None
    assert 10 * fp32.max_abs_diff < report.max_abs_diff <= 1e-2
    assert list(scratch.iterdir()) == []


# ------------------------------------------------------------------------------ refusals


@needs_ncnn
def test_failed_check_keeps_the_old_pair(tmp_path: Path, scratch: Path) -> None:
    param, weights = ncnn_paths(tmp_path / "m")
    param.write_bytes(b"old param")
    weights.write_bytes(b"old bin")
    with pytest.raises(ExportError, match=r"ncnn output differs from PyTorch by .*; nothing written$"):
        export_ncnn(tiny(2), param, tolerance=-1.0)  # no difference passes
    assert (param.read_bytes(), weights.read_bytes()) == (b"old param", b"old bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.param", "tmp"]
    assert list(scratch.iterdir()) == []


@needs_ncnn
@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for pnnx")
def test_a_failing_pnnx_is_one_line_and_leaves_nothing(tmp_path: Path, scratch: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import pnnx

    fake = tmp_path / "pnnx"
    fake.write_text("#!/bin/sh\necho half > model.ncnn.param\necho 'first line' >&2\necho 'it broke' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(pnnx, "EXEC_PATH", str(fake))
    with pytest.raises(ExportError, match=r"^pnnx could not convert the model \(exit status 3: it broke\)$"):
        export_ncnn(tiny(2), tmp_path / "out" / "m")
    assert not (tmp_path / "out").exists() and list(scratch.iterdir()) == []


def test_missing_packages_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    from reprfn.cli import main

    for name in ("pnnx", "ncnn") if HAVE_NCNN else ("pnnx",):  # without pnnx, pnnx is missed first
        with monkeypatch.context() as mp:
            mp.setitem(sys.modules, name, None)  # `import NAME` now raises ImportError
            with pytest.raises(ExportError, match=f"^{name} {INSTALL_LINE}"):
                export_ncnn(tiny(2), tmp_path / "m")
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "pnnx", None)
        assert main(["export", "--format", "ncnn", "-s", "2", "-o", str(tmp_path / "x2")]) == 2
    assert re.fullmatch(f"reprfn: error: pnnx {INSTALL_LINE[:-1]}\n", capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_an_unwritable_target_and_mismatched_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from reprfn.cli import main

    (tmp_path / "afile").write_text("not a folder")
    target = tmp_path / "afile" / "x2"
    assert main(["export", "--format", "ncnn", "-s", "2", "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"reprfn: error: {target}.param: cannot write the export, {tmp_path / 'afile'} is not a directory\n"
    for fmt, name, wanted in (("ncnn", "m.onnx", "NAME or NAME.param"), ("onnx", "m.param", "NAME.onnx"),
                              ("torchscript", "m", "NAME.pt or NAME.ts")):
        assert main(["export", "--format", fmt, "-s", "2", "-o", str(tmp_path / name)]) == 2
        assert capsys.readouterr().err == f"reprfn: error: {tmp_path / name}: --format {fmt} writes {wanted}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_rename_blobs_touches_only_blob_fields() -> None:
    text = ("7767517\n3 3\nInput                    in0                      0 1 in0\n"
            "Convolution              in0_conv                 1 1 in0 1 0=8 1=3\n"
            "PixelShuffle             ps                       1 1 1 out0 0=2\n")
    renamed = rename_blobs(text)
    assert renamed.splitlines()[2].split() == ["Input", "data", "0", "1", "data"]
    assert renamed.splitlines()[3].split()[1:5] == ["in0_conv", "1", "1", "data"]  # a layer name stays
    assert renamed.splitlines()[4].split()[5] == "output" and len(renamed) == len(text) + 5
    with pytest.raises(ExportError, match="no blob named out0"):
        rename_blobs(text.replace("out0", "2"))
    taken = text.replace("in0 1 0=8", "in0 data 0=8").replace("1 1 1 out0", "1 1 data out0")
    with pytest.raises(ExportError, match="'data', which the export reserves"):
        rename_blobs(taken)


# ------------------------------------------------------------------------------ `reprfn export`


@needs_ncnn
def test_cli_exports_the_bundled_x4(tmp_path: Path, scratch: Path, capsys: pytest.CaptureFixture) -> None:
    """The bundled model through the command line, replacing an earlier pair as every export does."""
    from reprfn.checkpoint import bundled_weights
    from reprfn.cli import main

    models = tmp_path / "models"
    models.mkdir()
    (models / "reprfn-x4.param").write_text("old")
    assert main(["export", "-o", str(models / "reprfn-x4.param")]) == 0  # .param: ncnn without --format
    line = capsys.readouterr().out
    assert line.startswith(f"{models / 'reprfn-x4.param'} + reprfn-x4.bin: ncnn, x4, float32, blobs data -> output")
    assert line.count("\n") == 1 and float(line.split("= ")[1].split()[0]) <= 1e-4
    assert sorted(p.name for p in models.iterdir()) == ["reprfn-x4.bin", "reprfn-x4.param"]
    assert list(scratch.iterdir()) == []
    model = reprfn.load_model(bundled_weights(4))
    x = image_batch(1, 52, 38)
    with torch.no_grad():
        want = model(x)[0]
    got = run_ncnn(models / "reprfn-x4.param", models / "reprfn-x4.bin", x[0])
    assert got.shape == (3, 208, 152) and (got - want).abs().max().item() <= 1e-4
