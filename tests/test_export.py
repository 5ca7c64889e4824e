"""Export: ONNX parity with PyTorch on natural image content, dynamic shapes, metadata, float16,
the standalone run, the ONNX Runtime engine, TorchScript, and the missing-onnxruntime error."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import reprfn
from reprfn.export import (
    CHECK_SHAPES,
    TRACE_SIZE,
    ExportError,
    export_onnx,
    export_torchscript,
    image_batch,
    parity,
    verify_standalone,
)
from reprfn.runtime.engines import Engine
from reprfn.runtime.onnx import OnnxEngine, open_onnx
from tests.helpers import randomize

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx / onnxruntime not installed (extra 'onnx')")
BUNDLED_X4 = Path(reprfn.__file__).parent / "weights" / "reprfn_x4.safetensors"
# (batch, height, width): odd, non-square, none of them the traced size
SIZES = [(1, 17, 23), (1, 40, 31), (1, 64, 64), (3, 23, 17)]
# torch.jit.load is deprecated in recent torch (and still works); export_torchscript is tested anyway
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning")


def tiny(scale: int, in_channels: int = 3, seed: int = 0) -> reprfn.models.SRModel:
    """A small RepRFN in training form with random but moderate weights."""
    model = reprfn.build("reprfn", scale=scale, in_channels=in_channels, channels=8, blocks=1, esa_channels=4)
    return randomize(model, seed=seed).eval()


@pytest.fixture(scope="module")
def x4() -> reprfn.models.SRModel:
    if not BUNDLED_X4.is_file():
        pytest.skip("bundled x4 weights not present")
    return reprfn.load_model(BUNDLED_X4)


def test_check_shapes_are_not_the_traced_shape() -> None:
    assert all((h, w) != TRACE_SIZE for _, h, w in [*CHECK_SHAPES, *SIZES])
    x = image_batch(2, 37, 53)
    assert x.shape == (2, 3, 37, 53) and 0 <= x.min() and x.max() <= 1 and not torch.equal(x[0], x[1])


@needs_onnx
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_onnx_matches_torch_on_odd_sizes(tmp_path: Path, scale: int) -> None:
    model = tiny(scale, seed=scale)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.path == tmp_path / "m.onnx" and report.path.is_file()
    assert report.opset == 17 and not report.fp16 and report.exporter == "torchscript"
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert [s[2:] for s in report.shapes_checked] == [s[1:] for s in CHECK_SHAPES]
    # the caller's model is untouched: still training form, same weights
    assert model.form == "train" and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    onnx_model = OnnxEngine.from_file(report.path)
    diff, shapes = parity(onnx_model, model, SIZES)  # against the training-form model itself
    assert diff <= 1e-4, diff
    assert shapes == [(n, 3, h, w) for n, h, w in SIZES]
    out = onnx_model(image_batch(3, 23, 17))
    assert out.shape == (3, 3, 23 * scale, 17 * scale) and out.dtype == torch.float32


@needs_onnx
def test_onnx_file_layout_and_metadata(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto

    model = tiny(3)
    path = export_onnx(model, tmp_path / "m.onnx", opset=17).path
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["format"] == "reprfn" and meta["version"] == reprfn.__version__
    assert (meta["arch"], meta["scale"], meta["channels"], meta["blocks"]) == ("reprfn", "3", "8", "1")
    assert (meta["in_channels"], meta["esa_channels"]) == ("3", "4")
    assert (meta["form"], meta["precision"]) == ("deploy", "float32")
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    for value, names in ((proto.graph.input[0], ("batch", "height", "width")),
                         (proto.graph.output[0], ("batch", "out_height", "out_width"))):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
        dims = value.type.tensor_type.shape.dim
        assert [dims[i].dim_param for i in (0, 2, 3)] == list(names) and dims[1].dim_value == 3
    # the fused form: one Conv per RepBlock (3), + fea, block conv, lr, upsampler, 5 in ESA
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == 3 + 4 + 5
    assert any(n.op_type == "Resize" for n in proto.graph.node)


@needs_onnx
def test_esa_resize_follows_the_input_size(tmp_path: Path) -> None:
    """The bilinear resize in ESA reads its size from the input: shapes far from the traced one."""
    model = tiny(2)
    onnx_model = OnnxEngine.from_file(export_onnx(model, tmp_path / "m.onnx").path)
    for n, h, w in [(1, 15, 15), (2, 101, 19), (1, 19, 150)]:
        x = image_batch(n, h, w)
        with torch.no_grad():
            want = model(x)
        got = onnx_model(x)
        assert got.shape == (n, 3, 2 * h, 2 * w)
        assert (got - want).abs().max() <= 1e-4


@needs_onnx
def test_greyscale_model(tmp_path: Path) -> None:
    model = tiny(2, in_channels=1)
    report = export_onnx(model, tmp_path / "g.onnx")
    assert report.max_abs_diff <= 1e-4 and report.shapes_checked[0][1] == 1
    onnx_model = OnnxEngine.from_file(report.path)
    assert onnx_model.info.in_channels == 1
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        onnx_model(image_batch(1, 20, 20))


@needs_onnx
def test_float16_export(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto

    model = tiny(4)
    fp32 = export_onnx(model, tmp_path / "m.onnx")
    fp16 = export_onnx(model, tmp_path / "m16.onnx", fp16=True)
    assert fp16.fp16 and fp16.max_abs_diff is not None and fp16.max_abs_diff <= 1e-2
    proto = onnx.load(str(fp16.path))
    weights = [t for t in proto.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # float32 I/O
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {p.key: p.value for p in proto.metadata_props}["precision"] == "float16"
    assert fp16.path.stat().st_size < fp32.path.stat().st_size
    onnx_model = OnnxEngine.from_file(fp16.path)
    assert onnx_model.fp16
    diff, _ = parity(onnx_model, model, SIZES)
    assert diff <= 1e-2


@needs_onnx
def test_runs_without_reprfn(tmp_path: Path) -> None:
    path = export_onnx(tiny(3), tmp_path / "m.onnx", check=False).path
    result = verify_standalone(path, size=(23, 17))
    assert result["output"] == [1, 3, 69, 51] and result["dtype"] == "float32" and result["finite"]
    assert result["imported"] == [] and result["scale"] == "3"


@needs_onnx
def test_failed_check_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(tiny(2), path, tolerance=-1.0)  # no difference passes
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary left behind


@needs_onnx
def test_onnx_engine_runs_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import reprfn.export as export

    model = tiny(3)
    onnx_model = open_onnx(model, directory=tmp_path)
    info = onnx_model.info
    assert (info.scale, info.in_channels, info.arch, info.form) == (3, 3, "reprfn", "deploy")
    assert isinstance(onnx_model, Engine) and not onnx_model.exact_tiles and onnx_model.metadata["channels"] == "8"
    x = image_batch(2, 29, 41)
    with torch.no_grad():
        want = model(x)
    got = onnx_model(x)
    assert got.shape == want.shape and got.dtype == torch.float32 and (got - want).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="expected a"):
        onnx_model(x[0])

    files = list(tmp_path.glob("*.onnx"))
    assert len(files) == 1 and files[0].name.startswith("reprfn_x3_") and onnx_model.path == files[0]
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: pytest.fail("cache not used"))
    again = open_onnx(model, directory=tmp_path)
    assert again.path == files[0] and torch.equal(again(x), got)


@needs_onnx
def test_not_a_reprfn_onnx_file(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])])
    onnx.save(helper.make_model(graph), str(tmp_path / "id.onnx"))
    with pytest.raises(ExportError, match="not a reprfn ONNX export"):
        OnnxEngine.from_file(tmp_path / "id.onnx")
    with pytest.raises(ExportError, match="no such file"):
        OnnxEngine.from_file(tmp_path / "missing.onnx")


def test_missing_onnxruntime_gives_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    expected = r"^onnxruntime is not installed: pip install 'reprfn\[onnx\]'$"
    with pytest.raises(ExportError, match=expected):
        OnnxEngine.from_file(tmp_path / "m.onnx")
    with pytest.raises(ExportError, match=expected):
        open_onnx(tiny(2), directory=tmp_path)
    if HAVE_ONNX:
        with pytest.raises(ExportError, match=expected):
            export_onnx(tiny(2), tmp_path / "m.onnx")
        assert not (tmp_path / "m.onnx").exists()


def test_torchscript_matches_eager_on_other_sizes(tmp_path: Path) -> None:
    model = tiny(3)
    path = export_torchscript(model, tmp_path / "m.pt")
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    loaded = torch.jit.load(str(path))
    diff, _ = parity(loaded, model, SIZES + [(2, 15, 15)])
    assert diff <= 1e-5, diff


@needs_onnx
def test_bundled_x4_model(tmp_path: Path, x4: reprfn.models.SRModel) -> None:
    """Realistic weights: float32 within 1e-4, float16 within 1e-2, TorchScript within 1e-5."""
    fp32 = export_onnx(x4, tmp_path / "x4.onnx")
    fp16 = export_onnx(x4, tmp_path / "x4_fp16.onnx", fp16=True)
    assert fp32.max_abs_diff <= 1e-4 and fp16.max_abs_diff <= 1e-2
    sizes = [(1, 17, 23), (1, 40, 31)]
    assert parity(OnnxEngine.from_file(fp32.path), x4, sizes)[0] <= 1e-4
    assert parity(OnnxEngine.from_file(fp16.path), x4, sizes)[0] <= 1e-2
    ts = export_torchscript(x4, tmp_path / "x4.pt")
    assert parity(torch.jit.load(str(ts)), x4, sizes)[0] <= 1e-5
    assert verify_standalone(fp16.path)["output"] == [1, 3, 92, 68]


# ------------------------------------------------------------------------------- `reprfn export`


def _photo_batch() -> torch.Tensor:
    """Two different crops of the bundled photo (R, G, B distinct), of sizes neither traced nor checked."""
    from tests.helpers import asymmetric_photo

    img = torch.from_numpy(asymmetric_photo()).permute(2, 0, 1).float() / 255
    return torch.stack([img[:, :33, :45], img[:, 3:, 7:]])


def _onnxruntime_run(path: Path, x: torch.Tensor) -> torch.Tensor:
    """The file in a plain ONNX Runtime session, as docs/export.md runs it without reprfn."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(["output"], {"input": x.numpy()})[0])


@needs_onnx
def test_cli_export_onnx_runs_and_matches_pytorch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from reprfn.checkpoint import bundled_weights
    from reprfn.cli import main

    out = tmp_path / "x2.onnx"
    assert main(["export", "-s", "2", "-o", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: ONNX opset 17, float32; max |onnxruntime - torch| = ") and "\n" not in line
    assert float(line.split("= ")[1].split()[0]) <= 1e-4
    model = reprfn.load_model(bundled_weights(2))
    x = _photo_batch()[:1]
    with torch.no_grad():
        want = model(x)
    got = _onnxruntime_run(out, x)
    assert got.shape == (1, 3, 66, 90) and (got - want).abs().max().item() <= 1e-4  # docs/export.md: 1e-4
    assert OnnxEngine.from_file(out).info.scale == 2


@needs_onnx
def test_cli_export_onnx_fp16_of_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from reprfn.cli import main

    model = tiny(3)
    reprfn.save_model(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "tiny_fp16.onnx"
    assert main(["export", "-w", str(tmp_path / "tiny.safetensors"), "-o", str(out), "--fp16"]) == 0
    assert "float16 weights" in capsys.readouterr().out
    x = _photo_batch()[1:]
    with torch.no_grad():
        want = model(x)
    got = _onnxruntime_run(out, x)
    assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-2  # float16: 1e-2
    assert OnnxEngine.from_file(out).metadata["precision"] == "float16"


def test_cli_export_torchscript_runs_and_matches_pytorch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from reprfn.cli import main

    model = tiny(3, seed=5)  # training form: the CLI fuses it on the way
    reprfn.save_model(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "tiny.pt"
    assert main(["export", "-w", str(tmp_path / "tiny.safetensors"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: TorchScript, reprfn x3, fused"
    loaded = torch.jit.load(str(out))
    x = _photo_batch()  # neither of the traced size
    with torch.no_grad():
        for one in (x[:1], x[1:]):
            got, want = loaded(one), model(one)
            assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-5  # docs/export.md: 1e-5


def test_cli_export_refuses_an_unknown_suffix(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from reprfn.cli import main

    assert main(["export", "-s", "2", "-o", str(tmp_path / "model.txt")]) == 2
    err = capsys.readouterr().err
    assert err == (f"reprfn: error: {tmp_path / 'model.txt'}: "
                   "name the output .onnx (ONNX), .pt / .ts (TorchScript) or .param (ncnn)\n")
    assert list(tmp_path.iterdir()) == []
