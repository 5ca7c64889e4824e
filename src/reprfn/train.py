"""The trainer: the paper's recipe, resumable bit for bit, and distributed with torchrun.

One run directory holds everything:
* ``last.ckpt``: model, EMA, optimizer, scheduler, RNG states and iteration, one file, written
  atomically every ``train.checkpoint_every`` iterations (``--resume auto`` continues from it);
* ``final.safetensors`` (training form) and ``final_fused.safetensors`` (deploy form);
  ``best_fused.safetensors`` when validation is on; ``log.csv`` (and TensorBoard events when
  TensorBoard is installed); ``config.yaml``, the resolved configuration.

Determinism: batches are a pure function of (seed, iteration) (``data.PatchSampler``), and every
stateful object is checkpointed, so on CPU a run stopped after a checkpoint and resumed ends with
weights bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml

from .checkpoint import _is_safetensors, _mismatch, load_model, save_model
from .config import DEFAULTS, Config, TrainConfig, load_config, merge, parse_config, parse_set
from .data import DataError, PatchSampler, decode_training_set
from .errors import CheckpointError, ConfigError, TrainingError, one_line
from .files import atomic_path
from .losses import WeightedLoss
from .models import SRModel, build, set_mode
from .models.rep import absorb_deploy_state

__all__ = ["DEFAULTS", "Config", "load_config", "merge", "parse_config", "parse_set", "train"]


# ----------------------------------------------------------------------------------------------
# Distributed helpers (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)
# ----------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    return Dist(torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, dist: Dist) -> torch.device:
    """``train.device`` as a torch device; one asked for but absent is refused before any work."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"config train.device: {name} asked for, but no CUDA device is available")
        if name == "cuda":
            return torch.device("cuda", dist.local_rank)
        if int(name[5:]) >= torch.cuda.device_count():
            raise ConfigError(f"config train.device: {name} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("config train.device: mps asked for, but MPS is not available")
    return torch.device(name)


# ----------------------------------------------------------------------------------------------
# State: atomic checkpoints with every RNG
# ----------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])


def _tuplify(obj: Any) -> Any:
    return tuple(_tuplify(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


def atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_config(cfg: Config, path: Path) -> None:
    """``config.yaml``, the resolved configuration as a plain YAML mapping, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------------------------
# Resuming: a checkpoint is read and checked in full before anything in the run folder changes
# ----------------------------------------------------------------------------------------------

STATE_KEYS = ("iteration", "model", "optimizer", "scheduler", "rng")
# Settings a resume cannot change: the optimizer and the schedule continue from the checkpoint's
# state, so a different value in the config would be silently ignored.
FIXED_ON_RESUME = ("lr", "lr_schedule", "lr_step", "lr_gamma", "lr_min", "betas", "eps")


def read_training_state(path: Path) -> dict[str, Any]:
    """A ``last.ckpt`` written by ``train``, or one line naming the file and what it is instead."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise CheckpointError(f"{path}: empty file, not a training checkpoint")
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        what = "a safetensors weights file (start a run from it with model.init)" if _is_safetensors(path) \
            else "not a PyTorch file"
        raise CheckpointError(f"{path}: {what}, not a training checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # RNG states must stay on the host
    except OSError:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
        raise CheckpointError(f"{path}: truncated or damaged training checkpoint ({one_line(exc)[:200]})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, Mapping) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint of reprfn train (no {missing[0]!r})")
    return dict(state)


def check_resumable(state: Mapping[str, Any], t: TrainConfig, path: Path) -> int:
    """The checkpoint's iteration, after checking that the config can continue from it."""
    start = state["iteration"]
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise CheckpointError(f"{path}: damaged training state (iteration {start!r})")
    if start > t.iters:
        raise TrainingError(f"{path}: is at iteration {start}, past train.iters={t.iters}: raise train.iters to continue")
    written = state.get("config")
    written = written.get("train") if isinstance(written, Mapping) else None
    written = written if isinstance(written, Mapping) else {}
    keys = FIXED_ON_RESUME + (("iters",) if t.lr_schedule == "cosine" else ())  # cosine: T_max = iters
    for key in keys:
        if key in written and _plain(written[key]) != _plain(getattr(t, key)):
            raise TrainingError(
                f"{path}: was written with train.{key}={_plain(written[key])}, the config says {_plain(getattr(t, key))}; "
                "a resume continues the checkpoint's optimizer and schedule: set it back, or start a new run "
                "with model.init")
    return start


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def load_weights(module: torch.nn.Module, sd: Any, path: Path) -> None:
    """``load_state_dict`` with one line on a mismatch (first mismatching tensor and both shapes),
    not torch's list of every tensor."""
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: its model weights are not a state dict")
    own = module.state_dict()
    differ = [k for k, v in sd.items() if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    if differ:
        k = differ[0]
        raise CheckpointError(
            f"{path}: tensor {k!r} is {tuple(sd[k].shape)} in the checkpoint but {tuple(own[k].shape)} in the "
            f"configured model ({len(differ)} tensors differ: a run with other model.* settings)")
    try:
        module.load_state_dict(sd)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: {_mismatch(module, sd, exc)} (a run with other model.* settings)") from None


def resume_from(path: Path, cfg: Config, model: SRModel, ema: SRModel | None,
                optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> tuple[int, float]:
    """Load every stateful object from ``path``; returns (iteration, best validation score)."""
    state = read_training_state(path)
    start = check_resumable(state, cfg.train, path)
    load_weights(model, state["model"], path)
    if ema is not None:  # a checkpoint without EMA: the average starts from the resumed weights
        load_weights(ema, state["ema"] if state.get("ema") is not None else state["model"], path)
    if not isinstance(state["scheduler"], Mapping) or set(state["scheduler"]) != set(scheduler.state_dict()):
        raise CheckpointError(f"{path}: its learning-rate schedule is not train.lr_schedule={cfg.train.lr_schedule}")
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        best = float(state.get("best", -math.inf))
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise CheckpointError(f"{path}: damaged training state ({type(exc).__name__}: {one_line(exc)[:200]})") from None
    return start, best


def refuse_occupied(run_dir: Path) -> None:
    """A fresh run never writes over another run's checkpoint, weights or log."""
    held = [n for n in ("last.ckpt", "final.safetensors", "log.csv") if (run_dir / n).exists()]
    if held:
        raise TrainingError(f"{run_dir}: already holds a run ({held[0]}); continue it with --resume auto, "
                            "or choose another --out")


def _resume_path(run_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        path = run_dir / "last.ckpt"
        return path if path.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint to resume from")
    return path


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def build_model(cfg: Config) -> SRModel:
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


def validate(model: SRModel, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean Y-PSNR of the fused model on (HR, LR) pairs, with the protocol of ``reprfn eval``."""
    from .evaluate import super_resolve
    from .metrics import psnr

    fused = model.fuse().eval()
    return float(np.mean([psnr(super_resolve(fused, lr), hr, crop_border=model.scale, test_y_channel=True)
                          for hr, lr in pairs]))


def val_pairs(cfg: Config) -> list[tuple[np.ndarray, np.ndarray]]:
    """The validation images, decoded once: a benchmark folder as ``reprfn eval`` reads it."""
    from .evaluate import load_pairs, read_pair, grey_to_rgb

    if not cfg.val.dir:
        return []
    scale = cfg.model.scale
    pairs, errors = load_pairs(cfg.val.dir, scale)
    if errors or not pairs:
        raise DataError(f"val.dir: {errors[0] if errors else 'no images'}")
    pairs = pairs[: cfg.val.max_images or None]
    as_rgb = cfg.model.in_channels == 3
    return [tuple(grey_to_rgb(a) if as_rgb else a for a in read_pair(p, scale)) for p in pairs]


class Logger:
    """CSV log (appending across resumes) and optional TensorBoard, on the main process only.

    ``start`` is the iteration the run continues from: rows logged after it by an earlier attempt
    (between its last checkpoint and its end) are dropped, with rows that are not a log's (the
    file is rewritten atomically), so that every logged iteration has exactly one row once the
    resumed run logs it again.
    """

    FIELDS = ["iteration", "loss", "lr", "seconds", "val_psnr_y"]

    def __init__(self, run_dir: Path, enabled: bool, start: int = 0) -> None:
        self.enabled, self.path, self.tb = enabled, run_dir / "log.csv", None
        if not enabled:
            return
        rows = read_rows(self.path)
        kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= start]
        if rows[:1] != [self.FIELDS] or len(kept) != len(rows) - 1:
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
                csv.writer(fh).writerows([self.FIELDS, *kept])
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except Exception:  # TensorBoard is optional
            self.tb = None

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([row.get(k, "") for k in self.FIELDS])
        if self.tb is not None:
            for key in ("loss", "lr", "val_psnr_y"):
                if row.get(key) not in (None, ""):
                    self.tb.add_scalar(key, row[key], row["iteration"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_rows(path: Path) -> list[list[str]]:
    """All rows of a CSV file, header included; none when there is no file."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def train(cfg: Config | Mapping[str, Any], run_dir: str | os.PathLike, *, resume: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run (or continue) a training run; returns a summary dict.

    Everything that can be refused is checked before the run folder is touched: the configuration
    (a mapping is checked with ``parse_config``), the device, the model on one patch, the
    checkpoint to resume from, the training and validation images. Only then are ``config.yaml``
    and ``log.csv`` written, so a refused run leaves no folder, or the old run's files as they were.
    """
    if not isinstance(cfg, Config):
        cfg = parse_config(cfg)
    t = cfg.train
    run_dir = Path(run_dir)
    device = resolve_device(t.device, Dist())
    dist = setup_distributed(device.type)
    device = resolve_device(t.device, dist)
    if t.threads:
        torch.set_num_threads(t.threads)
    ckpt_path = _resume_path(run_dir, resume)
    if resume is None and dist.main:
        refuse_occupied(run_dir)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    check_patch(model, cfg, device)
    channels_last = use_channels_last(t, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False) if t.ema else None
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, betas=t.betas, eps=t.eps)
    scheduler = make_scheduler(optimizer, t)
    criterion = WeightedLoss(cfg.loss)
    start, best = 0, -math.inf
    if ckpt_path is not None:
        start, best = resume_from(ckpt_path, cfg, model, ema, optimizer, scheduler)

    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    pairs = decode_training_set(cfg.data.train, cfg.model.scale, lr_folders=cfg.data.train_lr,
                                min_hr_size=t.patch_size, channels=cfg.model.in_channels,
                                cache_dir=cfg.data.cache_dir)
    validation = val_pairs(cfg) if dist.main else []
    sampler = PatchSampler(pairs, cfg.model.scale, t.patch_size, t.batch_size, cfg.seed,
                           rank=dist.rank, world=dist.world)
    loader = make_loader(sampler, start, t.iters, cfg.data.workers, device)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir / "config.yaml")

    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    logger = Logger(run_dir, dist.main, start)
    bar = _progress(start, t.iters, progress and dist.main)
    last_loss, t0 = float("nan"), time.time()
    try:
        for it, (lr_img, hr_img) in zip(range(start, t.iters), loader):
            lr_img = lr_img.to(device, non_blocking=True)
            hr_img = hr_img.to(device, non_blocking=True)
            if channels_last:
                lr_img = lr_img.contiguous(memory_format=torch.channels_last)
            model.train()
            autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
            with autocast:
                sr = net(lr_img)
            loss = criterion(sr, hr_img)
            if not torch.isfinite(loss):
                kept = f"; the last good checkpoint is {run_dir / 'last.ckpt'}" if (run_dir / "last.ckpt").exists() else ""
                raise TrainingError(f"loss is {loss.item()} at iteration {it + 1}: stopped{kept}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters()):
                        pe.lerp_(pm, 1.0 - t.ema)
            done = it + 1
            last_loss = loss.item()
            row: dict[str, Any] = {}
            if done % t.log_every == 0 or done == t.iters:
                row = {"iteration": done, "loss": last_loss, "lr": optimizer.param_groups[0]["lr"],
                       "seconds": round(time.time() - t0, 2)}
            if validation and (done % cfg.val.every == 0 or done == t.iters):
                psnr_y = validate(ema if ema is not None else model, validation)
                row.update(iteration=done, val_psnr_y=psnr_y)
                if psnr_y > best:
                    best = psnr_y
                    save_model((ema if ema is not None else model).fuse(), run_dir / "best_fused.safetensors",
                               extra={"iteration": done, "val_psnr_y": f"{psnr_y:.4f}"})
            if row:
                logger.write(row)
            if dist.main and (done % t.checkpoint_every == 0 or done == t.iters):
                atomic_save({
                    "iteration": done, "model": model.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state(), "best": best, "config": cfg.to_dict(),
                    "data": {"seed": cfg.seed, "next_iteration": done},
                }, run_dir / "last.ckpt")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                **({"val": f"{row['val_psnr_y']:.2f}"} if "val_psnr_y" in row else {}))
    finally:
        if bar is not None:
            bar.close()
        logger.close()

    final = ema if ema is not None else model
    if dist.main:
        save_model(final, run_dir / "final.safetensors", extra={"iteration": t.iters})
        save_model(final.fuse(), run_dir / "final_fused.safetensors", extra={"iteration": t.iters})
    if dist.world > 1:
        torch.distributed.barrier()
    return {"iterations": t.iters, "started_at": start, "loss": last_loss,
            "best_val_psnr_y": None if best == -math.inf else best, "run_dir": str(run_dir)}


def _progress(start: int, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, smoothing=0.1)
