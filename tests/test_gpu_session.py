"""The GPU session script end to end on the CPU at small sizes: pack, unpack, throughput,
iterations from the measured rate, training from a given init with resident batches, snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from reprfn.checkpoint import load_model, save_model
from reprfn.models import build, set_mode

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_session_runs_on_the_cpu(tmp_path):
    pack = tmp_path / "train.zip"
    with zipfile.ZipFile(pack, "w") as z:
        for k in range(3):
            yy, xx = np.mgrid[0:96, 0:120] / (7.0 + k)
            img = ((np.stack([np.sin(xx + c) * np.cos(yy - c) for c in range(3)], 2) + 1) * 127.5).astype(np.uint8)
            path = tmp_path / f"p{k}.jpg"
            Image.fromarray(img).save(path, quality=95)
            z.write(path, path.name)
    init = tmp_path / "init.safetensors"
    save_model(set_mode(build("reprfn", scale=4, channels=8, blocks=1), "online"), init)
    out, run = tmp_path / "out", tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "experiments" / "gpu_session.py"), "--out", str(out), "--device", "cpu",
           "--pack", str(pack), "--data", str(tmp_path / "data"), "--run", str(run), "--budget-s", "2",
           "--bench-batch", "2", "--bench-steps", "1", "--no-compile",
           "--infer-sizes", "24x32", "--infer-rounds", "1",
           "--set", f"model.init={init}", "--set", "model.channels=8", "--set", "model.blocks=1",
           "--set", "train.batch_size=2", "--set", "train.patch_size=64", "--set", "val.dir=null",
           "--set", "train.checkpoint_every=5", "--set", "train.log_every=5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rates"]["2"] > 0 and summary["iters_planned"] >= 10
    assert summary["iterations"] >= 5  # trained (to the plan, or stopped at the time guard)
    assert {p.name for p in out.iterdir()} >= {"ema_train.safetensors", "log.csv", "speed.json", "summary.json",
                                               "inference.json"}
    rows = json.loads((out / "inference.json").read_text())["results"][0]["rows"]
    assert rows[0]["speedup"] == 1.0 and all(r["ms"] > 0 for r in rows) and len(rows) == 5
    ema = load_model(out / "ema_train.safetensors")
    assert ema.scale == 4 and sum(p.numel() for p in ema.parameters()) > 0


def test_the_benchmarks_find_the_package_where_it_is_only_copied():
    """On the GPU machine reprfn is not installed: the benchmarks the session runs get its src."""
    sys.path.insert(0, str(ROOT))
    from experiments.gpu_session import child_env

    assert child_env()["PYTHONPATH"].split(os.pathsep)[:2] == [str(ROOT / "src"), str(ROOT)]
