"""experiments/: the pruning operator, the docs generator, and one training row at a toy budget."""

from __future__ import annotations

import json

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
    set5 = shared_path("data", "benchmark", "Set5", "x4")
    monkeypatch.setitem(paper.BUDGET, "iters", 2)
    monkeypatch.setitem(paper.BUDGET, "patch_size", 64)
    monkeypatch.setattr(paper, "RESULTS", tmp_path / "results.json")
    monkeypatch.setattr(paper, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(paper, "B100", set5)  # keep the test short: Set5 twice
    monkeypatch.setattr(paper, "TRAIN_SETS", [str(shared_path("data", "train", "t91"))])
    monkeypatch.setattr(paper, "ROOT", tmp_path)  # the decoded-data cache goes under tmp_path
    paper.cmd_train(["reprfn-3x3"], threads=1)
    results = json.loads((tmp_path / "results.json").read_text())
    row = results["runs"]["reprfn-3x3"]
    assert results["budget"]["iters"] == 2 and row["patches_seen"] == 2 * paper.BUDGET["batch_size"]
    assert 5 < row["set5"]["psnr_y"] < 40 and row["set5"] == row["b100"]
    assert row["train_params"] == 401_504  # trained in deploy form: nothing to fold
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
    assert all(v > 0 for v in d["median_ms"].values())
