"""Every fusion formula against the branch it replaces, and RepBlock's three forms against each other."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprfn.models.rep import (
    EDGE_KERNELS,
    ConvLReLU,
    EdgeBranch,
    RepBlock,
    absorb_deploy_state,
    absorb_kernel,
    fuse_1x1_into_3x3,
    fuse_edge_branch,
    identity_kernel,
    pad_to_3x3,
    sum_kernels,
)
from tests.helpers import randomize

SIZES = [(1, 1), (7, 13), (33, 20)]
C_IN, C_OUT = 5, 6


def _x(h: int, w: int, c: int = C_IN) -> torch.Tensor:
    return torch.randn(2, c, h, w, dtype=torch.float64)


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("kh,kw", [(1, 1), (1, 3), (3, 1), (3, 3)])
def test_pad_to_3x3_matches_smaller_conv(h, w, kh, kw):
    conv = randomize(nn.Conv2d(C_IN, C_OUT, (kh, kw), padding=(kh // 2, kw // 2)).double())
    x = _x(h, w)
    fused = F.conv2d(x, pad_to_3x3(conv.weight), conv.bias, padding=1)
    torch.testing.assert_close(fused, conv(x), rtol=0, atol=1e-12)


def test_pad_to_3x3_rejects_even_or_large():
    with pytest.raises(ValueError):
        pad_to_3x3(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError):
        pad_to_3x3(torch.zeros(1, 1, 5, 5))


@pytest.mark.parametrize("h,w", SIZES)
def test_fuse_1x1_into_3x3(h, w):
    expand = randomize(nn.Conv2d(C_IN, 2 * C_IN, 1, bias=False).double(), seed=1)
    conv3 = randomize(nn.Conv2d(2 * C_IN, C_OUT, 3, padding=1, bias=False).double(), seed=2)
    x = _x(h, w)
    fused = F.conv2d(x, fuse_1x1_into_3x3(expand.weight, conv3.weight), padding=1)
    torch.testing.assert_close(fused, conv3(expand(x)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("h,w", SIZES)
def test_identity_kernel(h, w):
    x = _x(h, w)
    out = F.conv2d(x, identity_kernel(C_IN, dtype=torch.float64), padding=1)
    assert torch.equal(out, x)


@pytest.mark.parametrize("kind", sorted(EDGE_KERNELS))
@pytest.mark.parametrize("h,w", SIZES)
def test_fuse_edge_branch_exact_at_borders(kind, h, w):
    branch = randomize(EdgeBranch(C_IN, C_OUT, kind).double(), seed=3, gain=2.0)
    x = _x(h, w)
    kernel, bias = branch.kernel_bias()
    fused = F.conv2d(x, kernel, bias, padding=1)
    torch.testing.assert_close(fused, branch(x), rtol=0, atol=1e-12)


def test_edge_branch_bias_padding_matters():
    """Zero padding of the 1x1 output would break border exactness: the test above can fail."""
    branch = randomize(EdgeBranch(C_IN, C_OUT, "laplacian").double(), seed=4, gain=2.0)
    x = _x(9, 9)
    y0 = F.pad(branch.conv(x), (1, 1, 1, 1))  # zeros, not b0
    w = (branch.scale.view(-1, 1, 1) * branch.edge.double()).unsqueeze(1)
    zero_padded = F.conv2d(y0, w, branch.bias, groups=C_OUT)
    kernel, bias = fuse_edge_branch(branch.conv.weight, branch.conv.bias, branch.scale, branch.edge.double(),
                                    branch.bias)
    fused = F.conv2d(x, kernel, bias, padding=1)
    border = (fused - zero_padded).abs()
    assert border[..., 1:-1, 1:-1].max() < 1e-12  # interior agrees
    assert border.max() > 1e-6  # the border does not


def test_edge_kernels_are_the_ecbsr_operators():
    sx = torch.tensor(EDGE_KERNELS["sobel_x"])
    assert torch.equal(sx.T, torch.tensor(EDGE_KERNELS["sobel_y"]))
    assert torch.tensor(EDGE_KERNELS["laplacian"]).sum() == 0 and sx.sum() == 0


def test_sum_kernels_handles_missing_biases():
    k = torch.ones(2, 2, 3, 3)
    kernel, bias = sum_kernels([(k, None), (2 * k, None)])
    assert torch.equal(kernel, 3 * k) and torch.equal(bias, torch.zeros(2))
    kernel, bias = sum_kernels([(k, torch.ones(2)), (k, None), (k, torch.full((2,), 2.0))])
    assert torch.equal(bias, torch.full((2,), 3.0))


@pytest.mark.parametrize("c_in,c_out", [(C_IN, C_IN), (C_IN, C_OUT)])
@pytest.mark.parametrize("h,w", SIZES)
def test_repblock_deploy_equals_branches(c_in, c_out, h, w):
    block = randomize(RepBlock(c_in, c_out, mode="branches").double(), seed=5)
    x = _x(h, w, c_in)
    deploy = block.to_deploy()
    assert isinstance(deploy, ConvLReLU) and type(deploy.conv) is nn.Conv2d
    torch.testing.assert_close(deploy(x), block(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["branches", "online"])
def test_repblock_identity_branch(mode):
    """With every weight zero only the identity branch is left (when in == out)."""
    x = _x(6, 7).abs()  # positive, so LeakyReLU is the identity too
    for c_out, expected in ((C_IN, x), (C_OUT, torch.zeros(2, C_OUT, 6, 7, dtype=torch.float64))):
        block = RepBlock(C_IN, c_out, mode=mode).double()
        for p in block.parameters():
            p.data.zero_()
        assert torch.equal(block(x), expected)


@pytest.mark.parametrize("h,w", SIZES)
def test_repblock_online_equals_branches_with_gradients(h, w):
    block = randomize(RepBlock(8, 8, mode="branches"), seed=7)
    x = torch.randn(2, 8, h, w)
    out_b = block(x)
    grads_b = torch.autograd.grad(out_b.square().sum(), list(block.parameters()))
    block.mode = "online"
    out_o = block(x)
    grads_o = torch.autograd.grad(out_o.square().sum(), list(block.parameters()))
    assert (out_o - out_b).abs().max() <= 1e-5
    # Relative to the gradient scale of the block: some true gradients are exactly zero (e.g. a
    # Sobel scale on a 1x1 image sees only the kernel centre, which is 0) and float32 noise there
    # has no meaningful relative error of its own.
    scale = max(g.abs().max() for g in grads_b)
    for (name, _), g_o, g_b in zip(block.named_parameters(), grads_o, grads_b, strict=True):
        # An edge branch's b0, padded around itself and convolved with a zero-sum operator, adds
        # nothing: its true gradient is zero, so it is only held to the closeness check below.
        dead = name.startswith("edges.") and name.endswith("conv.bias")
        if h > 1 and not dead:
            assert g_o.abs().max() > 0, name  # every other branch parameter receives a gradient
        assert (g_o - g_b).abs().max() <= 1e-4 * scale, name


def test_repblock_rejects_unknown_mode():
    block = RepBlock(4, 4, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown RepBlock mode"):
        block(torch.zeros(1, 4, 3, 3))


def test_absorb_kernel_sets_the_fused_kernel_exactly():
    torch.manual_seed(3)
    block = RepBlock(6, 6).double()
    kernel, bias = torch.randn(6, 6, 3, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    absorb_kernel(block, kernel, bias)
    got_kernel, got_bias = block.kernel_bias()
    torch.testing.assert_close(got_kernel, kernel, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_bias, bias, rtol=0, atol=1e-12)


def test_deploy_model_continues_in_training_form_with_the_same_function():
    from reprfn.models import build

    torch.manual_seed(0)
    deploy = build("reprfn", scale=2, channels=8, blocks=2).fuse().double()
    for p in deploy.parameters():  # a trained-looking deploy model, unlike any fresh training form
        p.data.add_(0.05 * torch.randn_like(p))
    train_form = build("reprfn", scale=2, channels=8, blocks=2).double()
    state = deploy.state_dict()
    train_form.load_state_dict({k: v for k, v in state.items() if k in train_form.state_dict()}, strict=False)
    names = absorb_deploy_state(train_form, state)
    assert len(names) == sum(isinstance(m, RepBlock) for m in train_form.modules()) > 0
    x = torch.rand(1, 3, 37, 29, dtype=torch.float64)
    torch.testing.assert_close(train_form(x), deploy(x), rtol=0, atol=1e-10)
