"""Folder and glob inputs that could run for ever or upscale reprfn's own outputs again: link
loops under ``--recursive``, an output folder inside the input folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from reprfn.api import collect_inputs

from .test_hostile_outputs import _image, _tree, _upscale


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="POSIX links")
def test_link_loops_end_under_recursive(tmp_path):
    """Two links back up the tree: glob's ``**`` follows them (2**40 paths, for ever in practice);
    folders and patterns alike must list the one real image and stop."""
    src = tmp_path / "in"
    _image(src / "d" / "p.png", 0)
    (src / "d" / "up").symlink_to("..")
    (src / "d" / "top").symlink_to(src)
    code = ("import sys; from reprfn.api import collect_inputs; "
            "print(*(len(collect_inputs([item], recursive=True)[0]) for item in sys.argv[1:]))")
    items = [str(src), str(src / "**" / "*.png")]
    done = subprocess.run([sys.executable, "-c", code, *items], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["1", "1"], done.stderr[-500:]


def test_an_output_folder_inside_the_input_is_not_read_again(tmp_path, capsys):
    """``-i photos -o photos/x2 --recursive`` run twice: the second run upscales the photos again
    (replacing its outputs, as -o names them), not the first run's outputs."""
    photos = tmp_path / "photos"
    _image(photos / "a.png", 1), _image(photos / "sub" / "b.png", 2)
    for inputs in ([str(photos)], [str(photos / "**" / "*.png")]):
        out = photos / "x2"
        for _ in range(2):
            code, err = _upscale(["-i", *inputs, "-o", str(out), "--recursive", "--suffix", "_x2"], capsys)
            assert code == 0 and err == [], (inputs, err)
        assert sorted(_tree(out)) == (["a_x2.png", "b_x2.png"] if "**" in inputs[0]
                                                 else ["a_x2.png", "sub/b_x2.png"])
        shutil.rmtree(out)
    files, _ = collect_inputs([str(photos)], recursive=True, output=photos)  # -o the input folder: all stay
    assert len(files) == 2
