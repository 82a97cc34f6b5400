"""Model size, compute and speed.

Units are part of every name: `params` (count), `macs` (multiply-accumulates
of one forward pass; FLOPs = 2 x MACs and are only reported under that name),
`*_ms` (milliseconds of wall time), `*_mb` (10^6 bytes).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

__all__ = ["count_macs", "count_parameters", "export_onnx", "measure_latency", "model_size_mb"]


def count_parameters(model: nn.Module) -> int:
    """Return the number of parameters (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_parameters(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Return the multiply-accumulates of one forward pass, as counted by torchinfo.

    torchinfo counts convolutions and linear layers as weights x output
    positions and BatchNorm as its parameter count per output; WRN-28-10 at
    32x32 gives 5.243 G MACs.
    """
    from torchinfo import summary

    probe = copy.deepcopy(model).cpu().float().eval()
    stats = summary(probe, input_size=input_size, verbose=0, device="cpu")
    return int(stats.total_mult_adds)


def model_size_mb(path: str | Path) -> float:
    """Return the size of a saved weights file in MB (10^6 bytes)."""
    return os.path.getsize(path) / 1e6


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, batch_size: int = 1, threads: int | None = None,
                    device: str | torch.device = "cpu", repeats: int = 30, warmup: int = 5) -> dict:
    """Time forward passes of `model` in eval mode on random input.

    Runs `warmup` untimed passes, then `repeats` timed ones (synchronising the
    GPU around each) and returns the median and 90th percentile in ms plus the
    settings used. `threads` sets torch's intra-op threads for the measurement
    and is restored afterwards; None keeps the current setting.
    """
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {batch_size} and {repeats}")
    device = torch.device(device)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    try:
        model.eval()
        x = torch.randn(batch_size, 3, 32, 32, device=device)
        if device.type == "cuda":
            x = x.to(memory_format=torch.channels_last)
        times = []
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            _synchronize(device)
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                _synchronize(device)
                times.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
        torch.set_num_threads(previous_threads)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    median = statistics.median(times)
    return {
        "median_ms": median,
        "p90_ms": p90,
        "batch_size": batch_size,
        "threads": threads if threads is not None else previous_threads,
        "device": str(device),
        "repeats": repeats,
        "images_per_second": batch_size * 1000.0 / median,
    }


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Export `model` (eval mode, dynamic batch) to ONNX at `path` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = copy.deepcopy(model).cpu().float().eval()
    x = torch.randn(1, 3, 32, 32)
    torch.onnx.export(
        probe, (x,), str(path), input_names=["images"], output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
        dynamo=False,
    )
    return path
