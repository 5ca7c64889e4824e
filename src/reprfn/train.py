"""The trainer: the paper's recipe, resumable bit for bit, and distributed with torchrun.

One run directory holds everything:
* ``last.ckpt``: model, EMA, optimizer, scheduler, RNG states and iteration, one file, written
  atomically every ``train.checkpoint_every`` iterations (``--resume auto`` continues from it);
* ``final.safetensors`` (training form) and ``final_fused.safetensors`` (deploy form);
  ``best_fused.safetensors`` when validation is on; ``log.csv`` (and TensorBoard events when
  TensorBoard is installed); ``config.yaml``, the resolved configuration.

This module is the loop and the run folder's files; the loop is a few named steps over a
``TrainState``: ``step`` (one optimisation step), ``maybe_validate``, ``maybe_checkpoint``. What
it is built from lives in ``reprfn.training``: the device and ranks, the model and data loader,
the EMA, the checkpoint state and the checks of a resume, validation.

Determinism: batches are a pure function of (seed, iteration) (``data.PatchSampler``), and every
stateful object is checkpointed, so on CPU a run stopped after a checkpoint and resumed ends with
weights bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from .checkpoint import save_model
from .config import DEFAULTS, Config, load_config, merge, parse_config, parse_set
from .data import decode_training_set
from .errors import TrainingError
from .files import atomic_path
from .losses import WeightedLoss
from .training.build import batch_stream, build_model, make_state, use_channels_last
from .training.distributed import Dist, data_parallel, start
from .training.state import TrainState, refuse_occupied, resume_path, seed_all
from .training.validation import val_pairs, validate

__all__ = ["DEFAULTS", "Config", "build_model", "load_config", "merge", "parse_config", "parse_set", "train",
           "val_pairs", "validate"]

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------
# The run folder's files
# ----------------------------------------------------------------------------------------------


def write_config(cfg: Config, path: Path) -> None:
    """``config.yaml``, the resolved configuration as a plain YAML mapping, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def save_checkpoint(state: TrainState, cfg: Config, path: Path) -> None:
    """``last.ckpt``, written atomically: a kill leaves the previous checkpoint whole."""
    with atomic_path(path) as tmp:
        torch.save(state.checkpoint(cfg), tmp)


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
        if not self.enabled or not row:
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


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What the loop works with and never changes (the ``TrainState`` is what changes)."""

    cfg: Config
    run_dir: Path
    dist: Dist
    device: torch.device
    net: Callable[[torch.Tensor], torch.Tensor]  # the model, its DDP wrapper, or torch.compile's wrapper
    criterion: torch.nn.Module
    scaler: torch.amp.GradScaler  # a no-op unless train.amp is fp16
    amp: torch.dtype | None  # autocast dtype
    channels_last: bool
    validation: Sequence[tuple[np.ndarray, np.ndarray]]
    logger: Logger
    started: float  # time.time() when the loop started: the log's seconds


def step(run: Run, state: TrainState, lr_img: torch.Tensor, hr_img: torch.Tensor) -> None:
    """One optimisation step: the batch onto the device, forward under autocast, loss, backward
    (scaled for fp16), optional gradient clipping, Adam, the schedule, the EMA update.

    A loss that is not finite stops the run before the optimizer sees it, so the last checkpoint
    is the last good one."""
    t = run.cfg.train
    lr_img = lr_img.to(run.device, non_blocking=True)
    hr_img = hr_img.to(run.device, non_blocking=True)
    if run.channels_last:
        lr_img = lr_img.contiguous(memory_format=torch.channels_last)
    state.model.train()
    with torch.autocast(run.device.type, dtype=run.amp) if run.amp else nullcontext():
        sr = run.net(lr_img)
    loss = run.criterion(sr, hr_img)
    if not torch.isfinite(loss):
        last = run.run_dir / "last.ckpt"
        kept = f"; the last good checkpoint is {last}" if last.exists() else ""
        raise TrainingError(f"loss is {loss.item()} at iteration {state.iteration + 1}: stopped{kept}")
    state.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if t.grad_clip:
        run.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), t.grad_clip)
    run.scaler.step(state.optimizer)
    run.scaler.update()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    state.iteration += 1
    state.loss = loss.item()


def due(iteration: int, every: int, last: int) -> bool:
    """Every ``every`` iterations, and at the last one."""
    return iteration % every == 0 or iteration == last


def log_row(run: Run, state: TrainState) -> dict[str, Any]:
    """Loss, learning rate and elapsed time, every ``train.log_every`` iterations."""
    if not due(state.iteration, run.cfg.train.log_every, run.cfg.train.iters):
        return {}
    return {"iteration": state.iteration, "loss": state.loss, "lr": state.lr,
            "seconds": round(time.time() - run.started, 2)}


def maybe_validate(run: Run, state: TrainState) -> dict[str, Any]:
    """Every ``val.every`` iterations (main rank, ``val.dir`` set): score the delivered weights
    (the EMA when on), keep the best fused as ``best_fused.safetensors``; the log's row."""
    done = state.iteration
    if not run.validation or not due(done, run.cfg.val.every, run.cfg.train.iters):
        return {}
    psnr_y = validate(state.result, run.validation)
    if psnr_y > state.best:
        state.best = psnr_y
        save_model(state.result.fuse(), run.run_dir / "best_fused.safetensors",
                   extra={"iteration": done, "val_psnr_y": f"{psnr_y:.4f}"})
    return {"iteration": done, "val_psnr_y": psnr_y}


def maybe_checkpoint(run: Run, state: TrainState) -> None:
    """Every ``train.checkpoint_every`` iterations and at the end (main rank): ``last.ckpt``."""
    if run.dist.main and due(state.iteration, run.cfg.train.checkpoint_every, run.cfg.train.iters):
        save_checkpoint(state, run.cfg, run.run_dir / "last.ckpt")


def out_of_time(run: Run, state: TrainState) -> bool:
    """Whether ``train.time_limit`` seconds of this attempt have passed, asked every
    ``train.log_every`` iterations; all ranks agree (the flag is reduced), so none waits for
    another that stopped."""
    limit = run.cfg.train.time_limit
    if not limit or state.iteration % run.cfg.train.log_every:
        return False
    over = time.time() - run.started >= limit
    if run.dist.world > 1:
        flag = torch.tensor([float(over)], device=run.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        over = bool(flag.item())
    return over


def pause(run: Run, state: TrainState, started_at: int) -> dict[str, Any]:
    """Stop at the time limit: ``last.ckpt`` holds this iteration (``--resume auto`` goes on)."""
    if run.dist.main:
        save_checkpoint(state, run.cfg, run.run_dir / "last.ckpt")
    if run.dist.world > 1:
        torch.distributed.barrier()
    return {"iterations": state.iteration, "started_at": started_at, "loss": state.loss,
            "best_val_psnr_y": None if state.best == -math.inf else state.best, "run_dir": str(run.run_dir),
            "stopped": f"time limit of {run.cfg.train.time_limit:g} s"}


def finish(run: Run, state: TrainState, started_at: int) -> dict[str, Any]:
    """The final weights in both forms (main rank), and the run's summary."""
    t = run.cfg.train
    if run.dist.main:
        save_model(state.result, run.run_dir / "final.safetensors", extra={"iteration": t.iters})
        save_model(state.result.fuse(), run.run_dir / "final_fused.safetensors", extra={"iteration": t.iters})
    if run.dist.world > 1:
        torch.distributed.barrier()
    return {"iterations": t.iters, "started_at": started_at, "loss": state.loss,
            "best_val_psnr_y": None if state.best == -math.inf else state.best, "run_dir": str(run.run_dir)}


def train(cfg: Config | Mapping[str, Any], run_dir: str | os.PathLike, *, resume: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run (or continue) a training run; returns a summary dict.

    Everything that can be refused is checked before the run folder is touched: the configuration
    (a mapping is checked with ``parse_config``), the device, the model on one patch, the
    checkpoint to resume from, the training and validation images. Only then are ``config.yaml``
    and ``log.csv`` written, so a refused run leaves no folder, or the old run's files as they were.
    """
    cfg = cfg if isinstance(cfg, Config) else parse_config(cfg)
    t, run_dir = cfg.train, Path(run_dir)
    dist, device = start(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    ckpt_path = resume_path(run_dir, resume)
    if resume is None and dist.main:
        refuse_occupied(run_dir)

    seed_all(cfg.seed)
    state = make_state(cfg, device)
    criterion = WeightedLoss(cfg.loss)
    if ckpt_path is not None:
        state.resume(ckpt_path, cfg)
    started_at = state.iteration
    net: Callable[[torch.Tensor], torch.Tensor] = data_parallel(state.model, dist, device)
    if t.compile:
        net = torch.compile(net)

    pairs = decode_training_set(cfg.data.train, cfg.model.scale, lr_folders=cfg.data.train_lr,
                                min_hr_size=t.patch_size, channels=cfg.model.in_channels,
                                cache_dir=cfg.data.cache_dir)
    validation = val_pairs(cfg) if dist.main else []
    batches = batch_stream(pairs, cfg, dist, device, started_at)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir / "config.yaml")

    run = Run(cfg, run_dir, dist, device, net, criterion, torch.amp.GradScaler(device.type, enabled=t.amp == "fp16"),
              AMP_DTYPES[t.amp], use_channels_last(t, device), validation, Logger(run_dir, dist.main, started_at),
              time.time())
    bar = _progress(started_at, t.iters, progress and dist.main)
    try:
        for lr_img, hr_img in batches:
            step(run, state, lr_img, hr_img)
            row = {**log_row(run, state), **maybe_validate(run, state)}
            run.logger.write(row)
            maybe_checkpoint(run, state)
            if bar is not None:
                bar.update(1)
                postfix = {"loss": f"{state.loss:.4f}", "lr": f"{state.lr:.2e}"}
                if "val_psnr_y" in row:
                    postfix["val"] = f"{row['val_psnr_y']:.2f}"
                bar.set_postfix(postfix)
            if out_of_time(run, state):
                return pause(run, state, started_at)
    finally:
        if bar is not None:
            bar.close()
        run.logger.close()
    return finish(run, state, started_at)


def _progress(start: int, total: int, enabled: bool) -> tqdm | None:
    if not enabled:
        return None
    return tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, smoothing=0.1)
