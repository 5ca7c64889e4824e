"""Precision and device choice (``runtime.hardware``), the bf16 engines, and prepared runners
reused across calls. bf16 is not fp32: its outputs are held to ``hardware.TOLERANCE["bf16"]``
against the float32 model on photo crops, tiles to 2 levels of the whole image."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import reprfn
import reprfn.runtime.hardware as hw
from reprfn.checkpoint import bundled_weights
from reprfn.errors import UsageError
from reprfn.export import image_batch, sample_image
from reprfn.images import read_image
from reprfn.runtime.engines import FusedCPUEngine, TorchEngine
from reprfn.runtime.openvino import open_openvino, openvino_available
from reprfn.runtime.prepare import prepare
from reprfn.runtime.run import run_pixels

needs_ov = pytest.mark.skipif(not openvino_available(), reason="openvino not installed")


@pytest.fixture(scope="module")
def model():
    return reprfn.load_model(bundled_weights(4))


@pytest.fixture()
def no_outside_engines(monkeypatch):
    monkeypatch.delenv("REPRFN_ENGINE", raising=False)


def test_auto_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(hw, "cpu_bf16_pays", lambda: True)
    assert hw.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(hw, "cpu_bf16_pays", lambda: False)
    assert hw.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert hw.resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert hw.resolve_precision("auto", torch.device("mps")) == "fp16"
    assert hw.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(UsageError, match="precision 'fp8'"):
        hw.resolve_precision("fp8", torch.device("cpu"))


def test_bf16_pays_with_amx_or_a_measured_gain(monkeypatch, tmp_path):
    """AMX: bf16 without measuring; AVX512-BF16 alone: a conv measured once per CPU, torch and
    thread count, remembered in the cache folder; no bf16 instructions: fp32, nothing measured."""
    monkeypatch.undo()  # the suite's pin of cpu_bf16_pays (conftest) is what is tested here
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path / "cache"))
    measured: list[float] = []
    gain = [3.0]

    def fake_gain() -> float:
        measured.append(gain[0])
        return gain[0]

    monkeypatch.setattr(hw, "conv_bf16_gain", fake_gain)
    monkeypatch.setattr(hw, "cpu_has_amx", lambda: True)
    assert hw.cpu_bf16_pays() and measured == []
    monkeypatch.setattr(hw, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not hw.cpu_bf16_pays() and measured == []
    monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert hw.cpu_bf16_pays() and hw.cpu_bf16_pays() and measured == [3.0]  # measured once, then read
    assert list(json.loads((tmp_path / "cache" / "bf16-gain.json").read_text()).values()) == [3.0]
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path / "other"))
    gain[0] = 1.2  # a CPU where bf16 convs barely pay: fp32 stays the default
    assert not hw.cpu_bf16_pays() and measured == [3.0, 1.2]
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("REPRFN_CACHE", str(blocked / "sub"))  # cannot be written: measured, not remembered
    assert not hw.cpu_bf16_pays() and not hw.cpu_bf16_pays() and len(measured) == 4


def test_a_onednn_isa_cap_below_amx_turns_amx_off(monkeypatch):
    """``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``) below AMX keeps PyTorch's convs off
    the matrix units: the policy follows the cap, not the CPU's flags."""
    for name in hw.ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))
    assert hw.onednn_isa_cap() is None and hw.cpu_has_amx()
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx512_core_bf16")
    assert hw.onednn_isa_cap() == "AVX512_CORE_BF16" and not hw.cpu_has_amx()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")  # the newer name wins
    assert hw.onednn_isa_cap() == "AVX512_CORE_AMX" and hw.cpu_has_amx()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "all")
    assert hw.onednn_isa_cap() is None and hw.cpu_has_amx()
    monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX10_1_512_AMX")
    assert not hw.cpu_has_amx()  # a cap cannot add what the CPU lacks


def test_the_bf16_gain_is_remembered_per_isa_cap(monkeypatch, tmp_path):
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    gains = iter([3.0, 0.7])
    monkeypatch.setattr(hw, "conv_bf16_gain", lambda: next(gains))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert hw.remembered_bf16_gain() == 3.0
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert hw.remembered_bf16_gain() == 0.7  # measured again under the cap, not read
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert hw.remembered_bf16_gain() == 3.0
    assert sorted(json.loads((tmp_path / "bf16-gain.json").read_text()).values()) == [0.7, 3.0]


def test_bf16_is_not_the_default_where_onednn_emulates_it(tmp_path):
    """A real process with oneDNN capped at AVX2 (no bf16 instructions, emulated in software):
    whatever this CPU is, ``auto`` is fp32 there."""
    code = ("import torch; from reprfn.runtime import hardware as hw; "
            "print(hw.resolve_precision('auto', torch.device('cpu')))")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "REPRFN_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "fp32"


def test_conv_bf16_gain_is_a_measurement():
    gain = hw.conv_bf16_gain(rounds=2)
    assert 0.05 < gain < 50  # a ratio of two real timings, whatever this CPU is


def test_cpu_flags_are_read_from_the_system():
    flags = hw.cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # Linux: the flags of /proc/cpuinfo, among them the basic ones of any x86 or Arm CPU
        assert flags & {"fpu", "sse2", "fp", "asimd"}


def test_auto_device_is_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hw, "mps_available", lambda: True)
    assert hw.resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hw.resolve_device("auto").type == "mps"
    monkeypatch.setattr(hw, "mps_available", lambda: False)
    assert hw.resolve_device("auto").type == "cpu"
    with pytest.raises(UsageError, match="mps was asked for"):
        hw.resolve_device("mps")
    with pytest.raises(UsageError, match="cuda was asked for"):
        hw.resolve_device("cuda")
    with pytest.raises(UsageError, match="unknown device"):
        hw.resolve_device("tpu")


def test_bf16_policy_on_the_cpu(model, no_outside_engines):
    net = prepare(model, "cpu", "bf16")
    assert isinstance(net.tiles, FusedCPUEngine) and net.tiles.precision == "bf16" and net.whole() is net.tiles
    assert net.tiles.name.endswith("-bf16") and "bf16" in net.describe()


def test_bf16_engine_is_close_to_fp32_and_leaves_the_model_alone(model, no_outside_engines):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = prepare(model, "cpu", "bf16")
    x = image_batch(2, 40, 52)
    with torch.inference_mode():
        got, want = net(x), model(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    diff = (got - want).abs()
    assert 0 < diff.max().item() <= hw.TOLERANCE["bf16"] and diff.mean().item() <= 2e-3
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_bf16_tiles_match_the_whole_image_within_two_levels(model, no_outside_engines):
    pixels = read_image(sample_image())[:120, :150]
    net = prepare(model, "cpu", "bf16")
    whole = run_pixels(net, pixels, tile=0)
    tiled = run_pixels(net, pixels, tile=48)
    assert whole.shape == tiled.shape == (480, 600, 3)
    assert np.abs(whole.astype(int) - tiled).max() <= 2


@needs_ov
def test_openvino_bf16_on_request_is_the_whole_image_engine_and_is_checked(model, monkeypatch, tmp_path):
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))
    monkeypatch.delenv("REPRFN_ENGINE", raising=False)
    assert prepare(model, "cpu", "bf16").whole_name is None  # the fused bf16 engine: measured faster than OpenVINO
    monkeypatch.setenv("REPRFN_ENGINE", "openvino")
    net = prepare(model, "cpu", "bf16")
    assert net.whole_name == "openvino-bf16"
    engine = open_openvino(model, net.info, precision="bf16")
    x = image_batch(1, 48, 64)
    with torch.inference_mode():
        assert (engine(x) - model(x)).abs().max().item() <= hw.TOLERANCE["bf16"]


def test_runners_are_prepared_once_per_model_and_weights(model, no_outside_engines):
    a = prepare(model, "cpu", "fp32")
    assert prepare(model, "cpu", "fp32") is a
    assert prepare(model, "cpu", "bf16") is not a
    other = reprfn.load_model(bundled_weights(4))  # equal weights, another object
    assert prepare(other, "cpu", "fp32") is not a
    with torch.no_grad():
        other.fea_conv.bias.add_(0.01)  # weights changed in place: prepared anew
    b = prepare(other, "cpu", "fp32")
    with torch.no_grad():
        other.fea_conv.bias.sub_(0.01)
    assert prepare(other, "cpu", "fp32") is not b


def test_api_default_precision_is_auto(model, monkeypatch, no_outside_engines):
    img = read_image(sample_image())[:60, :70]
    fp32 = reprfn.upscale(img, model=model, tile=0, precision="fp32")
    bf16 = reprfn.upscale(img, model=model, tile=0, precision="bf16")
    assert np.abs(fp32.astype(int) - bf16).max() > 0
    monkeypatch.setattr(hw, "cpu_bf16_pays", lambda: False)
    assert np.array_equal(reprfn.upscale(img, model=model, tile=0), fp32)
    monkeypatch.setattr(hw, "cpu_bf16_pays", lambda: True)
    assert np.array_equal(reprfn.upscale(img, model=model, tile=0), bf16)


def test_gpu_code_path_runs_here(model):
    """What ``--device cuda`` runs (the model under autocast, channels-last inputs), run on the CPU."""
    x = image_batch(1, 30, 34)
    with torch.inference_mode():
        want = model(x)
        exact = TorchEngine(model, "cpu", "fp32", channels_last=True)(x)
        low = TorchEngine(model, "cpu", "bf16", channels_last=True)(x)
    assert (exact - want).abs().max().item() <= 1e-5  # in the layout it was computed in (channels-last)
    assert low.dtype == torch.float32 and (low - want).abs().max().item() <= 5e-2


def test_runners_of_a_model_made_under_inference_mode_are_kept_too(no_outside_engines):
    with torch.inference_mode():  # its tensors keep no version counter: the weights are hashed instead
        made = reprfn.load_model(bundled_weights(4))
    assert prepare(made, "cpu", "fp32") is prepare(made, "cpu", "fp32")
