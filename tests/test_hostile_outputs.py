"""Outputs that would be lost or silently replaced: collisions, bad ``-o`` names, API values the
command line refuses, ``--recursive`` mirroring, sharded batches, ``eval --save-dir``.

Every refusal must happen before any work: one line on stderr naming the inputs at fault, exit
status 2, and the output tree exactly as it was.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import reprfn
from reprfn.api import check_pad, check_scale, check_tile
from reprfn.checkpoint import bundled_weights, load_model
from reprfn.cli import main
from reprfn.errors import UsageError
from reprfn.evaluate import Bicubic, evaluate_dataset
from reprfn.outputs import refuse_collisions

FAST = ["-s", "2", "--backend", "torch", "--device", "cpu", "--tile", "0", "--quiet"]


def _image(path: Path, seed: int, size: tuple[int, int] = (24, 24)) -> Path:
    """A small random RGB image (each seed a different one), in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its bytes: what "nothing written, nothing changed" compares."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _upscale(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main(["upscale", *argv, *FAST])
    return code, capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------------ the check itself


def test_refuse_collisions_names_both_inputs():
    refuse_collisions([("in/a.png", "out/a.png"), ("in/b.png", "out/b.png")])
    refuse_collisions([("in/a.png", "out/a.png"), ("in/./a.png", "out/a.png")])  # one input, twice
    with pytest.raises(UsageError, match=r"in/a\.jpg and in/a\.png would both be written to out/a\.png"):
        refuse_collisions([("in/a.jpg", "out/a.png"), ("in/a.png", "out/a.png")])
    with pytest.raises(UsageError, match=r"in/a\.png: would overwrite an input \(in/a\.png\)"):
        refuse_collisions([("in/a.png", "in/a.png")])
    with pytest.raises(UsageError, match="would overwrite an input"):  # the output of one is another
        refuse_collisions([("in/a.jpg", "in/a.png"), ("in/a.png", "out/a.png")])
    # A.png and a.png are two files on Linux, one on the usual macOS and Windows file systems
    refuse_collisions([("x/A.png", "out/A.png"), ("y/a.png", "out/a.png")], fold_case=False)
    with pytest.raises(UsageError, match="x/A.png and y/a.png would both be written"):
        refuse_collisions([("x/A.png", "out/A.png"), ("y/a.png", "out/a.png")], fold_case=True)


# ------------------------------------------------------------------------ reprfn upscale


def test_two_inputs_one_output_refused_before_any_work(tmp_path, capsys):
    src = tmp_path / "in"
    _image(src / "a.png", 1), _image(src / "a.jpg", 2), _image(src / "b.png", 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"an older result")
    before = _tree(tmp_path)
    code, err = _upscale(["-i", str(src), "-o", str(out), "--ext", "png"], capsys)
    assert code == 2 and len(err) == 1, err
    assert str(src / "a.jpg") in err[0] and str(src / "a.png") in err[0] and str(out / "a.png") in err[0]
    assert _tree(tmp_path) == before  # b.png, which is fine, is not written either


def test_same_name_in_two_folder_inputs_refused(tmp_path, capsys):
    _image(tmp_path / "x" / "img.png", 1), _image(tmp_path / "y" / "img.png", 2)
    for extra in ([], ["--recursive"]):  # mirroring is relative to each folder given: still one name
        code, err = _upscale(["-i", str(tmp_path / "x"), str(tmp_path / "y"), "-o", str(tmp_path / "out"),
                              *extra], capsys)
        assert code == 2 and len(err) == 1, err
        assert str(tmp_path / "x" / "img.png") in err[0] and str(tmp_path / "y" / "img.png") in err[0]
        assert not (tmp_path / "out").exists()


def test_recursive_mirrors_the_tree(tmp_path, capsys):
    src = tmp_path / "photos"
    inputs = [_image(src / rel, seed) for seed, rel in enumerate(["top.png", "x/img.png", "y/img.png", "y/z/deep.jpg"])]
    out = tmp_path / "out"
    code, err = _upscale(["-i", str(src), "-o", str(out), "--recursive", "--suffix", "_x2"], capsys)
    assert code == 0 and err == []
    assert sorted(_tree(out)) == ["top_x2.png", "x/img_x2.png", "y/img_x2.png", "y/z/deep_x2.jpg"]
    # each output is the upscale of its own input (not of its namesake in the other folder)
    for rel in ("x/img", "y/img"):
        expected = reprfn.upscale(np.array(Image.open(src / f"{rel}.png")), scale=2, backend="torch", tile=0)
        np.testing.assert_array_equal(np.array(Image.open(out / f"{rel}_x2.png")), expected)
    assert _tree(src) == {str(p.relative_to(src)): p.read_bytes() for p in inputs}  # inputs untouched


def test_folders_leave_hidden_files_and_folders_out(tmp_path):
    """macOS's ``._x.png`` companions, ``.thumbnails`` and ``.git`` are not the user's photos; a
    hidden file named on its own is read."""
    from reprfn.api import collect_inputs

    src = tmp_path / "photos"
    for rel in ["a.png", "._a.png", ".thumbnails/t.png", "sub/b.png", "sub/.cache/c.png", ".git/d.jpg"]:
        _image(src / rel, 0)
    for recursive, want in ((False, ["a.png"]), (True, ["a.png", "sub/b.png"])):
        files, errors = collect_inputs([str(src)], recursive=recursive)
        assert sorted(str(p.relative_to(src)) for p in files) == want and errors == []
    files, _ = collect_inputs([str(src / "._a.png"), str(src / ".thumbnails")])
    assert [p.name for p in files] == ["._a.png", "t.png"]  # named: a hidden file, a hidden folder's own contents


def test_recursive_skip_existing_keeps_what_is_there(tmp_path, capsys):
    src = tmp_path / "photos"
    _image(src / "x" / "img.png", 1), _image(src / "y" / "img.png", 2)
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    (out / "x" / "img.png").write_bytes(b"keep me")
    code, err = _upscale(["-i", str(src), "-o", str(out), "--recursive", "--skip-existing"], capsys)
    assert code == 0 and err == []
    assert (out / "x" / "img.png").read_bytes() == b"keep me"
    assert Image.open(out / "y" / "img.png").size == (48, 48)


def test_shards_refuse_the_same_batch(tmp_path, capsys, monkeypatch):
    """torchrun gives rank r the files r, r + world, ...: the check runs on the full list first,
    so a collision between files of two ranks is refused by both (only rank 0 says why)."""
    src = tmp_path / "in"
    _image(src / "a.jpg", 1), _image(src / "a.png", 2)
    before = _tree(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    lines = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        code, lines[rank] = _upscale(["-i", str(src), "-o", str(tmp_path / "out"), "--ext", "png"], capsys)
        assert code == 2
        # an output that is another rank's input: rank 0 holds a.jpg, whose a.png is rank 1's input
        code, _ = _upscale(["-i", str(src), "-o", str(src), "--ext", "png"], capsys)
        assert code == 2
    assert len(lines["0"]) == 1 and str(src / "a.jpg") in lines["0"][0] and str(src / "a.png") in lines["0"][0]
    assert lines["1"] == []
    assert _tree(tmp_path) == before


def test_shards_of_a_mirrored_tree_write_every_file_once(tmp_path, capsys, monkeypatch):
    src = tmp_path / "in"
    for seed, rel in enumerate(["x/img.png", "y/img.png", "z.png"]):
        _image(src / rel, seed)
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    written = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        before = set(_tree(out)) if out.exists() else set()
        code, err = _upscale(["-i", str(src), "-o", str(out), "--recursive"], capsys)
        assert code == 0 and err == []
        written.append(set(_tree(out)) - before)
    assert written[0] and written[1] and not written[0] & written[1]
    assert written[0] | written[1] == {"x/img.png", "y/img.png", "z.png"}


# ------------------------------------------------------------------------ what -o names


@pytest.mark.parametrize("single", [True, False])
def test_output_with_an_extension_not_written_is_refused(tmp_path, capsys, single):
    _image(tmp_path / "in" / "a.png", 1), _image(tmp_path / "in" / "b.png", 2)
    source = tmp_path / "in" / "a.png" if single else tmp_path / "in"
    before = _tree(tmp_path)
    code, err = _upscale(["-i", str(source), "-o", str(tmp_path / "out.gif")], capsys)
    assert code == 2 and len(err) == 1 and "out.gif" in err[0] and ".gif" in err[0], err
    assert not (tmp_path / "out.gif").exists() and _tree(tmp_path) == before


def test_output_named_like_a_file_for_a_folder_input_is_refused(tmp_path, capsys):
    _image(tmp_path / "in" / "a.png", 1)
    code, err = _upscale(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out.png")], capsys)
    assert code == 2 and len(err) == 1 and "out.png" in err[0] and "name a folder" in err[0], err
    assert not (tmp_path / "out.png").exists()


def test_ext_contradicting_the_output_file_is_refused(tmp_path, capsys):
    src = _image(tmp_path / "a.png", 1)
    code, err = _upscale(["-i", str(src), "-o", str(tmp_path / "big.png"), "--ext", "jpg"], capsys)
    assert code == 2 and len(err) == 1 and "--ext jpg" in err[0] and "big.png" in err[0], err
    assert not (tmp_path / "big.png").exists()
    code, err = _upscale(["-i", str(src), "-o", str(tmp_path / "big.jpeg"), "--ext", "jpg"], capsys)
    assert code == 0 and Image.open(tmp_path / "big.jpeg").format == "JPEG"


def test_folder_outputs_by_name(tmp_path, capsys):
    """A name that is no image file (``run.v2``), an existing folder, or a trailing separator is a
    folder, whatever its suffix."""
    src = _image(tmp_path / "a.png", 1)
    (tmp_path / "existing.png").mkdir()
    for out in ("run.v2", "existing.png", "slash.png/"):
        code, err = _upscale(["-i", str(src), "-o", f"{tmp_path}/{out}"], capsys)
        assert code == 0 and err == [], (out, err)
        assert Image.open(tmp_path / out / "a.png").size == (48, 48)


def test_negative_tile_pad_is_one_line(tmp_path, capsys):
    src = _image(tmp_path / "a.png", 1)
    code, err = _upscale(["-i", str(src), "-o", str(tmp_path / "o.png"), "--tile-pad", "-5"], capsys)
    assert code == 2 and err == ["reprfn: error: --tile-pad must be a number of pixels >= 0, got -5"]
    assert not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------------ the Python API


@pytest.mark.parametrize("kwargs, check", [
    ({"scale": 0}, lambda: check_scale(0)),
    ({"scale": 5}, lambda: check_scale(5)),
    ({"scale": True}, lambda: check_scale(True)),
    ({"tile": -3}, lambda: check_tile(-3)),
    ({"tile": 2.5}, lambda: check_tile(2.5)),
    ({"tile": "big"}, lambda: check_tile("big")),
    ({"pad": -1}, lambda: check_pad(-1)),
])
def test_api_refuses_what_the_command_line_refuses(kwargs, check):
    with pytest.raises(UsageError) as shared:
        check()
    img = np.zeros((8, 8, 3), np.uint8)
    # refused before any work: the checkpoint named (which does not exist) is never opened
    with pytest.raises(UsageError) as api:
        reprfn.upscale(img, **{"scale": 2, "model": "no-such-weights.safetensors", **kwargs})
    assert type(api.value) is type(shared.value) and str(api.value) == str(shared.value)


def test_cli_tile_messages_are_the_api_messages(tmp_path, capsys):
    src = _image(tmp_path / "a.png", 1)
    for bad in ("-3", "big"):
        with pytest.raises(UsageError) as shared:
            check_tile(bad, "--tile")
        code = main(["upscale", "-i", str(src), "-o", str(tmp_path / "o.png"), "--tile", bad, "--quiet"])
        assert code == 2 and capsys.readouterr().err == f"reprfn: error: {shared.value}\n"
    assert not (tmp_path / "o.png").exists()


def test_upscale_file_refuses_to_overwrite_its_input(tmp_path):
    src = _image(tmp_path / "a.png", 1)
    (tmp_path / "link.png").symlink_to(src)
    before = src.read_bytes()
    model = load_model(bundled_weights(2))
    for dst in (src, tmp_path / "link.png", tmp_path / "." / "a.png"):
        with pytest.raises(UsageError, match="would overwrite an input"):
            reprfn.upscale_file(model, src, dst)
    with pytest.raises(UsageError, match="tile must not be negative"):
        reprfn.upscale_file(model, src, tmp_path / "o.png", tile=-1)
    assert src.read_bytes() == before and not (tmp_path / "o.png").exists()
    assert reprfn.upscale_file(model, src, tmp_path / "o.png", tile=0) == tmp_path / "o.png"
    assert Image.open(tmp_path / "o.png").size == (48, 48)


def test_upscale_file_refuses_a_device_as_upscale_does(tmp_path):
    """``device="tpu"`` escaped as PyTorch's RuntimeError listing every device type it knows."""
    src = _image(tmp_path / "a.png", 1)
    model = load_model(bundled_weights(2))
    with pytest.raises(UsageError) as shared:
        reprfn.upscale(np.zeros((8, 8, 3), np.uint8), model=model, device="tpu")
    with pytest.raises(UsageError) as api:
        reprfn.upscale_file(model, src, tmp_path / "o.png", device="tpu")
    assert str(api.value) == str(shared.value) == "unknown device 'tpu'; use auto, cpu, cuda or mps"
    assert not (tmp_path / "o.png").exists()


def test_upscale_file_replaces_an_existing_output_only_when_asked(tmp_path):
    """As ``upscale_video``: an existing ``dst`` is refused (it was silently replaced), kept whole;
    ``overwrite=True`` replaces it once the new file is complete (the CLI's ``-o`` asks for that)."""
    src = _image(tmp_path / "a.png", 1)
    dst = tmp_path / "o.png"
    dst.write_bytes(b"keep me")
    model = load_model(bundled_weights(2))
    with pytest.raises(UsageError, match=r"o\.png: exists; pass overwrite=True to replace it"):
        reprfn.upscale_file(model, src, dst)
    assert dst.read_bytes() == b"keep me"
    assert reprfn.upscale_file(model, src, dst, overwrite=True) == dst
    assert Image.open(dst).size == (48, 48)


@pytest.mark.parametrize("suffix", [".png", ".tif"])  # newer Pillow turns a TIFF itself when it loads
def test_pil_exif_orientation_applied_as_for_files(tmp_path, suffix):
    """A photo taken sideways: the CLI reads the file upright; a PIL image of it must come out
    the same (and carry no orientation tag that would turn it again)."""
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / f"sideways{suffix}", exif=exif)
    assert main(["upscale", "-i", str(tmp_path / f"sideways{suffix}"), "-o", str(tmp_path / "cli.png"), *FAST]) == 0
    from_file = np.array(Image.open(tmp_path / "cli.png"))
    with Image.open(tmp_path / f"sideways{suffix}") as im:
        out = reprfn.upscale(im, scale=2, backend="torch", tile=0)
        upright = reprfn.upscale(ImageOps.exif_transpose(im), scale=2, backend="torch", tile=0)
    assert out.size == (32, 48) and out.getexif().get(0x0112) in (None, 1)
    np.testing.assert_array_equal(np.array(out), from_file)
    np.testing.assert_array_equal(np.array(out), np.array(upright))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")  # no tag: nothing turned
    assert reprfn.upscale(Image.open(buf), scale=2, backend="torch", tile=0).size == (48, 32)


def test_upscale_file_is_exported():
    assert "upscale_file" in reprfn.__all__ and reprfn.upscale_file is reprfn.api.upscale_file


# ------------------------------------------------------------------------ reprfn eval --save-dir


def test_eval_save_dir_collisions_refused_before_any_work(tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    _image(good / "a.png", 1)
    _image(bad / "a.png", 2), _image(bad / "a.bmp", 3)  # both would be saved as bad/a.png
    saved = tmp_path / "sr"
    code = main(["eval", "-w", "bicubic", "-s", "2", "-d", str(good), "-d", str(bad), "--save-dir", str(saved),
                 "--device", "cpu"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and captured.out == "", err
    assert str(bad / "a.bmp") in err[0] and str(bad / "a.png") in err[0]
    assert not saved.exists()  # not even the data set evaluated first


def test_eval_save_dir_over_the_data_set_refused(tmp_path, capsys):
    data = tmp_path / "data"
    _image(data / "a.png", 1)
    before = _tree(tmp_path)
    code = main(["eval", "-w", "bicubic", "-s", "2", "-d", str(data), "--save-dir", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "would overwrite an input" in err[0], err
    assert _tree(tmp_path) == before


def test_evaluate_dataset_refuses_collisions(tmp_path):
    _image(tmp_path / "d" / "a.png", 1), _image(tmp_path / "d" / "a.bmp", 2)
    with pytest.raises(UsageError, match="would both be written"):
        evaluate_dataset(Bicubic(2), tmp_path / "d", 2, save_dir=tmp_path / "sr")
    assert not (tmp_path / "sr").exists()
    result = evaluate_dataset(Bicubic(2), tmp_path / "d", 2)  # without saving, both are measured
    assert len(result.images) == 2


def test_an_output_under_a_file_is_refused_naming_it(tmp_path):
    """``-o afile/x.png`` where ``afile`` is a file: said so, before the image is decoded (was the
    mkdir's "File exists")."""
    src = _image(tmp_path / "a.png", 0)
    (tmp_path / "afile").write_text("")
    model = reprfn.load_model(bundled_weights(2))
    with pytest.raises(UsageError, match="afile is not a directory"):
        reprfn.upscale_file(model, src, tmp_path / "afile" / "x.png")
