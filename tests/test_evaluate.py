"""The evaluation protocol and ``reprfn eval``: data layouts, metrics, JSON, bad inputs.

The last tests reproduce published figures with ../shared data and skip cleanly without it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprfn import build, load_model, save_model
from reprfn.cli import main
from reprfn.evaluate import (
    Bicubic,
    Pair,
    evaluate_dataset,
    grey_to_rgb,
    load_pairs,
    measure,
    output_names,
    read_pair,
    super_resolve,
)
from reprfn.images import read_image
from reprfn.metrics import psnr
from reprfn.resize import imresize
from tests.helpers import randomize, shared_path

SCALE = 2


def _image(seed: int, h: int = 44, w: int = 38, grey: bool = False) -> np.ndarray:
    """A smooth random image (noise is not a fair test of an SR model, but structure helps)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    img = np.array(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    return img[..., 0] if grey else img


def _save(img: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    model = randomize(build("reprfn", scale=SCALE, channels=8, blocks=1, esa_channels=4), gain=0.3)
    return save_model(model, tmp_path_factory.mktemp("w") / "tiny_x2.safetensors")


@pytest.fixture
def hr_dir(tmp_path) -> Path:
    """Three HR images, one of odd size (cropped to a multiple of the scale), one greyscale."""
    _save(_image(1), tmp_path / "hr" / "a.png")
    _save(_image(2, 41, 37), tmp_path / "hr" / "b.png")
    _save(_image(3, grey=True), tmp_path / "hr" / "c.png")
    return tmp_path / "hr"


@pytest.fixture
def pair_dir(tmp_path, hr_dir) -> Path:
    """The same images as HR/ + LR/, LR made with the MATLAB-exact resizer."""
    for path in sorted(hr_dir.iterdir()):
        hr, lr = read_pair(Pair(path.name, path), SCALE)
        _save(hr, tmp_path / "pairs" / "HR" / path.name)
        _save(lr, tmp_path / "pairs" / "LR" / path.name)
    return tmp_path / "pairs"


def _eval(argv: list[str], tmp_path: Path, capsys) -> tuple[int, dict, str]:
    out = tmp_path / "results.json"
    code = main(["eval", *argv, "--json", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    return code, json.loads(out.read_text()), err


def test_json_schema_hr_folder_mode(weights, hr_dir, tmp_path, capsys):
    code, report, err = _eval(["-w", str(weights), "-d", str(hr_dir), "-s", "2"], tmp_path, capsys)
    assert code == 0 and err == ""
    assert list(report) == ["results"] and len(report["results"]) == 1
    res = report["results"][0]
    assert list(res) == ["dataset", "scale", "weights", "n_images", "psnr_y", "ssim_y", "psnr_rgb", "per_image",
                         "errors"]
    assert res["dataset"] == str(hr_dir) and res["weights"] == str(weights) and res["scale"] == 2
    assert res["n_images"] == 3 and [i["name"] for i in res["per_image"]] == ["a.png", "b.png", "c.png"]
    assert all(list(i) == ["name", "psnr_y", "ssim_y"] for i in res["per_image"])
    assert all(isinstance(res[k], float) for k in ("psnr_y", "ssim_y", "psnr_rgb"))
    assert res["psnr_y"] == pytest.approx(np.mean([i["psnr_y"] for i in res["per_image"]]))


def test_per_image_scores_follow_the_protocol_by_hand(weights, hr_dir, tmp_path, capsys):
    """docs/evaluation.md step by step, without the evaluation module: HR cropped to a multiple of
    the scale, LR = MATLAB bicubic, the model called on it (grey read as three equal channels), its
    output rounded to 8 bits, Y-PSNR / Y-SSIM with ``scale`` border pixels cropped."""
    from reprfn.metrics import ssim
    from tests.helpers import reference_sr

    code, report, _ = _eval(["-w", str(weights), "-d", str(hr_dir), "-s", str(SCALE)], tmp_path, capsys)
    assert code == 0
    model = load_model(weights)
    for entry in report["results"][0]["per_image"]:
        hr = np.asarray(Image.open(hr_dir / entry["name"]).convert("RGB"))
        hr = hr[: hr.shape[0] // SCALE * SCALE, : hr.shape[1] // SCALE * SCALE]
        sr = reference_sr(model, imresize(hr, 1 / SCALE))
        assert entry["psnr_y"] == pytest.approx(psnr(sr, hr, SCALE, True), abs=1e-9), entry["name"]
        assert entry["ssim_y"] == pytest.approx(ssim(sr, hr, SCALE, True), abs=1e-9), entry["name"]


def test_hr_lr_mode_agrees_with_hr_folder_mode(weights, hr_dir, pair_dir, tmp_path, capsys):
    model = load_model(weights)
    from_hr = evaluate_dataset(model, hr_dir, SCALE)
    from_pairs = evaluate_dataset(model, pair_dir, SCALE)
    assert not from_hr.errors and not from_pairs.errors
    assert [vars(r) for r in from_hr.images] == [vars(r) for r in from_pairs.images]
    assert 5 < from_hr.mean("psnr_y") < 60 and 0 < from_hr.mean("ssim_y") < 1


def test_bad_inputs_one_line_each_and_the_rest_evaluated(weights, pair_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (pair_dir / "HR" / "text.png").write_text("not an image")
    (pair_dir / "LR" / "text.png").write_text("not an image")
    _save(_image(4, 40, 40), pair_dir / "HR" / "big.png")
    _save(_image(4, 19, 19), pair_dir / "LR" / "big.png")  # 19 x 2 != 40
    _save(_image(5), pair_dir / "HR" / "lonely.png")
    code, report, err = _eval(["-w", str(weights), "-d", str(pair_dir), "-d", str(empty),
                               "-d", str(tmp_path / "missing"), "-s", "2"], tmp_path, capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 5 and all(line.startswith("reprfn: error: ") for line in lines)
    for name in ("text.png", "big.png", "lonely.png", str(empty), "missing"):
        assert sum(name in line for line in lines) == 1, name
    # every data set has its entry with its own errors: a partial one does not read as complete
    assert [r["dataset"] for r in report["results"]] == [str(pair_dir), str(empty), str(tmp_path / "missing")]
    scored, nothing, missing = report["results"]
    assert [i["name"] for i in scored["per_image"]] == ["a.png", "b.png", "c.png"] and scored["n_images"] == 3
    assert len(scored["errors"]) == 3 and all(e in err for e in scored["errors"])
    for name in ("text.png", "big.png", "lonely.png"):
        assert sum(name in e for e in scored["errors"]) == 1, name
    for entry, name in ((nothing, str(empty)), (missing, "missing")):
        assert entry["n_images"] == 0 and entry["per_image"] == [] and entry["psnr_y"] is None
        assert entry["ssim_y"] is None and entry["psnr_rgb"] is None
        assert len(entry["errors"]) == 1 and name in entry["errors"][0]


def test_bundled_model_is_the_default(hr_dir, tmp_path, capsys):
    code, report, _ = _eval(["-d", str(hr_dir), "-s", "2"], tmp_path, capsys)
    assert code == 0 and report["results"][0]["weights"].endswith("reprfn_x2.safetensors")
    assert report["results"][0]["psnr_y"] > 20


@pytest.mark.parametrize("argv,message", [
    (["-w", "bicubic", "-d", "X"], "-s"),
    (["-w", "WEIGHTS", "-d", "X", "-s", "3"], "x2 model, but x3"),
    (["-w", "bicubic", "-d", "X", "-s", "2", "--tile", "0"], "--tile"),
])
def test_usage_errors(weights, tmp_path, capsys, argv, message):
    argv = [str(weights) if a == "WEIGHTS" else str(tmp_path) if a == "X" else a for a in argv]
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bicubic_on_a_constant_image_is_perfect(tmp_path, capsys):
    _save(np.full((24, 20, 3), 93, np.uint8), tmp_path / "flat" / "f.png")
    code, report, _ = _eval(["-w", "bicubic", "-d", str(tmp_path / "flat"), "-s", "2"], tmp_path, capsys)
    res = report["results"][0]
    assert code == 0 and math.isinf(res["psnr_y"]) and math.isinf(res["psnr_rgb"]) and res["ssim_y"] == 1.0


def test_bicubic_pseudo_model_is_matlab_imresize():
    lr = _image(6, 20, 17)
    assert np.array_equal(super_resolve(Bicubic(3), lr), imresize(lr, 3))
    assert np.array_equal(super_resolve(Bicubic(3), lr, tile=6), imresize(lr, 3))  # 2-pixel support


def test_self_ensemble(weights):
    lr = _image(7, 22, 18)
    # bicubic is flip-equivariant, and rotation-equivariant up to the 8-bit rounding and clipping
    # between its passes (a rotation swaps their order: up to 3 levels on strong edges), so its
    # ensemble stays within 2 levels of the plain output
    plain, ens = super_resolve(Bicubic(2), lr), super_resolve(Bicubic(2), lr, self_ensemble=True)
    assert np.abs(plain.astype(int) - ens).max() <= 2
    flat = np.full((20, 20, 3), 50, np.uint8)
    assert np.array_equal(super_resolve(Bicubic(2), flat, self_ensemble=True), imresize(flat, 2))
    model = load_model(weights)
    plain, ens = super_resolve(model, lr), super_resolve(model, lr, self_ensemble=True)
    assert ens.shape == plain.shape == (44, 36, 3) and ens.dtype == np.uint8
    assert not np.array_equal(ens, plain)


def test_greyscale_images(weights):
    hr = _image(8, grey=True)
    lr = imresize(hr, 1 / SCALE)
    sr = super_resolve(load_model(weights), lr)
    assert sr.shape == hr.shape and sr.dtype == np.uint8
    grey = measure(sr, hr, SCALE)
    as_rgb = measure(grey_to_rgb(sr), grey_to_rgb(hr), SCALE)
    assert grey.psnr_y == pytest.approx(grey.psnr_rgb)  # Y is the image itself
    assert as_rgb.psnr_y == pytest.approx(grey.psnr_y + 20 * math.log10(255 / 219))  # Y = 16 + 219 g / 255


def test_save_dir_writes_the_sr_pngs(weights, hr_dir, tmp_path, capsys):
    save = tmp_path / "out"
    assert main(["eval", "-w", str(weights), "-d", str(hr_dir), "-s", "2", "--save-dir", str(save)]) == 0
    files = sorted(p.relative_to(save).as_posix() for p in save.rglob("*") if p.is_file())
    assert files == ["hr/a.png", "hr/b.png", "hr/c.png"]
    hr, lr = read_pair(load_pairs(hr_dir, SCALE)[0][1], SCALE)
    assert np.array_equal(read_image(save / "hr" / "b.png"), super_resolve(load_model(weights), lr))
    assert "PSNR-Y" in capsys.readouterr().out


def test_output_names_are_unique():
    assert output_names(["a/Set5/x4", "b/Set14/x4"]) == ["Set5/x4", "Set14/x4"]
    assert output_names(["data/B100"]) == ["B100"]


def test_lr_names_with_a_scale_suffix_pair(tmp_path):
    _save(_image(9, 20, 20), tmp_path / "HR" / "0801.png")
    _save(_image(9, 10, 10), tmp_path / "LR" / "0801x2.png")
    pairs, errors = load_pairs(tmp_path, 2)
    assert not errors and [(p.hr.name, p.lr.name) for p in pairs] == [("0801.png", "0801x2.png")]


def test_tiles_agree_with_the_whole_image(weights):
    lr = _image(10, 64, 64)
    model = load_model(weights)
    whole, tiles = super_resolve(model, lr), super_resolve(model, lr, tile=24)
    diff = np.abs(whole.astype(int) - tiles)
    assert tiles.shape == whole.shape and diff.max() <= 4, diff.max()


# ----------------------------------------------------------------------------------------------
# Published figures (../shared)
# ----------------------------------------------------------------------------------------------

OFFICIAL = ("weights", "official", "reprfn_ntire_x4.pth")


def _benchmark(*parts: str) -> Path:
    return shared_path("data", "benchmark", *parts)


def test_bicubic_set5_x4_given_lr():
    res = evaluate_dataset(Bicubic(4), _benchmark("Set5", "x4"), 4)
    assert not res.errors and len(res.images) == 5
    assert res.mean("psnr_y") == pytest.approx(28.43, abs=0.01)
    assert res.mean("ssim_y") == pytest.approx(0.811, abs=0.001)


def test_bicubic_b100_x4_from_hr():
    """B100 is HR only: LR is made with the MATLAB-exact resizer. PSNR only, to stay fast."""
    pairs, errors = load_pairs(_benchmark("B100", "HR"), 4)
    assert not errors and len(pairs) == 100
    values = []
    for pair in pairs:
        hr, lr = read_pair(pair, 4)
        values.append(psnr(super_resolve(Bicubic(4), lr), hr, crop_border=4, test_y_channel=True))
    assert np.mean(values) == pytest.approx(25.96, abs=0.01)


def test_authors_checkpoint_set5_x4():
    model = load_model(shared_path(*OFFICIAL), scale=4)
    res = evaluate_dataset(model, _benchmark("Set5", "x4"), 4)
    assert not res.errors and len(res.images) == 5
    assert res.mean("psnr_y") == pytest.approx(32.20, abs=0.01)
    assert res.mean("ssim_y") == pytest.approx(0.8948, abs=0.0005)


def test_authors_checkpoint_set14_x4_grey_as_rgb():
    """The paper's 28.65 / 0.7822 treats Set14's greyscale image as three equal channels."""
    model = load_model(shared_path(*OFFICIAL), scale=4)
    res = evaluate_dataset(model, _benchmark("Set14", "x4"), 4, grey_as_rgb=True)
    assert not res.errors and len(res.images) == 14
    assert res.mean("psnr_y") == pytest.approx(28.65, abs=0.01)
    assert res.mean("ssim_y") == pytest.approx(0.7822, abs=0.0005)


def test_set14_greyscale_image_conventions():
    """img_003 is greyscale: measured on itself (--grey-as-y) it scores 1.32 dB less than as the
    Y of three equal channels, which moves the Set14 mean from 28.65 to 28.56."""
    model = load_model(shared_path(*OFFICIAL), scale=4)
    pair = next(p for p in load_pairs(_benchmark("Set14", "x4"), 4)[0] if p.name == "img_003.png")
    hr, lr = read_pair(pair, 4)
    assert hr.ndim == 2
    itself = psnr(super_resolve(model, lr), hr, crop_border=4, test_y_channel=True)
    as_rgb = psnr(super_resolve(model, grey_to_rgb(lr)), grey_to_rgb(hr), crop_border=4, test_y_channel=True)
    assert itself == pytest.approx(24.18, abs=0.01) and as_rgb == pytest.approx(25.51, abs=0.01)


def test_several_lr_partners_are_an_error_not_a_choice(tmp_path):
    """LR/0801.png and LR/0801x2.png both pair with HR/0801.png: the later name in sort order was
    taken without a word, so a wrong LR image of the right size gave a wrong score with exit 0."""
    _save(_image(9, 20, 20), tmp_path / "HR" / "0801.png")
    _save(_image(9, 20, 20), tmp_path / "HR" / "0802.png")
    _save(_image(9, 10, 10), tmp_path / "LR" / "0801.png")
    _save(_image(8, 10, 10), tmp_path / "LR" / "0801x2.png")
    _save(_image(9, 10, 10), tmp_path / "LR" / "0802x2.png")
    _save(_image(9, 10, 10), tmp_path / "LR" / "0803.png")
    _save(_image(9, 10, 10), tmp_path / "LR" / "0803x2.png")
    pairs, errors = load_pairs(tmp_path, 2)
    assert [(p.hr.name, p.lr.name) for p in pairs] == [("0802.png", "0802x2.png")]
    hr, lr = tmp_path / "HR", tmp_path / "LR"
    assert errors == [f"{hr / '0801.png'}: several LR partners in {lr} (0801.png, 0801x2.png)",
                      f"{lr / '0803.png'}: no HR partner in {hr}",
                      f"{lr / '0803x2.png'}: no HR partner in {hr}"]
