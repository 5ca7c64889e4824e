"""experiments/: the pruning operator, the docs generator, and one training row at a toy budget."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments import paper, report
from tests.helpers import shared_path


def test_prune_filters_zeroes_the_smallest_l1_filters_only():
    conv = torch.nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        for i, s in enumerate([3.0, 0.1, 2.0, 0.2]):
            conv.weight[i] = s
            conv.bias[i] = s
    paper.prune_filters(conv, 0.5)
    assert conv.weight.abs().sum(dim=(1, 2, 3)).tolist() == [3.0 * 18, 0.0, 2.0 * 18, 0.0]
    assert conv.bias.tolist() == [3.0, 0.0, 2.0, 0.0]


def test_fill_replaces_only_between_markers_and_requires_them():
    text = "intro\n<!-- t:begin -->\nold\n<!-- t:end -->\noutro"
    assert report.fill(text, "t", "new") == "intro\n<!-- t:begin -->\nnew\n<!-- t:end -->\noutro"
    with pytest.raises(ValueError, match="markers"):
        report.fill("no markers", "t", "x")


def fake_results() -> dict:
    run = {"set5": {"psnr_y": 30.5, "ssim_y": 0.86}, "b100": {"psnr_y": 26.9, "ssim_y": 0.71},
           "train_params": 1234, "iters": 3}
    names = [n for rows in paper.TABLES.values() for n in rows]
    cx = {"params": 400_000, "macs": 22e9, "activations": 7e7, "convs": 39, "peak_memory_mb": 300.0,
          "runtime_ms": 250.0, "threads": 2}
    return {
        "budget": paper.BUDGET,
        "runs": {n: {**run, "seed": i, "set5": {"psnr_y": 30.0 + i / 10, "ssim_y": 0.86}} for i, n in enumerate(names)},
        "complexity": {n: cx for n in names},
        "pruning": {"fraction": 0.5, "set5_psnr_y": 30.0,
                    "rows": [{"block": f"B{b}", "conv": c, "drop_db": d * b} for b in (1, 2)
                             for c, d in (("c1_d", 0.01), ("esa.conv3", 0.5))]},
        "deploy": {"input": "3x180x320", "threads": 2, "rounds": 3,
                   "median_ms": {"reprfn|eager, deploy form": 300.0, "rfdn|eager, deploy form": 600.0}},
    }


def test_write_docs_fills_every_table_from_the_results(tmp_path):
    pytest.importorskip("matplotlib")
    doc = tmp_path / "experiments.md"
    doc.write_text(paper.DOC.read_text())
    report.write_docs(fake_results(), doc)
    text = doc.read_text()
    assert "| RFN-RFB3 (both) | 400,000 | 22.00 | 70.00 | 39 | 300.0 | 250.0 |" in text
    assert "| `esa.conv3` | 0.750 | 0.500 | 1.000 |" in text  # ranked first: the largest mean drop
    assert text.index("`esa.conv3`") < text.index("`c1_d`")
    assert "| eager, deploy form | 300 | 600 |" in text and "| scheme | RepRFN | RFDN |" in text
    assert "RepRFN trained with seeds" in text and "spread 0." in text
    assert (tmp_path / "experiments_table1.png").stat().st_size > 10_000
    assert (tmp_path / "experiments_pruning.png").stat().st_size > 5_000


def test_one_training_row_at_a_toy_budget(tmp_path, monkeypatch):
    from PIL import Image

    from reprfn.checkpoint import load_model
    from reprfn.evaluate import evaluate_dataset

    set5 = shared_path("data", "benchmark", "Set5", "x4")
    b100 = tmp_path / "b100"  # two B100 photos, cropped: a short test, and not Set5
    b100.mkdir()
    for src in sorted(shared_path("data", "benchmark", "B100", "HR").glob("*.png"))[:2]:
        Image.open(src).crop((0, 0, 96, 80)).save(b100 / src.name)
    monkeypatch.setitem(paper.BUDGET, "iters", 2)
    monkeypatch.setitem(paper.BUDGET, "patch_size", 64)
    monkeypatch.setattr(paper, "RESULTS", tmp_path / "results.json")
    monkeypatch.setattr(paper, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(paper, "SET5", set5)
    monkeypatch.setattr(paper, "B100", b100)
    monkeypatch.setattr(paper, "TRAIN_SETS", [str(shared_path("data", "train", "t91"))])
    monkeypatch.setattr(paper, "ROOT", tmp_path)  # the decoded-data cache goes under tmp_path
    paper.cmd_train(["reprfn-3x3"], threads=1)
    results = json.loads((tmp_path / "results.json").read_text())
    row = results["runs"]["reprfn-3x3"]
    assert results["budget"]["iters"] == 2 and row["patches_seen"] == 2 * paper.BUDGET["batch_size"]
    assert row["train_params"] == 401_504  # trained in deploy form: nothing to fold
    # each column is the trained model measured on its own data set, as `reprfn eval` measures it
    model = load_model(tmp_path / "runs" / "reprfn-3x3" / "final_fused.safetensors")
    for key, folder in (("set5", set5), ("b100", b100)):
        r = evaluate_dataset(model, folder, 4)
        assert not r.errors and len(r.images) == (5 if key == "set5" else 2)
        assert row[key] == {"psnr_y": round(r.mean("psnr_y"), 4), "ssim_y": round(r.mean("ssim_y"), 5)}, key
    assert row["set5"] != row["b100"]
    paper.cmd_train(["reprfn-3x3"], threads=1)  # measured at this budget: not trained again
    assert json.loads((tmp_path / "results.json").read_text()) == results


def test_deploy_times_every_scheme_of_every_model(tmp_path, monkeypatch):
    monkeypatch.setattr(paper, "RESULTS", tmp_path / "results.json")
    monkeypatch.setattr(paper, "RUNS_DIR", tmp_path / "runs")  # no trained rows: untrained models
    paper.cmd_deploy(rounds=1, size=(24, 24))
    d = json.loads((tmp_path / "results.json").read_text())["deploy"]
    assert d["input"] == "3x24x24" and d["rounds"] == 1
    schemes = {k.split("|")[1] for k in d["median_ms"] if k.startswith("rfdn|")}
    assert {"eager, deploy form", "TorchScript (frozen)", "ONNX Runtime", "reprfn fast PyTorch path"} <= schemes
    assert "reprfn|eager, training form (nine branches)" in d["median_ms"]
    # real timings of a 24x24 input: finite, and neither zero nor absurd (the medians themselves are
    # checked with a fake clock in test_interleaved_timing_takes_the_median_of_each_callable)
    assert all(math.isfinite(v) and 0 < v < 60_000 for v in d["median_ms"].values()), d["median_ms"]


def test_interleaved_timing_takes_the_median_of_each_callable(monkeypatch):
    clock = [0.0]
    costs = {"a": iter([100.0, 5.0, 1.0, 3.0]), "b": iter([100.0, 2.0, 8.0, 4.5])}  # warm-up, then 3 rounds
    calls = []

    def timed(name):
        def run(x):
            calls.append(name)
            clock[0] += next(costs[name]) / 1000
        return run

    monkeypatch.setattr(paper.time, "perf_counter", lambda: clock[0])
    assert paper.interleaved_ms({"a": timed("a"), "b": timed("b")}, None, rounds=3) == {"a": 3.0, "b": 4.5}
    assert calls == ["a", "b"] * 4  # one warm-up each, then each callable once per round, in turn
