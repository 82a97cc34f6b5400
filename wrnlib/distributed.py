"""Data-parallel training of one run on several devices with PyTorch DDP.

A run with `devices` > 1 is trained by `devices` processes that torchrun
starts (`torchrun --nproc_per_node=N -m wrnlib.train --config CONFIG`). Every
process draws the same shuffled, augmented global batch of `batch_size`
images (same seed, same generator), keeps its own contiguous shard of it, and
DistributedDataParallel averages the gradients. Each rank's loss is scaled by
its shard's share of the batch, so the averaged gradient equals the gradient of
the whole batch's mean loss even when the batch does not split evenly. The
global batch and the learning rate are therefore exactly those of the config:
nothing is rescaled for the number of devices.

Only rank 0 writes to the run store (`is_writer`); every rank reads the same
checkpoint on resume.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import ConfigError, RunError

__all__ = [
    "RankInfo",
    "all_reduce_sum",
    "current",
    "init_from_env",
    "is_writer",
    "launch",
    "shard_bounds",
    "shutdown",
]


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str


def current() -> RankInfo | None:
    """Return this process's rank info when a process group with more than one rank is running."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world < 2:
        return None
    return RankInfo(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())


def is_writer() -> bool:
    """Return True unless this process is a rank other than 0 of a running process group."""
    info = current()
    return info is None or info.rank == 0


def init_from_env() -> RankInfo | None:
    """Join the process group that torchrun describes in the environment; None when not under torchrun.

    NCCL is used on CUDA (each rank on cuda:LOCAL_RANK), gloo on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        return None
    if not dist.is_available():
        raise RunError("this PyTorch build has no torch.distributed; train the run on one device (devices: 1)")
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return current()


def shutdown() -> None:
    """Leave the process group, if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_bounds(batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """Return [start, stop) of `rank`'s contiguous shard of a batch of `batch` items.

    Shards differ in size by at most one item; the first `batch % world_size`
    ranks take the extra ones. A rank may get an empty shard when the batch
    has fewer items than there are ranks.
    """
    base, extra = divmod(batch, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum float values over all ranks (float64); returns them unchanged outside a process group."""
    if current() is None:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_min(value: int, device: torch.device) -> int:
    """Return the minimum of an integer over all ranks."""
    if current() is None:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def launch(config_path: Path, devices: int, runs_dir: Path, data_root: str | Path | None,
           threads: int | None = None, gpus: list[int] | None = None) -> None:
    """Train the run of `config_path` in `devices` processes with torchrun and wait for it.

    `gpus` restricts the processes to those CUDA devices (CUDA_VISIBLE_DEVICES).
    Raises RunError with the end of torchrun's output when a rank fails.
    """
    if devices < 2:
        raise ConfigError(f"launch needs devices >= 2, got {devices}")
    if torch.cuda.is_available():
        visible = len(gpus) if gpus else torch.cuda.device_count()
        if visible < devices:
            raise ConfigError(f"the run needs {devices} GPUs, but {visible} are available to it; "
                              "lower devices in the profile or run it on a larger machine")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
               "-m", "wrnlib.train", "--config", str(config_path), "--runs-dir", str(runs_dir)]
    if data_root:
        command += ["--data-root", str(data_root)]
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    # torchrun sets 1 OpenMP thread per rank unless told otherwise.
    env["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // devices))
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RunError(f"distributed training of {config_path.parent.name} on {devices} devices failed "
                       f"(torchrun exit {proc.returncode}):\n{tail}")
