"""Hostile checkpoints: non-finite weights, and metadata that lies about or garbles the tensors.

Each is refused at load with one line naming the file and the tensor or metadata key, before
anything of the claimed size is built, and every command that loads weights reports it as one
line with exit 2 and writes nothing.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from reprfn import CheckpointError, load_model, save_model
from reprfn.checkpoint import bundled_weights
from reprfn.cli import main
from reprfn.errors import UsageError
from reprfn.models import build
from tests.helpers import randomize
from tests.test_checkpoint import to_authors_layout

FAST_S = 0.5  # a refusal reads the file and compares; loading the honest file takes ~0.05 s


def _tiny(arch: str = "reprfn", **kw) -> torch.nn.Module:
    extra = {"esa_channels": 4, "channels": 8} if arch.startswith("reprfn") else {"channels": 16}
    return randomize(build(arch, scale=2, blocks=2, **extra, **kw)).eval()


def _poison(sd: dict[str, torch.Tensor], key: str, value: float, count: int = 1) -> dict[str, torch.Tensor]:
    bad = sd[key].clone()
    bad.view(-1)[:count] = value
    return {**sd, key: bad}


def _bundled() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(bundled_weights(4)), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("reprfn: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


# ------------------------------------------------------------------------------ non-finite weights


def _layout_files(tmp_path: Path, value: float) -> list[tuple[Path, str, int]]:
    """(file, key as written in the file, values poisoned) in every layout ``load_model`` reads."""
    files = []
    train = _tiny().state_dict()
    key = "blocks.1.rep.2.conv3x1.weight"
    save_file(_poison(train, key, value), str(tmp_path / "ours_train.safetensors"),
              metadata={"format": "reprfn", "arch": "reprfn", "form": "train"})
    files.append((tmp_path / "ours_train.safetensors", key, 1))

    deploy = _tiny().fuse()
    path = save_model(deploy, tmp_path / "ours_deploy.safetensors")
    sd = {k: v.contiguous() for k, v in deploy.state_dict().items()}
    save_file(_poison(sd, "blocks.0.rep.0.conv.weight", value, 3), str(path),
              metadata={"format": "reprfn", "arch": "reprfn", "form": "deploy"})
    files.append((path, "blocks.0.rep.0.conv.weight", 3))

    authors = to_authors_layout(_tiny().fuse().state_dict())
    key = "reprfb2.repblock3.rbr_reparam.bias"
    assert key in authors
    torch.save({"params_ema": _poison(authors, key, value)}, tmp_path / "authors.pth")
    files.append((tmp_path / "authors.pth", key, 1))

    for arch, key in (("rfdn", "B2.c1_r.weight"), ("imdn", "upsampler.0.bias")):
        sd = _tiny(arch).state_dict()
        assert key in sd
        torch.save({f"module.{k}": v for k, v in _poison(sd, key, value).items()}, tmp_path / f"{arch}.pth")
        files.append((tmp_path / f"{arch}.pth", key, 1))  # the key without the module. prefix
    return files


@pytest.mark.parametrize("value,word", [(float("nan"), "NaN"), (float("inf"), "infinite"), (float("-inf"), "infinite")])
def test_non_finite_weights_are_refused_in_every_layout(tmp_path, value, word):
    for path, key, count in _layout_files(tmp_path, value):
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        message = str(info.value)
        assert message == f"{path}: tensor {key!r} has {count} {word} value(s): refusing to load"


def test_every_non_finite_kind_is_counted(tmp_path):
    sd = {k: v.contiguous() for k, v in _tiny().fuse().state_dict().items()}
    key = "fea_conv.weight"
    bad = sd[key].clone()
    bad.view(-1)[:2] = float("nan")
    bad.view(-1)[5] = float("inf")
    sd2 = _poison(_poison(sd, "lr_conv.bias", float("nan")), key, 0.0)
    sd2[key] = bad
    save_file(sd2, str(tmp_path / "w.safetensors"), metadata={"format": "reprfn"})
    with pytest.raises(CheckpointError, match=r"tensor 'fea_conv.weight' has 2 NaN and 1 infinite value\(s\) "
                                              r"\(and 1 more tensors\): refusing to load"):
        load_model(tmp_path / "w.safetensors")


@pytest.fixture
def nan_weights(tmp_path) -> tuple[Path, str]:
    sd, meta = _bundled()
    key = "blocks.0.rep.0.conv.weight"
    path = tmp_path / "w.safetensors"
    save_file(_poison(sd, key, float("nan")), str(path), metadata=meta)
    return path, key


def _tiny_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("command", ["info", "upscale", "eval", "fuse", "export", "profile"])
def test_every_command_refuses_nan_weights_in_one_line(tmp_path, nan_weights, capsys, command):
    path, key = nan_weights
    image = _tiny_png(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    argv = {
        "info": ["info", str(path)],
        "upscale": ["upscale", "-i", str(image), "-o", str(out / "a.png"), "-w", str(path), "--backend", "torch"],
        "eval": ["eval", "-w", str(path), "-d", str(image.parent), "-s", "4", "--device", "cpu",
                 "--json", str(out / "r.json"), "--save-dir", str(out / "sr")],
        "fuse": ["fuse", str(path), str(out / "f.safetensors")],
        "export": ["export", "-w", str(path), "-o", str(out / "m.onnx")],
        "profile": ["profile", str(path), "--input", "3x16x16", "--json", str(out / "p.json")],
    }[command]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert line == f"reprfn: error: {path}: tensor {key!r} has 1 NaN value(s): refusing to load"
    assert not out.exists()  # nothing written, not even a folder


# ------------------------------------------------------------------------------ lying metadata


LIES = [
    ("blocks", "20000", "(4, from keys blocks.N.*)"),
    ("blocks", "3", "(4, from keys blocks.N.*)"),
    ("channels", "4096", "(48, from tensor 'fea_conv.weight')"),
    ("in_channels", "1", "(3, from tensor 'fea_conv.weight')"),
    ("scale", "3", "(4, from tensor 'upsampler.0.weight')"),
    ("esa_channels", "4096", "(16, from tensor 'blocks.0.esa.conv1.weight')"),
    ("form", "train", "(deploy, from key 'blocks.0.rep.0.conv.weight' present)"),
]


@pytest.mark.parametrize("key,value,truth", LIES)
def test_metadata_contradicting_the_tensors_is_refused_fast(tmp_path, capsys, key, value, truth):
    sd, meta = _bundled()
    path = tmp_path / "lying.safetensors"
    save_file(sd, str(path), metadata={**meta, key: value})
    start = time.perf_counter()
    assert main(["info", str(path)]) == 2
    assert time.perf_counter() - start < FAST_S
    assert _one_error_line(capsys) == (f"reprfn: error: {path}: metadata {key}={value!r} contradicts the "
                                       f"tensors {truth}: refusing to load")


def test_the_unchanged_metadata_still_loads(tmp_path):
    """The control for the tests above: rewriting the bundled file as they do is harmless."""
    sd, meta = _bundled()
    save_file(sd, str(tmp_path / "same.safetensors"), metadata=meta)
    model = load_model(tmp_path / "same.safetensors")
    assert (model.scale, model.channels, model.num_blocks, model.form) == (4, 48, 4, "deploy")


@pytest.mark.parametrize("key,value,message", [
    ("scale", "abc", "is not a positive whole number"),
    ("scale", "-4", "is not a positive whole number"),
    ("scale", "4.0", "is not a positive whole number"),
    ("scale", "", "is not a positive whole number"),
    ("blocks", "0", "is not a positive whole number"),
    ("channels", "4.8e1", "is not a positive whole number"),
    ("in_channels", "99999999999999999999", "is not a positive whole number"),
    ("data_range", "abc", "is not a positive number"),
    ("data_range", "nan", "is not a positive number"),
    ("data_range", "-255", "is not a positive number"),
    ("data_range", "inf", "is not a positive number"),
    ("form", "fused", "is not train or deploy"),
    ("arch", "edsr", "is not a known model (reprfn, "),
    ("arch", "rfdn", "contradicts the tensors (they hold a reprfn layout)"),
])
def test_bad_metadata_values_name_the_file_and_the_key(tmp_path, key, value, message):
    sd, meta = _bundled()
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path), metadata={**meta, key: value})
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(info.value).startswith(f"{path}: metadata {key}={value!r} {message}")


def test_metadata_that_does_not_apply_to_the_architecture(tmp_path):
    model = _tiny("rfdn")
    path = save_model(model, tmp_path / "rfdn.safetensors", extra={"esa_channels": "12"})
    message = r"rfdn.safetensors: metadata esa_channels='12' does not apply to a rfdn model"
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_tensors_that_disagree_with_each_other_are_refused_before_building(tmp_path):
    """No metadata to blame: the width read from the first conv is checked against every other
    tensor on an empty (meta-device) model, so 4096 channels are never allocated."""
    sd, _ = _bundled()
    sd["fea_conv.weight"] = torch.zeros(4096, 3, 3, 3)
    sd["fea_conv.bias"] = torch.zeros(4096)
    torch.save(sd, tmp_path / "wide.pth")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"wide.pth: does not match a reprfn model: .*shape mismatches"):
        load_model(tmp_path / "wide.pth")
    assert time.perf_counter() - start < FAST_S

    sd, _ = _bundled()
    sd["blocks.19999.esa.conv1.weight"] = sd["blocks.0.esa.conv1.weight"]
    torch.save(sd, tmp_path / "far.pth")
    with pytest.raises(CheckpointError, match=r"far.pth: does not match a reprfn model: .*unexpected keys"):
        load_model(tmp_path / "far.pth")


@pytest.mark.parametrize("shape", [(48, 0, 3, 3), (48, 3), ()])
def test_misshapen_first_conv_is_named(tmp_path, shape):
    sd, _ = _bundled()
    sd["fea_conv.weight"] = torch.zeros(shape)
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd.pth: tensor 'fea_conv.weight' has shape .*: not a conv weight"):
        load_model(tmp_path / "odd.pth")


def test_bad_data_range_argument():
    with pytest.raises(ValueError, match="data range must be a positive number, got nan"):
        load_model(bundled_weights(4), data_range=float("nan"))


# ru_maxrss would not do: Linux carries it over from the parent (pytest) through exec. VmHWM is
# the peak of this process's own memory map.
_LOAD_ALL = """
import json, sys, time
from reprfn import CheckpointError, load_model
times = {}
for path in sys.argv[1:]:
    start = time.perf_counter()
    try:
        load_model(path)
    except CheckpointError:
        times[path] = time.perf_counter() - start
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"times": times, "peak_kb": peak_kb}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak memory is read from /proc (Linux)")
def test_huge_claims_cost_neither_time_nor_memory(tmp_path):
    """blocks=20000 once took 49 s and 7.5 GB before failing; 200000 would meet the OOM killer.
    Measured in a fresh process (~250 MB of its peak is torch)."""
    sd, meta = _bundled()
    paths = []
    for key, value in (("blocks", "200000"), ("channels", "65536"), ("esa_channels", "100000")):
        paths.append(str(tmp_path / f"{key}.safetensors"))
        save_file(sd, paths[-1], metadata={**meta, key: value})
    proc = subprocess.run([sys.executable, "-c", _LOAD_ALL, *paths], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert sorted(result["times"]) == sorted(paths)  # each refused with CheckpointError
    assert max(result["times"].values()) < FAST_S
    assert 50 < result["peak_kb"] / 1024 < 1024, f"peak {result['peak_kb'] / 1024:.0f} MB"


# ------------------------------------------------------------------------- files that are no checkpoint


def _unreadable_files(tmp_path: Path) -> list[tuple[Path, str]]:
    """(file, the reason its one line must give) for files ``torch.load(weights_only=True)`` refuses."""
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    picture = tmp_path / "photo.pth"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture, format="PNG")
    pickled = tmp_path / "module.pth"
    torch.save(torch.nn.Conv2d(3, 3, 3), pickled)  # a whole module: objects besides tensors
    scripted = tmp_path / "scripted.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated; reprfn export still writes it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 3, 3)), str(scripted))
    raw = tmp_path / "raw.pkl"  # pickle's own protocol 4, on which torch.load also warns
    raw.write_bytes(pickle.dumps({"w": torch.zeros(2)}, protocol=4))
    refused = "(a pickle that is not plain tensors saved by torch.save, never unpickled as it could run code"
    return [(empty, "(empty file)"), (picture, "(not a safetensors file or a PyTorch checkpoint)"),
            (pickled, refused), (raw, refused),
            (scripted, "(a TorchScript archive (what reprfn export writes), not a checkpoint")]


def test_a_file_torch_will_not_unpickle_is_named_without_unsafe_advice(tmp_path, capsys):
    """PyTorch's text advised weights_only=False (running the file's code), carried terminal escape
    codes, said the same of an image given as weights, and a TorchScript file added a warning."""
    for path, reason in _unreadable_files(tmp_path):
        assert main(["info", str(path)]) == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"reprfn: error: {path}: not a readable checkpoint {reason}"), line
        assert "weights_only" not in line and "\x1b" not in line


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": "2"}, "scale must be 2, 3 or 4, got '2'"),
    ({"scale": 2.0}, "scale must be 2, 3 or 4, got 2.0"),
    ({"device": "tpu"}, "unknown device 'tpu'; use auto, cpu, cuda or mps"),
])
def test_load_model_arguments_are_usage_errors(kwargs, message):
    """scale="2" was refused as "is a x2 model, but x2 was asked for"; device="tpu" as PyTorch's
    RuntimeError listing every device type (and cuda without CUDA as a bare AssertionError)."""
    with pytest.raises(UsageError) as info:
        load_model(bundled_weights(2), **kwargs)
    assert str(info.value) == message
    assert load_model(bundled_weights(2), scale=np.int64(2), device="cpu").scale == 2


@pytest.mark.parametrize("given, message", [("FOLDER", "a folder, not a checkpoint file"),
                                            ("", "an empty weights path")])
def test_a_folder_or_an_empty_path_as_weights_is_named_as_such(tmp_path, capsys, given, message):
    """A folder read "no such file", and "" (the current folder) ".: no such file"."""
    assert main(["info", str(tmp_path) if given == "FOLDER" else given]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
