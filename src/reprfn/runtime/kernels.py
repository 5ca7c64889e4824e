"""The oneDNN kernel set: RepRFN's operations as fused, in-place, channels-last CPU kernels.

``ONEDNN`` computes what ``models.blocks.EAGER`` computes, to float rounding (max |diff| <= 1e-5 on
photos), in less time: LeakyReLU(0.05) and the sigmoid fused into the conv before them, ``conv(x)
+ other`` (the global residual into ``lr_conv``, ESA's ``conv_f(c1) + up(c3)`` into ``conv_f``) as
one conv with a binary post-op, and the residual adds and ESA's product written in place. The
fused convs are oneDNN's post-ops through ``torch.ops.mkldnn._convolution_pointwise``, the kernels
``torch.compile`` itself calls on the CPU; they pay off on channels-last (NHWC) tensors, where
oneDNN's direct 3x3 conv runs near the machine's peak (docs/performance.md).

It is an inference set: in-place writes would break autograd, so the fused CPU engine activates
it only for forwards that need no gradient. ``fused_ops_available()`` checks once that the ops
exist and compute what ``F.conv2d`` does; without them the engine runs the eager set.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.blocks import LRELU_SLOPE, Act, Kernels

CL = torch.channels_last
_ATTR = {None: ("none", []), "lrelu": ("leaky_relu", [LRELU_SLOPE]), "sigmoid": ("sigmoid", [])}


def _pointwise_op() -> Any:
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return getattr(mkldnn, "_convolution_pointwise", None) if mkldnn is not None else None


@functools.lru_cache(maxsize=1)
def fused_ops_available() -> bool:
    """oneDNN's fused conv ops exist and compute what ``F.conv2d`` computes (checked once)."""
    op = _pointwise_op()
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(1, 8, 9, 11, generator=gen).contiguous(memory_format=CL)
        w, b = torch.randn(8, 8, 3, 3, generator=gen) * 0.1, torch.randn(8, generator=gen)
        o = torch.rand(1, 8, 9, 11, generator=gen).contiguous(memory_format=CL)
        with torch.no_grad():
            ref = F.conv2d(x, w, b, padding=1)
            got1 = op(x, w, b, [1, 1], [1, 1], [1, 1], 1, "leaky_relu", [LRELU_SLOPE], "")
            got2 = op.binary(x, o, w, b, [1, 1], [1, 1], [1, 1], 1, "add", 1.0, None, [], "")
            got3 = op(x, w, b, [1, 1], [1, 1], [1, 1], 1, "sigmoid", [], "")
        return bool(
            (got1 - F.leaky_relu(ref, LRELU_SLOPE)).abs().max() < 1e-5
            and (got2 - (ref + o)).abs().max() < 1e-5
            and (got3 - ref.sigmoid()).abs().max() < 1e-5
        )
    except Exception:  # a build without the op, or a changed signature: use the eager set
        return False


def _conv_act(x: Tensor, conv: nn.Conv2d, act: Act) -> Tensor:
    attr, scalars = _ATTR[act]
    return _pointwise_op()(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
                           list(conv.dilation), conv.groups, attr, scalars, "")


def _conv_add(x: Tensor, other: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x) + other`` in one oneDNN call (a binary post-op); ``other`` in ``x``'s layout."""
    other = other.contiguous(memory_format=CL) if x.is_contiguous(memory_format=CL) else other.contiguous()
    return _pointwise_op().binary(x, other, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
                                  list(conv.dilation), conv.groups, "add", 1.0, None, [], "")


ONEDNN = Kernels("oneDNN post-ops, channels-last", _conv_act, _conv_add, Tensor.add_, Tensor.mul_)
