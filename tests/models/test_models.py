"""Whole models: registry, shapes, parameter counts, fusion and online training forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reprfn.models import RepBlock, build, fuse, names, set_mode
from reprfn.models.rep import ConvLReLU
from tests.helpers import randomize

SCALES = [2, 3, 4]
SIZES = [(15, 15), (33, 20)]  # ESA's stride-2 conv and 7x7 max-pool need at least 15 pixels


def tiny(name: str = "reprfn", scale: int = 4, **kw) -> nn.Module:
    kw = {"channels": 8, "blocks": 2, **kw}
    if name == "reprfn":
        kw.setdefault("esa_channels", 4)
    return build(name, scale=scale, **kw)


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("scale", SCALES)
def test_every_model_upscales(name, scale):
    model = tiny(name, scale, channels=16).eval()
    x = torch.rand(1, 3, 17, 19)
    with torch.no_grad():
        assert model(x).shape == (1, 3, 17 * scale, 19 * scale)


@pytest.mark.parametrize("name", names())
def test_grayscale_models(name):
    model = tiny(name, 2, in_channels=1, channels=16).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 16, 16)).shape == (1, 1, 32, 32)


def test_unknown_model_and_scale():
    with pytest.raises(ValueError, match="unknown model"):
        build("edsr")
    with pytest.raises(ValueError, match="unsupported scale"):
        build("reprfn", scale=5)


@pytest.mark.parametrize(
    "name,scale,params",
    [
        ("reprfn", 4, 401_504),  # the authors' deploy structure, as published
        ("rfdn", 4, 433_448),  # the NTIRE baseline RFDN (0.433 M)
        ("imdn", 4, 715_176),  # IMDN (0.715 M)
    ],
)
def test_published_parameter_counts(name, scale, params):
    model = build(name, scale=scale)
    if name == "reprfn":
        model = model.fuse()
    assert sum(p.numel() for p in model.parameters()) == params


def test_fused_reprfn_x4_structure():
    fused = build("reprfn").fuse()
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 39  # 1 + 4 x (3 + 1 + 5 ESA) + 1 + 1
    assert not any(isinstance(m, RepBlock) for m in fused.modules())
    assert sum(isinstance(m, ConvLReLU) for m in fused.modules()) == 12
    assert fused.form == "deploy" and not fused.training


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("h,w", SIZES)
def test_fused_equals_branches_float64(scale, h, w):
    model = randomize(set_mode(tiny(scale=scale), "branches").double()).eval()
    x = torch.rand(2, 3, h, w, dtype=torch.float64)
    with torch.no_grad():
        ref, out = model(x), model.fuse()(x)
    assert ref.abs().max() > 0.1  # not a degenerate network
    assert (out - ref).abs().max() <= 1e-10


@pytest.mark.parametrize("scale", SCALES)
def test_fused_equals_branches_float32(scale):
    model = randomize(set_mode(tiny(scale=scale, channels=16), "branches")).eval()
    x = torch.rand(1, 3, 33, 20)
    with torch.no_grad():
        ref, out = model(x), model.fuse()(x)
    assert (out - ref).abs().max() <= 1e-5


def test_fuse_is_idempotent_and_leaves_the_input_alone():
    model = randomize(tiny())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    once = fuse(model)
    twice = fuse(once)
    assert model.form == "train" and any(isinstance(m, RepBlock) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert once.state_dict().keys() == twice.state_dict().keys()
    assert all(torch.equal(v, twice.state_dict()[k]) for k, v in once.state_dict().items())


@pytest.mark.parametrize("name", ["rfn-rfb3", "rfdn", "imdn"])
def test_fuse_is_a_no_op_for_models_without_repblocks(name):
    model = randomize(tiny(name, channels=16)).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.fuse()(x), model(x))


def test_online_is_the_default_and_matches_branches_with_gradients():
    model = randomize(tiny(channels=12))
    assert all(m.mode == "online" for m in model.modules() if isinstance(m, RepBlock))
    x = torch.rand(2, 3, 20, 24)
    results = {}
    for mode in ("branches", "online"):
        set_mode(model, mode)
        out = model(x)
        grads = torch.autograd.grad(out.square().mean(), list(model.parameters()))
        results[mode] = (out, grads)
    (out_b, g_b), (out_o, g_o) = results["branches"], results["online"]
    assert (out_o - out_b).abs().max() <= 1e-5
    scale = max(g.abs().max() for g in g_b)
    for (name, _), a, b in zip(model.named_parameters(), g_o, g_b, strict=True):
        assert (a - b).abs().max() <= 1e-4 * scale, name


def test_set_mode_rejects_unknown():
    with pytest.raises(ValueError):
        set_mode(tiny(), "fast")  # type: ignore[arg-type]


def test_rfn_variants_differ_only_in_residuals():
    """Same weights, different wiring: the four variants compute four different functions."""
    base = randomize(tiny("rfn-plain", channels=16)).eval()
    x = torch.rand(1, 3, 16, 16)
    outs = []
    for variant in ("rfn-plain", "rfn-rfb1", "rfn-rfb2", "rfn-rfb3"):
        model = tiny(variant, channels=16).eval()
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            outs.append(model(x))
    for i in range(4):
        for j in range(i + 1, 4):
            assert (outs[i] - outs[j]).abs().max() > 1e-4


@pytest.mark.parametrize("variant", ["reprfn-noedge", "reprfn-esafull", "reprfn-1x1"])
def test_reprfn_ablations_fuse_exactly(variant):
    model = randomize(tiny(variant, 3, esa_channels=4).double()).eval()
    set_mode(model, "branches")
    x = torch.rand(1, 3, 17, 16, dtype=torch.float64)
    fused = model.fuse()
    assert fused.arch == variant and fused.form == "deploy"
    assert not any(isinstance(m, RepBlock) for m in fused.modules())
    with torch.no_grad():
        assert (model(x) - fused(x)).abs().max() < 1e-10


def test_reprfn_ablations_change_only_what_they_name():
    def keys(name: str) -> set[str]:
        return {k[len("blocks.0."):] for k in tiny(name).state_dict() if k.startswith("blocks.0.")}

    base = keys("reprfn")
    assert base - keys("reprfn-noedge") == {k for k in base if ".edges." in k} != set()
    assert keys("reprfn-noedge") < base
    assert keys("reprfn-esafull") - base == {f"esa.{c}.{p}" for c in ("conv_max", "conv3_") for p in ("weight", "bias")}
    assert {k.split(".")[0] for k in keys("reprfn-1x1") - base} == {"distill", "fusion"}
    plain = tiny("reprfn-3x3")
    assert plain.form == "deploy" and tiny("reprfn").fuse().state_dict().keys() == plain.state_dict().keys()


def test_reprfn_ablation_checkpoints_round_trip(tmp_path):
    from reprfn.checkpoint import load_model, save_model

    model = randomize(tiny("reprfn-1x1", 2, esa_channels=4)).eval()
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert loaded.arch == "reprfn-1x1" and torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": 0}, "channels must be a positive integer, got 0"),
    ({"blocks": -1}, "blocks must be a positive integer, got -1"),
    ({"channels": 8.5}, "channels must be a positive integer, got 8.5"),
    ({"esa_channels": 0}, "esa_channels must be a positive integer, got 0"),
])
def test_sizes_that_build_no_network_are_refused(kwargs, message):
    """channels=0 and blocks=-1 built a model of empty convs (or no blocks) without a word."""
    with pytest.raises(ValueError) as info:
        build("reprfn", scale=2, **kwargs)
    assert str(info.value) == message
