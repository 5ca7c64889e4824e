"""RepBlock: the nine-branch training block of RepRFN and the maths that folds it into one 3x3 conv.

Every fusion step is a small pure function of weights, so each one can be tested against the
branch it replaces. `RepBlock` uses the same functions for three things:

* ``mode="branches"``: the literal sum of the nine branches (the paper's training form);
* ``mode="online"``: build the equivalent 3x3 kernel from the branch weights on every call and
  run a single conv; same function and gradients, a fraction of the compute;
* ``to_deploy()``: the frozen equivalent, a real ``nn.Conv2d`` followed by LeakyReLU(0.05).
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from functools import reduce
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import SRModel, conv_act

Mode = Literal["branches", "online"]
M = TypeVar("M", bound=nn.Module)
LRELU_SLOPE = 0.05

# Fixed edge operators of ECBSR, written as 3x3 kernels.
EDGE_KERNELS: dict[str, tuple[tuple[float, ...], ...]] = {
    "sobel_x": ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0)),
    "sobel_y": ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0)),
    "laplacian": ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0)),
}


# ----------------------------------------------------------------------------------------------
# Fusion maths: pure functions of weights. Kernels are (out, in, kh, kw), biases (out,).
# ----------------------------------------------------------------------------------------------


def pad_to_3x3(kernel: Tensor) -> Tensor:
    """Centre a 1x1, 1x3 or 3x1 kernel in a 3x3 one (exact: the conv used padding (kh//2, kw//2))."""
    kh, kw = kernel.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0 or kh > 3 or kw > 3:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in 3x3")
    ph, pw = (3 - kh) // 2, (3 - kw) // 2
    return F.pad(kernel, (pw, pw, ph, ph))


def fuse_1x1_into_3x3(k1x1: Tensor, k3x3: Tensor) -> Tensor:
    """Kernel of ``conv3x3(conv1x1(x))`` when neither conv has a bias.

    k1x1: (mid, in, 1, 1), k3x3: (out, mid, 3, 3) -> (out, in, 3, 3). Exact at borders because the
    1x1 conv of a zero-padded input is zero, the same padding the 3x3 conv sees.
    """
    return torch.einsum("omhw,mi->oihw", k3x3, k1x1[:, :, 0, 0])


def identity_kernel(channels: int, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """3x3 kernel of the identity map on ``channels`` channels."""
    kernel = torch.zeros(channels, channels, 3, 3, dtype=dtype, device=device)
    idx = torch.arange(channels, device=device)
    kernel[idx, idx, 1, 1] = 1.0
    return kernel


def fuse_edge_branch(
    k0: Tensor, b0: Tensor, scale: Tensor, edge: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor]:
    """Kernel and bias of ECBSR's ``dwconv3x3(pad_with_b0(conv1x1(x; k0, b0)); scale*edge) + bias``.

    k0: (out, in, 1, 1), b0: (out,), scale: (out,), edge: (3, 3), bias: (out,).
    Because the 1x1 output is padded with b0 rather than zeros, the depthwise conv always sees b0
    outside the image, so the bias term ``b0 * sum(scale * edge)`` holds at the borders too.
    """
    depthwise = scale.view(-1, 1, 1) * edge  # (out, 3, 3)
    kernel = depthwise.unsqueeze(1) * k0  # (out, 1, 3, 3) * (out, in, 1, 1)
    return kernel, b0 * depthwise.sum(dim=(1, 2)) + bias


def sum_kernels(pairs: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor]:
    """Sum (kernel, bias) pairs of parallel 3x3 branches; a None bias counts as zero."""
    kernel: Tensor = reduce(operator.add, (k for k, _ in pairs))
    biases = [b for _, b in pairs if b is not None]
    if not biases:  # no branch had a bias
        return kernel, torch.zeros(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
    return kernel, reduce(operator.add, biases)


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class EdgeBranch(nn.Module):
    """ECBSR edge branch: 1x1 conv, then a fixed edge operator times a learned per-channel scale.

    The 1x1 output is padded with its own bias (not zeros) so that the folded 3x3 conv, which pads
    its input with zeros, is exact at image borders.
    """

    edge: Tensor  # the fixed operator, a buffer

    def __init__(self, in_channels: int, out_channels: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.scale = nn.Parameter(torch.randn(out_channels) * 1e-3)
        self.bias = nn.Parameter(torch.randn(out_channels) * 1e-3)
        self.register_buffer("edge", torch.tensor(EDGE_KERNELS[kind]), persistent=False)

    def conv_bias(self) -> Tensor:
        """b0, the 1x1 conv's bias (always built with one)."""
        assert self.conv.bias is not None
        return self.conv.bias

    def forward(self, x: Tensor) -> Tensor:
        b0 = self.conv_bias().view(1, -1, 1, 1)
        y = F.pad(F.conv2d(x, self.conv.weight), (1, 1, 1, 1)) + b0  # padded with b0
        weight = (self.scale.view(-1, 1, 1) * self.edge).unsqueeze(1)
        return F.conv2d(y, weight, self.bias, groups=weight.shape[0])

    def kernel_bias(self) -> tuple[Tensor, Tensor]:
        return fuse_edge_branch(
            self.conv.weight, self.conv_bias(), self.scale, self.edge.to(self.scale), self.bias
        )


class ConvLReLU(nn.Sequential):
    """Deploy form of a RepBlock: one real 3x3 ``nn.Conv2d`` followed by LeakyReLU(0.05).

    ``act`` is kept as a module (the checkpoints' and the printed structure's layout); the forward
    is the kernel operation ``conv_act``, so that a fused kernel set computes both in one call.
    """

    conv: nn.Conv2d
    act: nn.LeakyReLU

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, 3, padding=1),
                act=nn.LeakyReLU(LRELU_SLOPE),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return conv_act(x, self.conv, "lrelu")


class RepBlock(nn.Module):
    """Training form of RepRFN's RepBlock: the sum of nine branches, then LeakyReLU(0.05).

    Branches: 3x3, 3x1, 1x3, 1x1 (with bias); 1x1 to 2C (no bias) then 3x3 (no bias); identity
    (when in == out); and the Sobel-x, Sobel-y and Laplacian edge branches of ECBSR
    (``edges=False`` leaves them out, for the ablation).
    """

    def __init__(self, in_channels: int, out_channels: int, mode: Mode = "online", *, edges: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.mode: Mode = mode
        self.conv3x3 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv3x1 = nn.Conv2d(in_channels, out_channels, (3, 1), padding=(1, 0))
        self.conv1x3 = nn.Conv2d(in_channels, out_channels, (1, 3), padding=(0, 1))
        self.conv1x1 = nn.Conv2d(in_channels, out_channels, 1)
        self.expand = nn.Conv2d(in_channels, 2 * in_channels, 1, bias=False)
        self.expand3x3 = nn.Conv2d(2 * in_channels, out_channels, 3, padding=1, bias=False)
        self.edges = nn.ModuleDict({k: EdgeBranch(in_channels, out_channels, k) for k in EDGE_KERNELS} if edges else {})

    def edge_branches(self) -> list[EdgeBranch]:
        """The edge branches (none with ``edges=False``), as their type."""
        return [edge for edge in self.edges.values() if isinstance(edge, EdgeBranch)]

    @property
    def has_identity(self) -> bool:
        return self.in_channels == self.out_channels

    def kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The single 3x3 (kernel, bias) equal to the sum of all branches; differentiable."""
        pairs: list[tuple[Tensor, Tensor | None]] = [
            (self.conv3x3.weight, self.conv3x3.bias),
            (pad_to_3x3(self.conv3x1.weight), self.conv3x1.bias),
            (pad_to_3x3(self.conv1x3.weight), self.conv1x3.bias),
            (pad_to_3x3(self.conv1x1.weight), self.conv1x1.bias),
            (fuse_1x1_into_3x3(self.expand.weight, self.expand3x3.weight), None),
            *(edge.kernel_bias() for edge in self.edge_branches()),
        ]
        w = self.conv3x3.weight
        if self.has_identity:
            pairs.append((identity_kernel(self.in_channels, dtype=w.dtype, device=w.device), None))
        return sum_kernels(pairs)

    def forward_branches(self, x: Tensor) -> Tensor:
        out = (
            self.conv3x3(x)
            + self.conv3x1(x)
            + self.conv1x3(x)
            + self.conv1x1(x)
            + self.expand3x3(self.expand(x))
        )
        for edge in self.edges.values():
            out = out + edge(x)
        if self.has_identity:
            out = out + x
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "branches":
            out = self.forward_branches(x)
        elif self.mode == "online":
            kernel, bias = self.kernel_bias()
            out = F.conv2d(x, kernel, bias, padding=1)
        else:
            raise ValueError(f"unknown RepBlock mode {self.mode!r}; use 'branches' or 'online'")
        return F.leaky_relu(out, LRELU_SLOPE)

    @torch.no_grad()
    def to_deploy(self) -> ConvLReLU:
        """A new ``ConvLReLU`` computing the same function (same dtype and device)."""
        kernel, bias = self.kernel_bias()
        block = ConvLReLU(self.in_channels, self.out_channels).to(kernel)
        block.conv.weight.copy_(kernel)
        assert block.conv.bias is not None  # ConvLReLU's conv has a bias
        block.conv.bias.copy_(bias)
        return block


def set_mode(model: M, mode: Mode) -> M:
    """Switch every RepBlock of ``model`` to ``mode`` in place; returns ``model``."""
    if mode not in ("branches", "online"):
        raise ValueError(f"unknown RepBlock mode {mode!r}; use 'branches' or 'online'")
    for module in model.modules():
        if isinstance(module, RepBlock):
            module.mode = mode
    return model


def fuse(model: M) -> M:
    """Return a copy of ``model`` in deploy form: every RepBlock replaced by a real 3x3 conv.

    The input model is not modified. Idempotent: fusing a fused model returns an equal copy.
    The copy keeps the input's dtype and device and is put in eval mode.
    """
    import copy

    fused = copy.deepcopy(model)
    _replace_repblocks(fused)
    if isinstance(fused, SRModel):
        fused.form = "deploy"
    return fused.eval()


def _replace_repblocks(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, RepBlock):
            setattr(module, name, child.to_deploy())
        else:
            _replace_repblocks(child)


@torch.no_grad()
def absorb_kernel(block: RepBlock, kernel: Tensor, bias: Tensor) -> None:
    """Shift ``block``'s plain 3x3 branch so that all its branches sum to ``(kernel, bias)``.

    The inverse of ``to_deploy`` for the block's current side branches: a deploy-form network
    (one 3x3 conv per RepBlock) can so be continued in training form with the same function,
    the other eight branches keeping their weights. Exact up to float rounding, because the
    fused kernel is linear in the 3x3 branch.
    """
    current_kernel, current_bias = block.kernel_bias()
    block.conv3x3.weight.add_(kernel.to(current_kernel) - current_kernel)
    assert block.conv3x3.bias is not None  # the 3x3 branch has a bias
    block.conv3x3.bias.add_(bias.to(current_bias) - current_bias)


def absorb_deploy_state(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """``absorb_kernel`` for every RepBlock of ``model`` whose deploy conv ``NAME.conv.*`` is in
    ``state`` (a deploy-form state dict); returns the names of the blocks set."""
    done = []
    for name, module in model.named_modules():
        key = f"{name}.conv" if name else "conv"
        if isinstance(module, RepBlock) and f"{key}.weight" in state and f"{key}.bias" in state:
            absorb_kernel(module, state[f"{key}.weight"], state[f"{key}.bias"])
            done.append(name)
    return done
