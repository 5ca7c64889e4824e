"""The exponential moving average of the weights (``train.ema``): torch's ``AveragedModel``.

After every optimisation step each averaged tensor moves towards the model's by ``1 - decay``::

    ema <- ema + (1 - decay) * (model - ema)        # torch.lerp(ema, model, 1 - decay)

and the average starts from the weights the run starts with (a fresh model, ``model.init`` or a
resumed checkpoint): there is no warm-up of the decay.

Why this is the earlier hand-written average, bit for bit. That loop did
``ema_p.lerp_(p, 1.0 - decay)`` for every parameter after every step, from a copy of the model
made before the first step. ``get_ema_multi_avg_fn(decay)`` applies ``torch._foreach_lerp_`` with
the same weight, which on the CPU is ``lerp_`` tensor by tensor (``tests/test_train_ema.py``
compares the two over several steps, channels-last included; on CUDA the fused kernel evaluates
the same lerp formula). One difference is removed here: ``AveragedModel`` counts updates in its
``n_averaged`` buffer and its first ``update_parameters`` *copies* the model instead of averaging.
The average is therefore seeded when it is made (``n_averaged`` = 1, the starting weights), so the
first step averages like every other. The dtype stays the model's (float32 under autocast too).

Buffers are averaged as well (``use_buffers=True``). The models' only buffers are fixed edge
filters (Sobel, Laplacian), equal in the model and in the average, and ``lerp`` of a tensor with
itself is that tensor, so they stay what they were.

Checkpoints keep their layout: ``"ema"`` holds the averaged *module's* state dict (the model's own
keys, no ``module.`` prefix, no ``n_averaged``), so checkpoints written before this change resume,
and the other way round. ``n_averaged`` is derived on resume (1 + the checkpoint's iteration, one
update per step); only its being non-zero enters the arithmetic.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

EMA = AveragedModel


def make_ema(model: torch.nn.Module, decay: float) -> EMA:
    """The average of ``model`` with ``decay``, seeded with the model's current weights."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)  # updated under no_grad only; no gradient buffers for it
    ema.update_parameters(model)  # the first update copies: the average starts at these weights
    return ema


def ema_state(ema: EMA) -> dict[str, torch.Tensor]:
    """What a checkpoint stores under ``"ema"``: the averaged module's state dict."""
    return ema.module.state_dict()


def count_updates(ema: EMA, iteration: int) -> None:
    """``n_averaged`` of an average whose weights were loaded from a checkpoint at ``iteration``
    (checkpoints do not store it): the seed plus one update per iteration."""
    ema.n_averaged.fill_(iteration + 1)
