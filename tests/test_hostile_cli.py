"""Hostile command lines: out-of-range numbers, unwritable report targets, signals mid-write.

Each is one line on stderr with exit 2 (or the signal's status), refused before the long work,
and never leaves a partial or hidden temporary file behind.
"""

from __future__ import annotations

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

from reprfn.cli import main
from reprfn.errors import ExportError
from reprfn.export import opset_range
from reprfn.files import atomic_path, check_writable

FAST_S = 3.0  # a refusal loads at most the bundled model; the work it prevents takes longer


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("reprfn: error: "), captured.err
    assert captured.out == "", captured.out[:500]
    return lines[0]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(folder / name)
    return folder


# ------------------------------------------------------------------------------ numbers out of range


@pytest.mark.parametrize("opset", ["3", "10", "-1", "0", "999"])
def test_export_refuses_opsets_it_cannot_write(tmp_path, capsys, opset):
    out = tmp_path / "m.onnx"
    start = time.perf_counter()
    assert main(["export", "-o", str(out), "--opset", opset]) == 2
    assert time.perf_counter() - start < FAST_S
    line = _one_error_line(capsys)  # and nothing on stdout: no graph
    low, high = opset_range()
    assert low == 11 and high >= 20  # 20: the last opset of torch's TorchScript exporter
    assert line == f"reprfn: error: opset {int(opset)} is not supported: ONNX export takes opsets 11 to {high}"
    assert list(tmp_path.iterdir()) == []


def test_a_failing_export_never_prints_the_graph(tmp_path, capfd):
    """torch's exporter prints the whole graph from C++ when it fails; only the one-line
    ExportError may come out (opset 3 bypasses the range check to make it fail)."""
    from reprfn.exporters import torch_onnx_export
    from reprfn.models import build

    model = build("reprfn", scale=2, channels=8, blocks=1, esa_channels=4, deploy=True).eval()
    with pytest.raises(ExportError, match="torch.onnx.export failed"):
        torch_onnx_export(model, torch.rand(1, 3, 32, 32), tmp_path / "m.onnx", 3)
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out + err)[:300]


@pytest.mark.parametrize("flags,message", [
    (["--runs", "0"], "--runs must be at least 1, got 0"),
    (["--runs", "-3"], "--runs must be at least 1, got -3"),
    (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
])
def test_profile_refuses_counts_out_of_range(capsys, flags, message):
    assert main(["profile", "reprfn", "--input", "3x16x16", "--runtime", "--no-memory", *flags]) == 2
    assert _one_error_line(capsys) == f"reprfn: error: {message}"


# ------------------------------------------------------------------------------ unwritable targets


def _unwritable_targets(tmp_path: Path) -> list[tuple[Path, str]]:
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    return [
        (tmp_path / "a_dir", "it is a directory"),
        (tmp_path / "a_file" / "r.json", f"{tmp_path / 'a_file'} is not a directory"),
        (tmp_path / "a_file" / "deeper" / "r.json", f"{tmp_path / 'a_file'} is not a directory"),
    ]


@pytest.mark.parametrize("flag", ["--json", "--report"])
def test_eval_refuses_an_unwritable_target_before_evaluating(tmp_path, images, capsys, flag):
    for target, why in _unwritable_targets(tmp_path):
        assert main(["eval", "-w", "bicubic", "-d", str(images), "-s", "2", "--device", "cpu", flag, str(target)]) == 2
        # before the evaluation: its table would be on stdout, which _one_error_line requires empty
        assert _one_error_line(capsys) == f"reprfn: error: {target}: cannot write the {flag} file, {why}"
        assert _hidden(tmp_path) == []


def test_profile_refuses_an_unwritable_json_before_profiling(tmp_path, capsys):
    for target, why in _unwritable_targets(tmp_path):
        assert main(["profile", "reprfn", "--input", "3x16x16", "--no-memory", "--json", str(target)]) == 2
        assert _one_error_line(capsys) == f"reprfn: error: {target}: cannot write the --json file, {why}"
        assert _hidden(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder: no unwritable folder to test with")
def test_a_read_only_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="locked/r.json: cannot write the --json file, .*locked is not writable"):
        check_writable(locked / "r.json", "--json file")


def test_a_missing_folder_is_fine(tmp_path):
    """``atomic_path`` creates it, so the check must not refuse it."""
    assert check_writable(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"


def test_atomic_path_errors_name_the_final_path(tmp_path):
    (tmp_path / "target").mkdir()
    with pytest.raises(IsADirectoryError) as info, atomic_path(tmp_path / "target") as tmp:
        tmp.write_text("{}")
    assert str(tmp_path / "target") in str(info.value) and ".tmp" not in str(info.value)

    # an error of the writer itself, naming the temporary file (it is not a folder)
    with pytest.raises(NotADirectoryError) as info, atomic_path(tmp_path / "r.json") as tmp:
        os.rmdir(tmp)
    assert str(tmp_path / "r.json") in str(info.value) and ".tmp" not in str(info.value)
    assert _hidden(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_atomic_path_names_the_final_path_when_no_temporary_can_be_made(tmp_path, monkeypatch):
    """A folder that takes no new file (a read-only or virtual file system, e.g. /proc as root):
    the error names the file asked for, not mkstemp's random attempt."""
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".x.json.abc123.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info, atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
    assert info.value.filename == str(tmp_path / "x.json") and "abc123" not in str(info.value)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, RuntimeError])
def test_atomic_path_removes_its_temporary_on_any_exception(tmp_path, exc):
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(exc), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise exc()
    assert _hidden(tmp_path) == [] and target.read_text() == "old"


# ------------------------------------------------------------------------------ signals mid-write

# Runs `reprfn upscale` with the image writer slowed down: the temporary file is fully written,
# then the process says so on stdout and sleeps, so the test can signal it at a known point mid-write.
_SLOW_WRITER = """
import sys, time
import reprfn.images.write
from reprfn.cli import main

original = reprfn.images.write._write

def slow_write(tmp, *args, **kwargs):
    original(tmp, *args, **kwargs)
    print("writing", tmp, flush=True)
    time.sleep(120)

reprfn.images.write._write = slow_write
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path, images):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, "upscale", "-i", str(images / "a.png"), "-o", str(out / "a.png"),
         "-s", "2", "--backend", "torch", "--device", "cpu", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = proc.stdout.readline()
        assert said.startswith("writing "), proc.stderr.read()
        temporary = Path(said.split(" ", 1)[1].strip())
        assert temporary.parent == out and temporary.name.startswith(".a.png.") and temporary.is_file()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "reprfn: terminated"
    assert list(out.iterdir()) == []  # neither the temporary file nor a partial output


def test_ctrl_c_during_a_write_leaves_no_temporary_file(tmp_path, images, capsys, monkeypatch):
    """The same in this process: Ctrl-C is a KeyboardInterrupt wherever Python happens to be."""
    import reprfn.images.write

    seen: list[Path] = []
    original = reprfn.images.write._write

    def interrupted_write(tmp, *args, **kwargs):
        original(tmp, *args, **kwargs)
        seen.append(Path(tmp))
        raise KeyboardInterrupt

    monkeypatch.setattr(reprfn.images.write, "_write", interrupted_write)
    out = tmp_path / "out"
    code = main(["upscale", "-i", str(images / "a.png"), "-o", str(out / "a.png"), "-s", "2",
                 "--backend", "torch", "--device", "cpu", "--quiet"])
    assert code == 130 and capsys.readouterr().err.strip() == "reprfn: interrupted"
    assert len(seen) == 1 and seen[0].parent == out and seen[0].name.startswith(".a.png.")
    assert list(out.iterdir()) == []


def test_an_internal_error_is_one_line_and_exit_2(capsys, monkeypatch):
    """A bug (not a user's mistake) still ends in one line on stderr, whatever its message holds."""
    import argparse

    from reprfn.cli.status import run

    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("first line\nsecond line\n  detail")

    monkeypatch.delenv("REPRFN_DEBUG", raising=False)
    assert run(broken, argparse.Namespace()) == 2
    err = capsys.readouterr().err
    assert err == "reprfn: internal error: RuntimeError: first line (set REPRFN_DEBUG=1 for a traceback)\n"
    monkeypatch.setenv("REPRFN_DEBUG", "1")
    with pytest.raises(RuntimeError, match="second line"):
        run(broken, argparse.Namespace())


def test_ctrl_c_while_the_command_starts_is_one_line(tmp_path):
    """Ctrl-C while PyTorch loads (the command's first second) ended in Python's traceback: no
    handler of ours ran yet. A stand-in ``torch`` that takes a minute to import makes that moment
    last; the interrupt is one line and exit 130, as it is later."""
    slow = tmp_path / "slow" / "torch"
    slow.mkdir(parents=True)
    (slow / "__init__.py").write_text("import time\nopen(__file__ + '.importing', 'w').close()\ntime.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "slow"), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-m", "reprfn", "info"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = slow / "__init__.py.importing"
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "the stand-in torch was never imported"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err == "reprfn: interrupted\n", err


def test_the_console_script_is_the_launcher():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'reprfn = "reprfn.launch:main"' in text
    code = "import sys, reprfn; import reprfn.launch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr  # nothing heavy before the handler is in place


def test_the_package_exports_what_it_lists():
    import reprfn

    assert set(reprfn.__all__) == {"__version__", *reprfn._EXPORTS}
    assert all(getattr(reprfn, name) is not None for name in reprfn.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        reprfn.nope  # noqa: B018


def test_written_files_get_the_usual_permissions(tmp_path):
    """Every writer's file is 0666 less the umask, as any program's: safetensors replaces the file
    it is given with a 0600 one, so checkpoints (``reprfn fuse``, training's weights) were readable
    by their owner alone; a plain writer's file too."""
    from reprfn import build, save_model

    umask = os.umask(0o022)
    try:
        weights = save_model(build("reprfn", scale=2), tmp_path / "m.safetensors")
        with atomic_path(tmp_path / "plain.txt") as tmp:
            tmp.write_text("x")
        assert (weights.stat().st_mode & 0o777) == 0o644
        assert ((tmp_path / "plain.txt").stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        with atomic_path(tmp_path / "private.txt") as tmp:
            tmp.write_text("x")
        assert ((tmp_path / "private.txt").stat().st_mode & 0o777) == 0o600  # the umask is honoured
    finally:
        os.umask(umask)


# ------------------------------------------------------------------------- outputs over the weights read


def _checkpoint(path: Path) -> Path:
    """The bundled x2 weights saved with torch.save, under ``path`` (a .pt or .bin name)."""
    from safetensors.torch import load_file

    from reprfn.checkpoint import bundled_weights

    torch.save(load_file(str(bundled_weights(2))), path)
    return path


@pytest.mark.parametrize("command", [
    ["fuse", "{w}", "{w}"],
    ["fuse", "{w}", "{link}"],
    ["export", "-w", "{w}", "-o", "{w}"],
    ["export", "-w", "{bin}", "-o", "{stem}.param"],
    ["export", "-w", "{bin}", "-o", "{stem}", "--format", "ncnn"],
])
def test_an_output_that_is_the_weights_file_is_refused(tmp_path, capsys, command):
    """fuse IN IN and export -w m.pt -o m.pt replaced the checkpoint (training form, metadata) with
    what was made from it; an ncnn export wrote NAME.bin over a pytorch_model-style NAME.bin."""
    weights, weights_bin = _checkpoint(tmp_path / "model.pt"), _checkpoint(tmp_path / "ncnn.bin")
    (tmp_path / "link.pt").symlink_to(weights)
    names = {"w": weights, "link": tmp_path / "link.pt", "bin": weights_bin, "stem": tmp_path / "ncnn"}
    before = {p: p.read_bytes() for p in (weights, weights_bin)}
    assert main([part.format(**names) for part in command]) == 2
    assert "would overwrite an input" in _one_error_line(capsys)
    assert all(p.read_bytes() == data for p, data in before.items())
    assert (tmp_path / "link.pt").is_symlink()


def test_fuse_into_a_folder_is_refused_naming_it(tmp_path, capsys):
    weights = _checkpoint(tmp_path / "model.pt")
    assert main(["fuse", str(weights), str(tmp_path)]) == 2
    assert _one_error_line(capsys) == f"reprfn: error: {tmp_path}: cannot write the fused checkpoint, it is a directory"


@pytest.mark.parametrize("suffix", ["/../../escaped", "/x", f"_x4{os.sep}y"])
def test_a_suffix_with_a_path_separator_is_refused(images, tmp_path, capsys, suffix):
    """--suffix /../../escaped wrote outside -o, over whatever file had that name."""
    out = tmp_path / "out"
    assert main(["upscale", "-i", str(images), "-o", str(out), "--suffix", suffix, "--quiet", "--device", "cpu"]) == 2
    assert "--suffix" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "b.png", "hr"]


@pytest.mark.parametrize("name, problem", [("d.onnx", "it is a directory"), ("d.pt", "it is a directory"),
                                           ("f.png/m.pt", "f.png is not a directory"),
                                           ("f.png/m.param", "f.png is not a directory")])
def test_an_export_target_that_cannot_be_written_is_refused_before_exporting(tmp_path, capsys, name, problem):
    """These failed only once the export and its check had run, as "[Errno 17] File exists: 'f.png'"."""
    (tmp_path / "d.onnx").mkdir()
    (tmp_path / "d.pt").mkdir()
    (tmp_path / "f.png").write_bytes(b"")
    start = time.perf_counter()
    assert main(["export", "-s", "2", "-o", str(tmp_path / name)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"reprfn: error: {tmp_path / name.replace('.param', '')}")
    assert "cannot write the export" in line
    assert line.endswith(problem) and time.perf_counter() - start < FAST_S


@pytest.mark.parametrize("where", ["notes.txt", "notes.txt/deeper"])
def test_an_upscale_folder_output_that_is_a_file_is_refused_before_any_work(images, tmp_path, capsys, where):
    """Each image failed alone with "[Errno 20] Not a directory", after the model had loaded."""
    (tmp_path / "notes.txt").write_text("mine")
    start = time.perf_counter()
    assert main(["upscale", "-i", str(images), "-o", str(tmp_path / where), "--quiet", "--device", "cpu"]) == 2
    line = _one_error_line(capsys)
    assert "-o folder" in line and "notes.txt" in line and time.perf_counter() - start < FAST_S
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_eval_save_dir_that_is_a_file_is_refused_before_any_work(images, tmp_path, capsys):
    """It failed at the first image it saved, after the model had loaded."""
    (tmp_path / "notes.txt").write_text("mine")
    argv = ["eval", "-w", "bicubic", "-s", "2", "-d", str(images), "--save-dir", str(tmp_path / "notes.txt")]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert line == (f"reprfn: error: {tmp_path / 'notes.txt'}: "
                    "cannot write the --save-dir folder there, it is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("flags,message", [
    (["--precision", "bf16"], "--precision applies to the timing, which only --runtime measures"),
    (["--runs", "3"], "--runs applies to the timing"),
    (["--warmup", "0"], "--warmup applies to the timing"),
    (["--mode", "online"], "--mode applies to the training form's RepBlocks: add --form train"),
])
def test_profile_refuses_a_flag_it_would_not_use(capsys, flags, message):
    """Each profiled what was not asked (fp32 counts alone, the fused model) with exit 0."""
    assert main(["profile", "reprfn", "--input", "3x16x16", "--no-memory", *flags]) == 2
    assert _one_error_line(capsys).startswith(f"reprfn: error: {message}")
    assert main(["profile", "reprfn", "--input", "3x16x16", "--no-memory", "--form", "train", "--mode", "online"]) == 0
