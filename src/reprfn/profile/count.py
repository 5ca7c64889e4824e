"""The complexity counter: params, MACs, activations and convs as the NTIRE efficient-SR challenges count them.

**The counter.** The NTIRE efficient-SR challenges count with ``get_model_flops`` and
``get_model_activation`` of their ``utils/model_summary.py`` (from KAIR). We reproduce their
conventions exactly:

* ``macs`` ("FLOPs" in the challenge reports, really multiply-accumulates): for every conv,
  ``output elements x (in_channels / groups) x kh x kw`` (the bias is *not* counted), plus one
  operation per output element of every ReLU-family activation (ReLU, LeakyReLU, PReLU, ELU,
  ReLU6). Nothing else: pooling, interpolation, sigmoid, products and sums are not counted.
* ``activations``: the number of elements of every conv output.
* ``convs``: the number of conv calls.

The challenge counter hooks ``nn.Conv2d`` and activation *modules*; we count the same operations
at the ATen level (a ``TorchDispatchMode`` over a forward on the ``meta`` device: no memory, no
arithmetic), so a conv or an activation called functionally counts too. For every deploy-form
model, and for RepRFN and RFDN as their authors wrote them (activations as modules), the two
agree; the training form's functional convs (RepBlock's online kernel, the edge branches) would
be missed by module hooks. Fused RepRFN x4 at 3x180x320: 401,504 params, 22.17 G MACs, 71.96 M
activations, 39 convs (tests/test_profile.py pins these and the NTIRE RFDN's figures).

**What that counter misses** is reported separately under ``uncounted``: conv bias additions,
ESA's max-pool comparisons, bilinear interpolation, sigmoid, products, residual sums,
PixelShuffle and concatenation (data movement only), IMDN's mean/std.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import UsageError

COUNTER = "NTIRE ESR model_summary.py conventions: conv MACs without bias + ReLU-family output elements"
RELU_FAMILY = {"relu", "relu_", "leaky_relu", "leaky_relu_", "_prelu_kernel", "prelu", "elu", "elu_",
               "hardtanh", "hardtanh_", "relu6"}
# ATen ops that the counter ignores, by the name we report them under
UNCOUNTED = {
    "max_pool2d_with_indices": "max_pool", "max_pool2d": "max_pool",
    "upsample_bilinear2d": "interpolation", "_upsample_bilinear2d_aa": "interpolation",
    "upsample_nearest2d": "interpolation", "upsample_bicubic2d": "interpolation",
    "index_select": "interpolation",  # upsample_in_window (tiled ESA)
    "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
    "mul": "products", "mul_": "products",
    "add": "sums", "add_": "sums", "sub": "sums", "sub_": "sums",
    "pixel_shuffle": "pixel_shuffle", "cat": "concatenation",
    "mean": "mean_std", "pow": "mean_std", "sqrt": "mean_std",
    "constant_pad_nd": "padding",
}
ZERO_ARITHMETIC = {"pixel_shuffle", "concatenation", "padding"}


@dataclass
class Complexity:
    """What the challenge counter reports, and what it leaves out (``uncounted``)."""

    params: int
    macs: int  # conv_macs + activation_ops: the challenge's "FLOPs"
    conv_macs: int
    activation_ops: int
    activations: int
    convs: int
    input: tuple[int, ...]
    uncounted: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def uncounted_ops(self) -> int:
        return sum(v["ops"] for v in self.uncounted.values())


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.conv_macs = self.activation_ops = self.activations = self.convs = 0
        self.uncounted: dict[str, dict[str, int]] = defaultdict(lambda: {"calls": 0, "elements": 0, "ops": 0})

    def _miss(self, name: str, elements: int, ops: int) -> None:
        entry = self.uncounted[name]
        entry["calls"] += 1
        entry["elements"] += elements
        entry["ops"] += ops

    def __torch_dispatch__(self, func: torch._ops.OpOverload, types: Sequence[type], args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        first = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(first, torch.Tensor):
            return out
        n = first.numel()
        if name == "convolution":
            weight, bias = args[1], args[2]
            per_output = weight.shape[1] * weight[0, 0].numel()  # in/groups * kh * kw
            self.conv_macs += n * per_output
            self.activations += n
            self.convs += 1
            if bias is not None:
                self._miss("conv_bias", n, n)
        elif name in RELU_FAMILY:
            self.activation_ops += n
        elif name in UNCOUNTED:
            kind = UNCOUNTED[name]
            if kind == "max_pool":
                ops = n * (int(torch.tensor(args[1]).prod()) - 1)  # comparisons per output
            elif kind == "interpolation":
                ops = 4 * n if name != "index_select" else 0  # bilinear: 4 weighted taps per output
            elif kind == "mean_std":
                ops = args[0].numel() if isinstance(args[0], torch.Tensor) else n
            elif kind in ZERO_ARITHMETIC:
                ops = 0
            else:
                ops = n
            self._miss(kind, n, ops)
        return out


def parse_input(text: str | tuple[int, ...]) -> tuple[int, ...]:
    """``"3x180x320"`` -> (3, 180, 320); a 4-part string includes the batch."""
    if isinstance(text, tuple):
        return text
    try:
        dims = tuple(int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise UsageError(f"--input takes CxHxW such as 3x180x320, got {text!r}") from None
    if len(dims) not in (3, 4) or min(dims) < 1:
        raise UsageError(f"--input takes CxHxW such as 3x180x320, got {text!r}")
    return dims


def count(model: nn.Module, input_shape: str | tuple[int, ...] = (3, 180, 320)) -> Complexity:
    """The challenge counter's figures for one forward of ``model`` on ``input_shape`` (CxHxW).

    Runs on the ``meta`` device (a copy of the model): shapes only, no memory, no arithmetic.
    """
    shape = parse_input(input_shape)
    shape = shape if len(shape) == 4 else (1, *shape)
    params = sum(p.numel() for p in model.parameters())
    meta = copy.deepcopy(model).to("meta")
    counter = _Counter()
    with torch.no_grad(), counter:
        meta(torch.zeros(shape, device="meta"))
    return Complexity(
        params=params,
        macs=counter.conv_macs + counter.activation_ops,
        conv_macs=counter.conv_macs,
        activation_ops=counter.activation_ops,
        activations=counter.activations,
        convs=counter.convs,
        input=tuple(shape[1:]) if shape[0] == 1 else tuple(shape),
        uncounted={k: dict(v) for k, v in sorted(counter.uncounted.items())},
    )
