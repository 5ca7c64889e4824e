"""The training state, what ``last.ckpt`` holds of it, and the checks of a resume.

``last.ckpt`` is one ``torch.save`` mapping: ``iteration``, ``model``, ``ema`` (the averaged
module's state dict, or None), ``optimizer``, ``scheduler``, ``rng`` (Python, NumPy and torch
generators), ``best`` (best validation Y-PSNR), ``config`` and ``data``. With every RNG and every
stateful object in it, a resumed run continues bit for bit.

A checkpoint is read and checked in full before anything in the run folder changes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import _is_safetensors, _mismatch
from ..config import Config, TrainConfig
from ..errors import CheckpointError, TrainingError, one_line
from ..models import SRModel
from .ema import EMA, count_updates, ema_state

STATE_KEYS = ("iteration", "model", "optimizer", "scheduler", "rng")
# Settings a resume cannot change: the optimizer and the schedule continue from the checkpoint's
# state, so a different value in the config would be silently ignored.
FIXED_ON_RESUME = ("lr", "lr_schedule", "lr_step", "lr_gamma", "lr_min", "betas", "eps")


# ----------------------------------------------------------------------------------------------
# Random number generators
# ----------------------------------------------------------------------------------------------


def seed_all(seed: int) -> None:
    """The Python, NumPy and torch generators from ``seed`` (model initialisation draws from them)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the legacy form, the default
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


# ----------------------------------------------------------------------------------------------
# The state
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything an optimisation step changes, and the iteration it has reached."""

    model: SRModel
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    iteration: int = 0
    best: float = -math.inf  # best validation Y-PSNR so far
    loss: float = math.nan  # of the last step

    @property
    def result(self) -> SRModel:
        """The weights a run validates and delivers: the average when there is one."""
        if self.ema is None:
            return self.model
        average = self.ema.module
        assert isinstance(average, SRModel)  # AveragedModel holds a copy of self.model
        return average

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def checkpoint(self, cfg: Config) -> dict[str, Any]:
        """The mapping ``last.ckpt`` holds (the RNG states as they are now)."""
        return {
            "iteration": self.iteration, "model": self.model.state_dict(),
            "ema": ema_state(self.ema) if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(), "best": self.best, "config": cfg.to_dict(),
            "data": {"seed": cfg.seed, "next_iteration": self.iteration},
        }

    def resume(self, path: Path, cfg: Config) -> None:
        """Load every stateful object, the RNGs and the iteration from the checkpoint at ``path``."""
        state = read_training_state(path)
        start = check_resumable(state, cfg.train, path)
        load_weights(self.model, state["model"], path)
        if self.ema is not None:  # a checkpoint without EMA: the average starts from the resumed weights
            load_weights(self.ema.module, state["ema"] if state.get("ema") is not None else state["model"], path)
            count_updates(self.ema, start)
        if not isinstance(state["scheduler"], Mapping) or set(state["scheduler"]) != set(self.scheduler.state_dict()):
            raise CheckpointError(f"{path}: its learning-rate schedule is not "
                                  f"train.lr_schedule={cfg.train.lr_schedule}")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(dict(state["scheduler"]))
            set_rng_state(state["rng"])
            self.best = float(state.get("best", -math.inf))
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise CheckpointError(
                f"{path}: damaged training state ({type(exc).__name__}: {one_line(exc)[:200]})") from None
        self.iteration = start


# ----------------------------------------------------------------------------------------------
# Resuming
# ----------------------------------------------------------------------------------------------


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
        raise TrainingError(
            f"{path}: is at iteration {start}, past train.iters={t.iters}: raise train.iters to continue")
    written = state.get("config")
    written = written.get("train") if isinstance(written, Mapping) else None
    written = written if isinstance(written, Mapping) else {}
    keys = FIXED_ON_RESUME + (("iters",) if t.lr_schedule == "cosine" else ())  # cosine: T_max = iters
    for key in keys:
        if key in written and _plain(written[key]) != _plain(getattr(t, key)):
            raise TrainingError(
                f"{path}: was written with train.{key}={_plain(written[key])}, "
                f"the config says {_plain(getattr(t, key))}; "
                "a resume continues the checkpoint's optimizer and schedule: set it back, or start a new run "
                "with model.init")
    return start


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def load_weights(module: torch.nn.Module, sd: object, path: Path) -> None:
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
    except RuntimeError as exc:  # missing or unexpected keys
        shapes = {k: v.shape for k, v in own.items()}
        tensors = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
        problem = _mismatch(getattr(module, "arch", type(module).__name__), shapes, tensors) or one_line(exc)
        raise CheckpointError(f"{path}: {problem} (a run with other model.* settings)") from None


def refuse_occupied(run_dir: Path) -> None:
    """A fresh run never writes over another run's checkpoint, weights or log, nor over any other
    file of the names it writes: ``--out .`` beside one's own ``config.yaml`` replaced it."""
    held = [n for n in ("last.ckpt", "final.safetensors", "log.csv") if (run_dir / n).exists()]
    if held:
        raise TrainingError(f"{run_dir}: already holds a run ({held[0]}); continue it with --resume auto, "
                            "or choose another --out")
    held = [n for n in ("config.yaml", "final_fused.safetensors", "best_fused.safetensors") if (run_dir / n).exists()]
    if held:
        raise TrainingError(f"{run_dir}: already holds {held[0]}, which a fresh run would overwrite; "
                            "choose another --out")


def resume_path(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint ``--resume`` names: ``auto`` is the run folder's ``last.ckpt`` if there is one."""
    if resume is None:
        return None
    if resume == "auto":
        path = run_dir / "last.ckpt"
        return path if path.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint to resume from")
    return path
