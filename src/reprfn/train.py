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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml

from .checkpoint import load_model, save_model
from .data import DataError, PatchSampler, decode_training_set
from .io import atomic_path
from .losses import WeightedLoss
from .models import SRModel, build, set_mode
from .models.rep import absorb_deploy_state
from .errors import CheckpointError, ConfigError, TrainingError

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "model": {"name": "reprfn", "scale": 4, "channels": 48, "blocks": 4, "in_channels": 3,
              "mode": "online", "init": None},
    "data": {"train": ["../shared/data/train"], "train_lr": None, "cache_dir": None, "workers": 0},
    "val": {"dir": None, "every": 1000, "max_images": 0},
    "train": {
        "iters": 500_000, "batch_size": 64, "patch_size": 192,
        "lr": 5e-4, "lr_schedule": "step", "lr_step": 200_000, "lr_gamma": 0.5, "lr_min": 0.0,
        "betas": [0.9, 0.999], "eps": 1e-8,
        "grad_clip": 0.0, "ema": 0.0, "checkpoint_every": 1000, "log_every": 100,
        "amp": "none", "channels_last": False, "device": "auto", "threads": 0,
    },
    "loss": {"charbonnier": 0.9, "fft": 0.1},
}
OPEN_SECTIONS = {"loss"}  # keys checked by their consumer (the loss names)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def merge(base: Mapping[str, Any], override: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Recursive merge; a key that the defaults do not have is an error naming it."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        name = f"{prefix}{key}"
        if prefix.rstrip(".") in OPEN_SECTIONS:
            out[key] = value
        elif key not in base:
            raise ConfigError(f"unknown config key {name!r}")
        elif isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {name!r} must be a mapping")
            out[key] = merge(base[key], value, f"{name}.")
        else:
            out[key] = value
    return out


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["train.iters=10", "data.train=[a, b]"]`` -> nested dict; values are YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    user: dict[str, Any] = {}
    if path is not None:
        try:
            user = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(user, Mapping):
            raise ConfigError(f"{path}: a config must be a YAML mapping")
    cfg = merge(DEFAULTS, user)
    cfg = merge(cfg, parse_set(overrides))
    if isinstance(cfg["data"]["train"], (str, os.PathLike)):
        cfg["data"]["train"] = [cfg["data"]["train"]]
    return cfg


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
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA device is available")
        return torch.device("cuda", dist.local_rank)
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


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def build_model(cfg: Mapping[str, Any]) -> SRModel:
    m = cfg["model"]
    kw = {"channels": m["channels"], "blocks": m["blocks"], "in_channels": m["in_channels"]}
    model = build(m["name"], scale=m["scale"], **kw)
    set_mode(model, m["mode"])  # RepBlocks only: a no-op for the other architectures
    if m["init"]:
        init_from(model, m["init"])
    return model


def make_scheduler(optimizer: torch.optim.Optimizer, t: Mapping[str, Any]) -> torch.optim.lr_scheduler.LRScheduler:
    """``train.lr_schedule``: ``step`` (halve every ``lr_step``, the paper's) or ``cosine`` (from
    ``lr`` down to ``lr_min`` at ``iters``, one smooth decay for a continuation stage)."""
    if t["lr_schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t["iters"], eta_min=t["lr_min"])
    if t["lr_schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=t["lr_step"], gamma=t["lr_gamma"])
    raise ConfigError(f"train.lr_schedule must be 'step' or 'cosine', got {t['lr_schedule']!r}")


def use_channels_last(t: Mapping[str, Any], device: torch.device) -> bool:
    """Channels-last when asked, and always for bf16 autocast on the CPU: oneDNN's bf16 convs
    (AVX512-BF16, AMX) run fastest on NHWC (docs/performance.md has the figures)."""
    return bool(t["channels_last"]) or (t["amp"] == "bf16" and device.type == "cpu")


def init_from(model: SRModel, path: str) -> None:
    """Start from another checkpoint's weights where shapes match (e.g. an x4 body for x2).

    A deploy-form source (one 3x3 conv per RepBlock) initialises a training-form model too: each
    RepBlock's plain 3x3 branch absorbs the deploy kernel (``absorb_deploy_state``), so training
    continues from the same function with all nine branches.
    """
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


def val_pairs(cfg: Mapping[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The validation images, decoded once: a benchmark folder as ``reprfn eval`` reads it."""
    from .evaluate import load_pairs, read_pair, grey_to_rgb

    if not cfg["val"]["dir"]:
        return []
    scale = cfg["model"]["scale"]
    pairs, errors = load_pairs(cfg["val"]["dir"], scale)
    if errors or not pairs:
        raise DataError(f"val.dir: {errors[0] if errors else 'no images'}")
    pairs = pairs[: cfg["val"]["max_images"] or None]
    as_rgb = cfg["model"]["in_channels"] == 3
    return [tuple(grey_to_rgb(a) if as_rgb else a for a in read_pair(p, scale)) for p in pairs]


class Logger:
    """CSV log (appending across resumes) and optional TensorBoard, on the main process only."""

    FIELDS = ["iteration", "loss", "lr", "seconds", "val_psnr_y"]

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled, self.path, self.tb = enabled, run_dir / "log.csv", None
        if not enabled:
            return
        if not self.path.exists():
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh).writerow(self.FIELDS)
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


def train(cfg: Mapping[str, Any], run_dir: str | os.PathLike, *, resume: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run (or continue) a training run; returns a summary dict."""
    t = cfg["train"]
    run_dir = Path(run_dir)
    device = resolve_device(t["device"], Dist())
    dist = setup_distributed(device.type)
    device = resolve_device(t["device"], dist)
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dict(cfg), sort_keys=False))

    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg).to(device)
    channels_last = use_channels_last(t, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False) if t["ema"] else None
    optimizer = torch.optim.Adam(model.parameters(), lr=t["lr"], betas=tuple(t["betas"]), eps=t["eps"])
    scheduler = make_scheduler(optimizer, t)
    criterion = WeightedLoss(cfg["loss"])
    start, best = 0, -math.inf

    ckpt_path = _resume_path(run_dir, resume)
    if ckpt_path is not None:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # RNG states must stay on the host
        model.load_state_dict(state["model"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start, best = int(state["iteration"]), float(state.get("best", -math.inf))

    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    pairs = decode_training_set(cfg["data"]["train"], cfg["model"]["scale"], lr_folders=cfg["data"]["train_lr"],
                       min_hr_size=t["patch_size"], channels=cfg["model"]["in_channels"],
                       cache_dir=cfg["data"]["cache_dir"])
    validation = val_pairs(cfg) if dist.main else []
    sampler = PatchSampler(pairs, cfg["model"]["scale"], t["patch_size"], t["batch_size"], cfg["seed"],
                           rank=dist.rank, world=dist.world)
    loader = torch.utils.data.DataLoader(
        sampler, batch_size=None, sampler=range(start, t["iters"]), num_workers=cfg["data"]["workers"],
        pin_memory=device.type == "cuda", persistent_workers=False)

    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t["amp"]]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    logger = Logger(run_dir, dist.main)
    bar = _progress(start, t["iters"], progress and dist.main)
    last_loss, t0 = float("nan"), time.time()
    try:
        for it, (lr_img, hr_img) in zip(range(start, t["iters"]), loader):
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
            if t["grad_clip"]:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters()):
                        pe.lerp_(pm, 1.0 - t["ema"])
            done = it + 1
            last_loss = loss.item()
            row: dict[str, Any] = {}
            if done % t["log_every"] == 0 or done == t["iters"]:
                row = {"iteration": done, "loss": last_loss, "lr": optimizer.param_groups[0]["lr"],
                       "seconds": round(time.time() - t0, 2)}
            if validation and (done % cfg["val"]["every"] == 0 or done == t["iters"]):
                psnr_y = validate(ema if ema is not None else model, validation)
                row.update(iteration=done, val_psnr_y=psnr_y)
                if psnr_y > best:
                    best = psnr_y
                    save_model((ema if ema is not None else model).fuse(), run_dir / "best_fused.safetensors",
                               extra={"iteration": done, "val_psnr_y": f"{psnr_y:.4f}"})
            if row:
                logger.write(row)
            if dist.main and (done % t["checkpoint_every"] == 0 or done == t["iters"]):
                atomic_save({
                    "iteration": done, "model": model.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state(), "best": best, "config": dict(cfg),
                    "data": {"seed": cfg["seed"], "next_iteration": done},
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
        save_model(final, run_dir / "final.safetensors", extra={"iteration": t["iters"]})
        save_model(final.fuse(), run_dir / "final_fused.safetensors", extra={"iteration": t["iters"]})
    if dist.world > 1:
        torch.distributed.barrier()
    return {"iterations": t["iters"], "started_at": start, "loss": last_loss,
            "best_val_psnr_y": None if best == -math.inf else best, "run_dir": str(run_dir)}


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


def _progress(start: int, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, smoothing=0.1)
