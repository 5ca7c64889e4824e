"""What each evaluated model costs: parameters, MACs and CPU time.

Parameters are counted on the deploy (fused) form; MACs for a 1280x720 output, the NTIRE
efficient-SR convention, by ``reprfn.profile.count`` (the challenge's counter); CPU time is the
best of 5 forwards of a 128x128 LR input after one warm-up, on this machine's CPU with PyTorch's
current thread count, the models taking turns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from ..evaluate import Bicubic
from ..models import SRModel, fuse
from ..profile import count
from .run import Column

MAC_OUTPUT = (720, 1280)  # MACs are counted for an output of this size (H, W): NTIRE's convention
TIME_LR = 128  # CPU time is measured on a TIME_LR x TIME_LR LR input


MAC_COUNTER = "the NTIRE challenge's conventions (reprfn.profile: conv MACs + ReLU-family outputs)"


def describe_columns(models: Sequence[tuple[str, str, SRModel | Bicubic]], scale: int,
                     repeats: int = 5) -> list[Column]:
    """Columns for (label, weights, model) with their costs (bicubic: CPU time only).

    CPU times are measured round-robin, one forward of each model per round, so that a burst of
    other work on the machine slows all of them alike; each keeps its best round.
    """
    columns: list[Column] = []
    nets: list[SRModel | Bicubic] = []
    lr_size = (MAC_OUTPUT[0] // scale, MAC_OUTPUT[1] // scale)
    for label, weights, model in models:
        arch = model.arch
        if isinstance(model, Bicubic):
            columns.append(Column(label, weights, arch))
            nets.append(model)
            continue
        fused = fuse(model).to("cpu", torch.float32)  # costs are those of the deploy form
        cost = count(fused, (fused.in_channels, *lr_size))
        columns.append(Column(label, weights, arch, cost.params, int(cost.macs), mac_counter=MAC_COUNTER))
        nets.append(fused)
    best = [math.inf] * len(nets)
    inputs = [torch.rand(1, getattr(n, "in_channels", None) or 3, TIME_LR, TIME_LR,
                         generator=torch.Generator().manual_seed(0)) for n in nets]
    with torch.inference_mode():
        for round_ in range(repeats + 1):  # round 0 warms up
            for i, (net, x) in enumerate(zip(nets, inputs, strict=True)):
                start = time.perf_counter()
                net(x)
                if round_:
                    best[i] = min(best[i], time.perf_counter() - start)
    for column, seconds in zip(columns, best, strict=True):
        column.cpu_ms = seconds * 1000.0
    return columns
