"""The run's parts as its configuration describes them: the model (checked on one patch), the
learning-rate schedule, the stream of batches and the starting training state."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..config import Config, TrainConfig
from ..data import Pair, PatchSampler, ResidentPatches
from ..errors import CheckpointError, ConfigError, DataError, one_line
from ..models import SRModel, build, set_mode
from ..models.rep import absorb_deploy_state
from .distributed import Dist
from .ema import make_ema
from .state import TrainState


def build_model(cfg: Config) -> SRModel:
    """The configured model, from ``model.init`` when given, in ``model.mode``."""
    m = cfg.model
    with warnings.catch_warnings():  # too few channels for a layer: check_patch refuses it in one line
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        model = build(m.name, scale=m.scale, channels=m.channels, blocks=m.blocks, in_channels=m.in_channels)
    set_mode(model, m.mode)  # RepBlocks only: a no-op for the other architectures
    if m.init:
        init_from(model, m.init)
    return model


def check_patch(model: SRModel, cfg: Config, device: torch.device) -> None:
    """One forward pass on a zero LR patch of the configured size, before anything is written.

    What a model can take is the model's business (ESA's stride-2 conv and 7x7 max-pool need LR
    patches of at least 15 pixels; IMDN's attention needs 16 channels or more), so it is asked
    rather than restated here; a failure is blamed on the patch size when a 64-pixel patch runs.
    """
    def runs(side: int) -> RuntimeError | None:
        try:
            with torch.no_grad():
                model(torch.zeros(1, cfg.model.in_channels, side, side, device=device))
        except RuntimeError as exc:
            return exc
        return None

    lp = cfg.train.patch_size // cfg.model.scale
    failure = runs(lp)
    if failure is None:
        return
    m = cfg.model
    if runs(max(lp, 64)) is not None:
        raise ConfigError(f"config model: {m.name} with channels={m.channels}, blocks={m.blocks} cannot run "
                          f"({one_line(failure)[:160]})")
    raise ConfigError(f"config train.patch_size: expected LR patches large enough for {m.name}, got "
                      f"{cfg.train.patch_size} ({lp}x{lp} LR at x{m.scale})")


def make_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """``train.lr_schedule``: ``step`` (halve every ``lr_step``, the paper's) or ``cosine`` (from
    ``lr`` down to ``lr_min`` at ``iters``, one smooth decay for a continuation stage)."""
    if t.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.iters, eta_min=t.lr_min)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.lr_step, gamma=t.lr_gamma)


def make_loader(sampler: PatchSampler, start: int, stop: int, workers: int,
                device: torch.device) -> torch.utils.data.DataLoader:
    """Batches ``start..stop-1`` in order. Each batch is ``sampler[iteration]``, a pure function of
    (seed, iteration), so the number of workers changes only the speed.

    Workers are started with ``spawn``, not ``fork``: a process that has already run thread pools
    (oneDNN, OpenVINO's TBB, ONNX Runtime) is not safe to fork, and forked workers were seen to
    hand back corrupted batches after such pools had run in the same process."""
    return torch.utils.data.DataLoader(
        sampler, batch_size=None, sampler=range(start, stop), num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
        multiprocessing_context="spawn" if workers else None)


def batch_stream(pairs: Sequence[Pair], cfg: Config, dist: Dist, device: torch.device,
                 start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (LR, HR) batches of iterations ``start..train.iters-1``, in order.

    ``data.resident``: cut on the training device from the whole set held there as uint8
    (``data.ResidentPatches``: no DataLoader, the GPU recipe); else ``data.PatchSampler`` through
    a DataLoader with ``data.workers`` processes. Both are pure functions of (seed, iteration);
    their streams differ, so a run should not switch between them on resume (it may: it is then
    not bit-identical to an uninterrupted run)."""
    t = cfg.train
    per_rank = t.batch_size // dist.world
    if cfg.data.resident:
        if t.batch_size % dist.world:
            raise DataError(f"train.batch_size {t.batch_size} does not split over {dist.world} processes")
        patches = ResidentPatches(pairs, cfg.model.scale, t.patch_size, t.batch_size, cfg.seed, device)
        mine = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
        # every rank draws the global plan (a pure function of seed and iteration) and cuts its slice
        return (patches.crop(*(part[mine] for part in patches.plan(it))) for it in range(start, t.iters))
    sampler = PatchSampler(pairs, cfg.model.scale, t.patch_size, t.batch_size, cfg.seed,
                           rank=dist.rank, world=dist.world)
    return iter(make_loader(sampler, start, t.iters, cfg.data.workers, device))


def use_channels_last(t: TrainConfig, device: torch.device) -> bool:
    """Channels-last when asked, and always for bf16 autocast on the CPU: oneDNN's bf16 convs
    (AVX512-BF16, AMX) run fastest on NHWC (docs/performance.md has the figures)."""
    return t.channels_last or (t.amp == "bf16" and device.type == "cpu")


def init_from(model: SRModel, path: str) -> None:
    """Start from another checkpoint's weights where shapes match (e.g. an x4 body for x2).

    A deploy-form source (one 3x3 conv per RepBlock) initialises a training-form model too: each
    RepBlock's plain 3x3 branch absorbs the deploy kernel (``absorb_deploy_state``), so training
    continues from the same function with all nine branches.
    """
    if not Path(path).is_file():
        raise ConfigError(f"config model.init: {path}: no such file")
    source = load_model(path).state_dict()
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    absorbed = absorb_deploy_state(model, source)
    if not matched and not absorbed:
        raise CheckpointError(f"{path}: no tensor matches the model to train")




def make_state(cfg: Config, device: torch.device) -> TrainState:
    """The state at iteration 0: the configured model on ``device`` (checked on one patch), its
    average when ``train.ema`` is on, Adam and the schedule. Draws from the seeded generators."""
    t = cfg.train
    model = build_model(cfg).to(device)
    check_patch(model, cfg, device)
    if use_channels_last(t, device):
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stubs
    ema = make_ema(model, t.ema) if t.ema else None
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, betas=t.betas, eps=t.eps)
    return TrainState(model, ema, optimizer, make_scheduler(optimizer, t))
