"""``reprfn upscale`` and ``reprfn.upscale``: image kinds, batches, bad inputs, sharding, backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reprfn
from reprfn.api import upscale_alpha
from reprfn.checkpoint import bundled_weights
from reprfn.cli import main
from reprfn.images import load_picture

SAMPLE = bundled_weights(4).parent.parent / "assets" / "astronaut.png"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.array(Image.open(SAMPLE).convert("RGB"))[40:72, 100:140]  # 32x40 crop


@pytest.fixture
def folder(tmp_path, photo) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(photo).save(d / "a.png")
    Image.fromarray(photo[:20]).save(d / "b.jpg", quality=95)
    Image.fromarray(photo[..., 1]).save(d / "grey.png")
    return d


# ------------------------------------------------------------------------------------------- API


def test_api_numpy_kinds(photo):
    out = reprfn.upscale(photo, scale=2)
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    grey = reprfn.upscale(photo[..., 0], scale=3)
    assert grey.shape == (96, 120) and grey.dtype == np.uint8
    wide = reprfn.upscale(photo.astype(np.uint16) * 257, scale=2)
    assert wide.dtype == np.uint16 and wide.shape == (64, 80, 3)
    # 16-bit is processed at 16 bits: its result differs from the 8-bit one by less than a level
    assert np.abs(wide.astype(float) / 257 - out).max() <= 1.0
    alpha = np.linspace(0, 255, 32 * 40).reshape(32, 40).astype(np.uint8)
    rgba = reprfn.upscale(np.dstack([photo, alpha]), scale=2)
    assert rgba.shape == (64, 80, 4)
    np.testing.assert_array_equal(rgba[..., 3], upscale_alpha(alpha, 2))
    np.testing.assert_array_equal(rgba[..., :3], out)  # colour does not depend on alpha


def test_api_pil_modes(photo):
    base = Image.fromarray(photo)
    for mode, expected in [("RGB", "RGB"), ("L", "L"), ("RGBA", "RGBA"), ("LA", "LA"), ("P", "RGB"), ("CMYK", "RGB")]:
        out = reprfn.upscale(base.convert(mode), scale=2)
        assert out.mode == expected and out.size == (80, 64), mode
    sixteen = Image.fromarray(photo[..., 0].astype(np.uint16) * 257)
    assert reprfn.upscale(sixteen, scale=2).mode in ("I;16", "I;16L")


def test_api_tensors_and_models(photo, tmp_path):
    t = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    assert reprfn.upscale(t, scale=4).shape == (3, 128, 160)
    assert reprfn.upscale(t[None].repeat(2, 1, 1, 1), scale=4).shape == (2, 3, 128, 160)
    model = reprfn.load_model(bundled_weights(3))
    via_model = reprfn.upscale(photo, scale=3, model=model)
    via_path = reprfn.upscale(photo, scale=3, model=str(bundled_weights(3)))
    np.testing.assert_array_equal(via_model, via_path)
    with pytest.raises(ValueError, match="x3, but x2"):
        reprfn.upscale(photo, scale=2, model=model)
    with pytest.raises(TypeError):
        reprfn.upscale([[1, 2]], scale=2)


def test_api_tiles_match_whole(photo):
    big = np.array(Image.open(SAMPLE).convert("RGB"))[:120, :150]
    whole = reprfn.upscale(big, scale=4, tile=0).astype(int)
    tiled = reprfn.upscale(big, scale=4, tile=42).astype(int)
    assert np.abs(whole - tiled).max() <= 1


# ------------------------------------------------------------------------------------------- CLI


def test_cli_single_file(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "p.png")
    assert main(["upscale", "-i", str(tmp_path / "p.png"), "-o", str(tmp_path / "big.png"), "-s", "2", "--quiet"]) == 0
    assert Image.open(tmp_path / "big.png").size == (80, 64)


def test_cli_folder_keeps_kinds_and_names(folder, tmp_path):
    out = tmp_path / "out"
    assert main(["upscale", "-i", str(folder), "-o", str(out), "-s", "2", "--suffix", "_x2", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png", "b_x2.jpg", "grey_x2.png"]
    assert Image.open(out / "grey_x2.png").mode == "L"
    assert Image.open(out / "b_x2.jpg").format == "JPEG"
    assert main(["upscale", "-i", str(folder / "*.png"), "-o", str(out), "-s", "2", "--ext", "webp", "--quiet"]) == 0
    assert (out / "a.webp").exists() and (out / "grey.webp").exists() and not (out / "b.webp").exists()


def test_cli_batch_ends_with_a_summary_line(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["upscale", "-i", str(folder), "-o", str(out), "-s", "2"]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"3 of 3 images upscaled x2 into {out}"


def test_cli_alpha_and_16_bit(tmp_path, photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    assert main(["upscale", "-i", str(tmp_path / "alpha.png"), "-o", str(tmp_path / "o.png"), "-s", "2",
                 "--quiet"]) == 0
    out = load_picture(tmp_path / "o.png")
    assert out.alpha is not None and (out.alpha == 200).all()
    sixteen = Image.fromarray(photo[..., 0].astype(np.uint16) * 257)
    sixteen.save(tmp_path / "g16.png")
    assert main(["upscale", "-i", str(tmp_path / "g16.png"), "-o", str(tmp_path / "g16_x2.png"), "-s", "2",
                 "--quiet"]) == 0
    assert load_picture(tmp_path / "g16_x2.png").pixels.dtype == np.uint16


def test_cli_bad_inputs_do_not_stop_the_batch(folder, tmp_path, capsys):
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image at all")
    good = (folder / "a.png").read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    code = main(["upscale", "-i", str(folder), str(tmp_path / "nothing*.png"), "-o", str(out), "-s", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    for name in ("empty.png", "text.png", "cut.png", "nothing*.png"):
        assert sum(name in line for line in lines) == 1, (name, lines)
    assert len(lines) == 4
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg", "grey.png"]  # no partial files


def test_cli_unwritable_output_and_overwriting_inputs(folder, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)  # a directory where a file should go
    code = main(["upscale", "-i", str(folder), "-o", str(out), "-s", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "a.png" in err and err.count("\n") == 1
    assert (out / "b.jpg").exists() and not any(p.name.endswith(".tmp") for p in out.iterdir())
    code = main(["upscale", "-i", str(folder / "a.png"), "-o", str(folder), "-s", "2", "--quiet"])
    assert code == 2 and "would overwrite an input" in capsys.readouterr().err


def test_cli_skip_existing(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"keep me")
    assert main(["upscale", "-i", str(folder), "-o", str(out), "-s", "2", "--skip-existing", "--quiet"]) == 0
    assert (out / "a.png").read_bytes() == b"keep me" and (out / "grey.png").exists()


def test_cli_decompression_bomb_guard(tmp_path, photo, capsys):
    Image.fromarray(photo).save(tmp_path / "p.png")
    code = main(["upscale", "-i", str(tmp_path / "p.png"), "-o", str(tmp_path / "o.png"), "-s", "2",
                 "--max-pixels", "100", "--quiet"])
    assert code == 2 and "p.png" in capsys.readouterr().err and not (tmp_path / "o.png").exists()
    assert main(["upscale", "-i", str(tmp_path / "p.png"), "-o", str(tmp_path / "o.png"), "-s", "2",
                 "--max-pixels", "0", "--quiet"]) == 0


def test_cli_onnxruntime_backend_matches_torch(tmp_path, photo, monkeypatch, engine_cache):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.setenv("REPRFN_CACHE", str(engine_cache))  # the export cache, not the user's
    Image.fromarray(photo).save(tmp_path / "p.png")
    for backend in ("torch", "onnxruntime"):
        assert main(["upscale", "-i", str(tmp_path / "p.png"), "-o", str(tmp_path / f"{backend}.png"), "-s", "2",
                     "--backend", backend, "--device", "cpu", "--tile", "0", "--quiet"]) == 0
    a = np.array(Image.open(tmp_path / "torch.png")).astype(int)
    b = np.array(Image.open(tmp_path / "onnxruntime.png")).astype(int)
    assert np.abs(a - b).max() <= 1


def test_torchrun_shards_the_inputs(folder, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(30500 + os.getpid() % 1000), "-m", "reprfn", "upscale",
                           "-i", str(folder), "-o", str(out), "-s", "2", "--quiet"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg", "grey.png"]
