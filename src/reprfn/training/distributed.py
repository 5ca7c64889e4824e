"""The device and, under torchrun, the process group (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks; a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone writes the run folder and validates."""
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
            raise ConfigError(f"config train.device: {name} asked for, but there are "
                              f"{torch.cuda.device_count()} CUDA devices")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("config train.device: mps asked for, but MPS is not available")
    return torch.device(name)


def start(device_name: str) -> tuple[Dist, torch.device]:
    """The ranks and this rank's device. The device is checked once before the process group
    starts, so that a device that is not there is refused before any rank waits for another."""
    dist = setup_distributed(resolve_device(device_name, Dist()).type)
    return dist, resolve_device(device_name, dist)


def data_parallel(model: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """What the forward pass runs: the model, wrapped in DDP when there are several ranks."""
    if dist.world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
