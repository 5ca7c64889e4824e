"""reprfn profile: the NTIRE efficient-SR counter's figures, what it misses, memory and runtime."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reprfn
from reprfn.cli import main
from reprfn.models import build, names
from reprfn.profile import count, parse_input, peak_memory_mb, profile_model, runtime
from tests.helpers import shared_path


def test_fused_reprfn_x4_matches_the_published_figures():
    model = build("reprfn", form="deploy")
    c = count(model, "3x180x320")
    assert c.params == 401_504
    assert (c.macs, c.activations, c.convs) == (22_174_424_064, 71_960_256, 39)
    assert f"{c.macs / 1e9:.2f} G, {c.activations / 1e6:.2f} M" == "22.17 G, 71.96 M"
    c = count(model, "3x256x256")
    assert (c.macs, c.activations, c.convs) == (25_230_346_240, 81_880_192, 39)
    assert f"{c.macs / 1e9:.2f} G, {c.activations / 1e6:.2f} M" == "25.23 G, 81.88 M"


def test_ntire_rfdn_matches_the_challenge_baseline():
    c = count(build("rfdn"), "3x256x256")
    assert f"{c.params / 1e6:.3f}" == "0.433"
    assert (c.macs, c.activations, c.convs) == (27_102_622_560, 112_034_240, 64)
    assert f"{c.macs / 1e9:.2f} G, {c.activations / 1e6:.2f} M" == "27.10 G, 112.03 M"


def test_the_counter_conventions_on_a_hand_counted_net():
    """conv MACs without bias, +1 per ReLU-family output (module or functional); nothing else."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)  # 8*10*12 outputs x 27
            self.act = nn.LeakyReLU(0.1)
            self.b = nn.Conv2d(8, 4, 1, bias=False)  # 4*10*12 outputs x 8
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)  # 4*10*12 outputs x 9

        def forward(self, x):
            h = self.act(self.a(x))
            h = torch.relu(self.b(h))
            return torch.sigmoid(self.dw(h)) * h + F.max_pool2d(h, 3, 1, 1)

    c = count(Net(), "3x10x12")
    px = 10 * 12
    assert c.conv_macs == px * (8 * 27 + 4 * 8 + 4 * 9)
    assert c.activation_ops == px * (8 + 4)
    assert c.macs == c.conv_macs + c.activation_ops
    assert c.activations == px * (8 + 4 + 4) and c.convs == 3
    assert c.uncounted["conv_bias"]["elements"] == px * (8 + 4)  # b has no bias
    assert c.uncounted["sigmoid"]["ops"] == px * 4 and c.uncounted["products"]["ops"] == px * 4
    assert c.uncounted["max_pool"]["ops"] == px * 4 * 8


def test_uncounted_ops_of_reprfn_name_esa_parts():
    c = count(build("reprfn", form="deploy"), "3x180x320")
    calls = {kind: v["calls"] for kind, v in c.uncounted.items()}
    # one of each per ESA (4 blocks), a bias per conv (39), 4 local + 4 ESA + 1 global residual sums
    assert calls == {"conv_bias": 39, "interpolation": 4, "max_pool": 4, "pixel_shuffle": 1, "products": 4,
                     "sigmoid": 4, "sums": 9}
    assert c.uncounted["products"]["elements"] == 4 * 48 * 180 * 320
    assert round(c.uncounted_ops / 1e6) == 131 and f"{c.uncounted_ops / c.macs:.1%}" == "0.6%"  # docs/performance.md


@pytest.mark.parametrize("name", names())
def test_every_registered_model_in_both_forms(name):
    train = build(name, scale=2)
    fused = train.fuse()
    ct, cf = count(train, "3x40x36"), count(fused, "3x40x36")
    assert cf.macs > 0 and cf.convs > 0 and cf.activations > 0
    if name == "reprfn":
        reprfn.models.set_mode(train, "branches")
        cb = count(train, "3x40x36")
        assert cf.convs == 39 and cb.convs == 39 + 12 * (9 - 1) + 12 * 3  # 8 more branch convs, edge 1x1+dw
        assert cb.macs > 2 * cf.macs and ct.params > 3 * cf.params
    elif name.startswith("reprfn") and train.form == "train":
        # RepRFN ablations: online fusion costs what the fused form costs
        assert (ct.macs, ct.activations, ct.convs) == (cf.macs, cf.activations, cf.convs)
        assert ct.params > cf.params
    else:
        assert (ct.macs, ct.activations, ct.convs, ct.params) == (cf.macs, cf.activations, cf.convs, cf.params)


def test_the_authors_deploy_checkpoint_counts_like_the_paper():
    model = reprfn.load_model(shared_path("weights", "official", "reprfn_ntire_x4.pth"))
    c = count(model, "3x180x320")
    assert (c.params, c.macs, c.activations, c.convs) == (401_504, 22_174_424_064, 71_960_256, 39)


def test_the_ntire_rfdn_checkpoint_counts_like_the_challenge():
    model = reprfn.load_model(shared_path("weights", "official", "rfdn_ntire_x4.pth"))
    c = count(model, "3x256x256")
    assert (c.params, c.macs, c.activations, c.convs) == (433_448, 27_102_622_560, 112_034_240, 64)


def test_parse_input():
    assert parse_input("3x180x320") == (3, 180, 320)
    assert parse_input("2x1x8x8") == (2, 1, 8, 8)
    for bad in ("180x320", "3x0x4", "axbxc"):
        with pytest.raises(ValueError):
            parse_input(bad)


def test_peak_memory_of_a_forward_grows_with_the_input():
    model = build("reprfn", form="deploy")
    small = peak_memory_mb(model, "3x48x48")
    detail = peak_memory_mb(model, "3x160x160", detail=True)
    # the x4 output alone is 3*640*640 floats = 4.7 MB; the forward holds several 48-channel maps
    assert detail["peak_memory_mb"] > detail["output_mb"] > 4
    assert detail["peak_memory_mb"] > small >= 0
    assert detail["process_before_mb"] > 50  # the process with torch and the model loaded


def test_runtime_reports_median_and_threads(monkeypatch):
    import reprfn.profile.measure as profile

    clock = [0.0]
    costs = iter([50.0, 7.0, 1.0, 4.0])  # ms: one warm-up, then three timed forwards

    class Timed(nn.Module):
        def forward(self, x):
            clock[0] += next(costs) / 1000
            return x

    with monkeypatch.context() as m:
        m.setattr(profile.time, "perf_counter", lambda: clock[0])
        r = runtime(Timed(), "3x24x24", runs=3, warmup=1)
    assert r["median_ms"] == pytest.approx(4.0) and r["min_ms"] == pytest.approx(1.0)
    assert (r["runs"], r["warmup"], r["threads"], r["device"]) == (3, 1, torch.get_num_threads(), "cpu")
    real = runtime(build("reprfn", form="deploy"), "3x24x24", runs=2, warmup=1)
    assert 0 < real["min_ms"] <= real["median_ms"] < 60_000  # a real forward: finite, not absurd


def test_cli_profile_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", "reprfn", "--input", "3x32x40", "--runtime", "--runs", "1", "--warmup", "0",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MACs" in text and "threads" in text and "not counted" in text
    r = json.loads(out.read_text())
    c = count(build("reprfn", form="deploy"), "3x32x40")  # what the JSON must say: the counter's figures
    assert (r["params"], r["macs"], r["activations"], r["convs"]) == (401_504, c.macs, c.activations, 39)
    assert r["uncounted"] == json.loads(json.dumps(c.uncounted)) and r["input"] == [3, 32, 40]
    assert r["form"] == "deploy" and r["runtime"]["threads"] == torch.get_num_threads()
    # measured figures: finite and plausible (the x4 output alone is 3 x 128 x 160 floats, 0.23 MB)
    assert 0.2 < r["peak_memory_mb"] < 4000 and r["peak_memory_mb"] == r["memory"]["peak_memory_mb"]
    assert 0 < r["runtime_ms"] == r["runtime"]["median_ms"] < 60_000
    assert 0 < r["runtime_default_path"]["median_ms"] < 60_000
    assert r["runtime_default_path"]["precision"] == "fp32"  # the protocol's default


def test_cli_profile_runtime_precision(tmp_path, capsys):
    """``--precision bf16`` times the bf16 upscale path (its engine named), the counts stay fp32's."""
    out = tmp_path / "p.json"
    assert main(["profile", "reprfn", "--input", "3x24x32", "--runtime", "--runs", "1", "--warmup", "0",
                 "--no-memory", "--precision", "bf16", "--json", str(out)]) == 0
    assert "bf16" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["runtime_default_path"]["precision"] == "bf16" and "bf16" in r["runtime_default_path"]["path"]
    assert r["macs"] == count(build("reprfn", form="deploy"), "3x24x32").macs


def test_cli_profile_train_form_and_errors(tmp_path, capsys):
    assert main(["profile", "reprfn", "--form", "train", "--input", "3x24x24", "--no-memory"]) == 0
    assert "branches" in capsys.readouterr().out
    fused = tmp_path / "fused.safetensors"
    reprfn.save_model(build("reprfn", form="deploy"), fused)
    assert main(["profile", str(fused), "--form", "train", "--no-memory"]) == 2
    assert "deploy-form" in capsys.readouterr().err
    assert main(["profile", "reprfn", "--input", "3x0x2", "--no-memory"]) == 2
    assert main(["profile", "no-such-model", "--no-memory"]) == 2


def test_profile_model_api_without_memory():
    r = profile_model(build("imdn"), "3x32x32", memory=False)
    assert r["peak_memory_mb"] is None and r["runtime_ms"] is None and r["arch"] == "imdn"
