"""Model size, compute, memory and speed.

Units are part of every name: `params` (count), `macs` (multiply-accumulates
of one forward pass; FLOPs = 2 x MACs and are only reported under that name),
`*_ms` (milliseconds of wall time), `*_mb` (10^6 bytes), `*_ips` (images per
second).

`measure_model` runs every measurement of a finished run and returns flat
metric keys named `<quantity>_batch<B>_<backend>[_all_threads]`: backend `cpu`
is PyTorch on the CPU, `ort` is ONNX Runtime's CPU execution provider and
`cuda` is PyTorch on the GPU. Without `_all_threads` a CPU figure uses one
intra-op thread (the edge-device proxy); with it, every CPU this process may
run on. `measurement_env` records the hardware and versions behind the figures.

Run as `python -m wrnlib.measure peak-rss WEIGHTS BATCH THREADS`, this module is
the fresh child process that `measure_peak_memory_cpu` starts.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from .errors import RunError

__all__ = [
    "ONNX_OPSET",
    "ONNX_TOLERANCE",
    "THROUGHPUT_BATCH",
    "OnnxParityError",
    "available_cpus",
    "check_onnx_parity",
    "count_macs",
    "count_nonzero_parameters",
    "count_parameters",
    "export_onnx",
    "measure_latency",
    "measure_latency_interleaved",
    "measure_model",
    "measure_onnx_latency",
    "measure_onnx_latency_interleaved",
    "measure_peak_memory_cpu",
    "measure_peak_memory_cuda",
    "measurement_environment",
    "model_size_mb",
    "onnx_session",
]

ONNX_OPSET = 17            # ONNX operator set of every exported model
ONNX_TOLERANCE = 1e-4      # max |ONNX Runtime logit - PyTorch logit| an export may differ by
THROUGHPUT_BATCH = 256     # batch size of the throughput figures
INPUT_SHAPE = (3, 32, 32)  # one CIFAR image, channels first

MEMORY_METHOD_CPU = ("peak RSS of a fresh child process during one forward pass ({threads} intra-op thread(s)), "
                     "minus its RSS just before the pass; Linux VmHWM reset through /proc/self/clear_refs; "
                     "glibc mmap threshold fixed at 128 KiB")
# glibc raises its mmap threshold after freeing a large block and then keeps
# later blocks of that size in the heap. Which blocks stay resident varies from
# run to run: WRN-10-1 at batch 256 measured 93, 126 or 143 MB (AMD EPYC, torch
# 2.14.1, glibc 2.36). A fixed threshold (glibc's initial default) maps every
# block >= 128 KiB on its own and unmaps it on free, so the peak follows the
# live tensors: 93 MB each time.
MALLOC_MMAP_THRESHOLD = "131072"
MEMORY_METHOD_CPU_FALLBACK = ("growth of ru_maxrss of a fresh child process over one forward pass "
                              "({threads} intra-op thread(s)); may undercount when loading the model peaked higher")
MEMORY_METHOD_CUDA = "torch.cuda.max_memory_allocated after reset_peak_memory_stats (weights, input, activations)"


class OnnxParityError(RunError):
    """An ONNX export whose outputs differ from PyTorch's by more than the tolerance."""


# --------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------

def count_parameters(model: nn.Module) -> int:
    """Return the number of parameters (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_parameters(model: nn.Module) -> int:
    """Return the number of parameter entries that are not exactly zero.

    Equal to `count_parameters` for a physically pruned network unless some
    weights are zero, and smaller for a masked (unstructured) one.
    """
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


def available_cpus() -> int:
    """Return the number of CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------

def _check_timing_settings(batch_size: int, threads: int | None, repeats: int, warmup: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"invalid batch_size {batch_size!r}: it must be an integer >= 1")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"invalid threads {threads!r}: use an integer >= 1, or None to keep the current setting")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"invalid repeats {repeats!r}: at least one timed pass is needed")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"invalid warmup {warmup!r}: use an integer >= 0")


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r} ({exc}); use 'cpu' or 'cuda'") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(device)!r}: latency is measured on 'cpu' or 'cuda'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch.cuda.is_available() is False; use 'cpu'")
    return device


def _time_interleaved(calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int,
                      synchronize: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Time `repeats` calls of each function in ms, the functions taking turns.

    Every function first runs `warmup` untimed calls. Round r starts with the
    function at position r mod n, so that no function always runs first (a
    fixed order would favour one of them when caches or clocks drift).
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    synchronize()
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            calls[name]()
            synchronize()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def _summarize(times: list[float], batch_size: int, threads: int, device: str, backend: str, warmup: int) -> dict:
    ordered = sorted(times)
    # Nearest-rank 90th percentile. With fewer than 10 repeats it is the maximum or the second largest.
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    median = statistics.median(ordered)
    return {
        "median_ms": median,
        "p90_ms": p90,
        "min_ms": ordered[0],
        "batch_size": batch_size,
        "threads": threads,
        "device": device,
        "backend": backend,
        "repeats": len(times),
        "warmup": warmup,
        "images_per_second": batch_size * 1000.0 / median,
    }


def measure_latency_interleaved(models: Mapping[str, nn.Module], batch_size: int = 1, threads: int | None = None,
                                device: str | torch.device = "cpu", repeats: int = 30,
                                warmup: int = 5) -> dict[str, dict]:
    """Time forward passes of several models in one process, alternating between them.

    Returns, per name in `models`, the same dict as `measure_latency`. Timing
    the models turn by turn exposes them to the same load and clock, so their
    ratio is fairer than that of two separate measurements.
    """
    _check_timing_settings(batch_size, threads, repeats, warmup)
    if not models:
        raise ValueError("no models to measure: pass a mapping of name -> model")
    device = _resolve_device(device)
    previous_threads = torch.get_num_threads()
    modes = {name: model.training for name, model in models.items()}
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        x = torch.randn(batch_size, *INPUT_SHAPE, device=device)
        if device.type == "cuda":
            x = x.to(memory_format=torch.channels_last)
        calls = {}
        for name, model in models.items():
            model.eval()
            calls[name] = (lambda m: (lambda: m(x)))(model)
        synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        with torch.inference_mode():
            times = _time_interleaved(calls, repeats, warmup, synchronize)
    finally:
        for name, model in models.items():
            model.train(modes[name])
        torch.set_num_threads(previous_threads)
    used_threads = threads if threads is not None else previous_threads
    return {name: _summarize(t, batch_size, used_threads, str(device), "pytorch", warmup)
            for name, t in times.items()}


def measure_latency(model: nn.Module, batch_size: int = 1, threads: int | None = None,
                    device: str | torch.device = "cpu", repeats: int = 30, warmup: int = 5) -> dict:
    """Time forward passes of `model` in eval mode on random input.

    Runs `warmup` untimed passes, then `repeats` timed ones (synchronising the
    GPU after each) and returns `median_ms`, `p90_ms`, `min_ms`,
    `images_per_second` (batch size / median) and the settings used.
    `threads` sets torch's intra-op threads for the measurement and is
    restored afterwards; None keeps the current setting.
    """
    return measure_latency_interleaved({"model": model}, batch_size, threads, device, repeats, warmup)["model"]


# --------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------

def export_onnx(model: nn.Module, path: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Export `model` (eval mode, dynamic batch) to ONNX at `path` and return the path.

    Uses the TorchScript-based exporter (`dynamo=False`), which needs no
    onnxscript. The file is written under a temporary name and renamed, so
    `path` never contains a half-written model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = copy.deepcopy(model).cpu().float().eval()
    x = torch.randn(1, *INPUT_SHAPE)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with warnings.catch_warnings():
            # torch 2.9+ deprecates the TorchScript exporter; it is chosen on purpose (see above).
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                probe, (x,), str(partial), input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                dynamo=False,
            )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def onnx_session(path: str | Path, threads: int = 1):
    """Open an ONNX Runtime CPU session with `threads` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"invalid threads {threads!r}: ONNX Runtime needs an integer >= 1")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} not found; create it with wrnlib.measure.export_onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; ORT's warnings would flood the run notebooks
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx_parity(model: nn.Module, path: str | Path, tolerance: float = ONNX_TOLERANCE,
                      batch_size: int = 4, seed: int = 0) -> float:
    """Return the max |ONNX Runtime - PyTorch| over the logits of a seeded random batch.

    Raises OnnxParityError when it exceeds `tolerance`; the batch size
    differs from the export's so the dynamic batch axis is exercised too.
    """
    reference = copy.deepcopy(model).cpu().float().eval()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *INPUT_SHAPE, generator=generator)
    with torch.inference_mode():
        expected = reference(x).numpy()
    actual = onnx_session(path, threads=1).run(None, {"images": x.numpy()})[0]
    if actual.shape != expected.shape:
        raise OnnxParityError(f"ONNX model {path} returns logits of shape {tuple(actual.shape)}, PyTorch "
                              f"{tuple(expected.shape)}; export the model again with export_onnx")
    difference = float(abs(actual - expected).max())
    if not difference <= tolerance:
        raise OnnxParityError(
            f"ONNX model {path} differs from PyTorch by up to {difference:.3g} on a random batch of "
            f"{batch_size}, more than the tolerance {tolerance:g}. The export is not trustworthy; check "
            "the model for operations the ONNX exporter translates differently."
        )
    return difference


def measure_onnx_latency_interleaved(paths: Mapping[str, str | Path], batch_size: int = 1, threads: int = 1,
                                     repeats: int = 30, warmup: int = 5) -> dict[str, dict]:
    """Time ONNX Runtime CPU inference of several models, alternating between them.

    Returns, per name, the same keys as `measure_latency` (backend "onnxruntime").
    """
    import numpy as np

    _check_timing_settings(batch_size, threads, repeats, warmup)
    if threads is None:
        raise ValueError("threads must be set for ONNX Runtime (an integer >= 1)")
    if not paths:
        raise ValueError("no ONNX models to measure: pass a mapping of name -> path")
    x = np.random.default_rng(0).standard_normal((batch_size, *INPUT_SHAPE)).astype(np.float32)
    sessions = {name: onnx_session(path, threads) for name, path in paths.items()}
    calls = {name: (lambda s: (lambda: s.run(None, {"images": x})))(session) for name, session in sessions.items()}
    times = _time_interleaved(calls, repeats, warmup)
    return {name: _summarize(t, batch_size, threads, "cpu", "onnxruntime", warmup) for name, t in times.items()}


def measure_onnx_latency(path: str | Path, batch_size: int = 1, threads: int = 1, repeats: int = 30,
                         warmup: int = 5) -> dict:
    """Time ONNX Runtime CPU inference of one model; same keys as `measure_latency`."""
    return measure_onnx_latency_interleaved({"model": path}, batch_size, threads, repeats, warmup)["model"]


# --------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    """Return a field of /proc/self/status in KiB (Linux only), or None.

    proc(5) calls VmRSS and VmHWM inaccurate because the kernel batches its
    per-CPU counters; the error is pages, small against the MB measured here.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS to its current RSS; False where the kernel offers no way."""
    try:
        # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0, proc(5)).
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        # Kernels before 4.0 reject the value with EINVAL; other systems have no such file.
        return False
    return _status_kib("VmHWM") is not None and _status_kib("VmRSS") is not None


def _ru_maxrss_bytes() -> int:
    import resource

    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return value if sys.platform == "darwin" else value * 1024


def _probe_forward_rss(weights_path: str, batch_size: int, threads: int) -> dict:
    """Measure one forward pass in this (fresh) process; the child side of `measure_peak_memory_cpu`."""
    import gc

    from .runs import load_model

    torch.set_num_threads(threads)
    model = load_model(weights_path).eval()
    x = torch.randn(batch_size, *INPUT_SHAPE)
    gc.collect()
    if _reset_peak_rss():
        baseline = _status_kib("VmRSS") * 1024
        with torch.inference_mode():
            model(x)
        peak = _status_kib("VmHWM") * 1024
        method = MEMORY_METHOD_CPU.format(threads=threads)
    else:
        baseline = _ru_maxrss_bytes()
        with torch.inference_mode():
            model(x)
        peak = _ru_maxrss_bytes()
        method = MEMORY_METHOD_CPU_FALLBACK.format(threads=threads)
    return {"batch_size": batch_size, "threads": threads, "baseline_rss_bytes": baseline,
            "peak_rss_bytes": peak, "forward_rss_bytes": peak - baseline, "method": method}


def _child_environment() -> dict:
    # The child imports this copy of wrnlib even when another one is installed.
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["MALLOC_MMAP_THRESHOLD_"] = MALLOC_MMAP_THRESHOLD
    return env


class _MemoryProbes:
    """Child processes that each measure one forward pass of a saved model; see `measure_peak_memory_cpu`."""

    def __init__(self, weights_path: Path, batch_sizes: tuple[int, ...], threads: int) -> None:
        self.weights_path = weights_path
        self.threads = threads
        self.children = {
            batch_size: subprocess.Popen(
                [sys.executable, "-m", "wrnlib.measure", "peak-rss", str(weights_path), str(batch_size),
                 str(threads)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_environment())
            for batch_size in batch_sizes
        }

    def stop(self) -> None:
        """Kill the children that are still running (after an error elsewhere)."""
        for child in self.children.values():
            if child.poll() is None:
                child.kill()
            child.communicate()

    def collect(self, timeout_s: float = 600.0) -> dict[int, dict]:
        """Wait for every child (each up to `timeout_s`) and return its figures by batch size."""
        results: dict[int, dict] = {}
        errors = []
        for batch_size, child in self.children.items():
            try:
                stdout, stderr = child.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
                errors.append(f"batch {batch_size}: timed out after {timeout_s:g} s")
                continue
            lines = stdout.strip().splitlines()
            if child.returncode != 0 or not lines:
                errors.append(f"batch {batch_size}: exit status {child.returncode}: {stderr.strip()[-800:]}")
                continue
            probe = json.loads(lines[-1])
            results[batch_size] = {
                "batch_size": batch_size,
                "threads": self.threads,
                "forward_mb": probe["forward_rss_bytes"] / 1e6,
                "process_peak_mb": probe["peak_rss_bytes"] / 1e6,
                "baseline_mb": probe["baseline_rss_bytes"] / 1e6,
                "method": probe["method"],
            }
        if errors:
            raise RunError(f"the memory measurement of {self.weights_path} failed in its child process ("
                           + "; ".join(errors) + "). Run `python -m wrnlib.measure peak-rss MODEL.pt BATCH "
                           "THREADS` to see the whole error.")
        return results


def _weights_for_probe(model: nn.Module | str | Path, scratch: Path) -> Path:
    from .models import WideResNet
    from .runs import save_model

    if isinstance(model, WideResNet):
        path = scratch / "model.pt"
        save_model(model, path)
        return path
    if isinstance(model, (str, Path)):
        if not Path(model).is_file():
            raise FileNotFoundError(f"model file {model} not found")
        return Path(model)
    raise ValueError(f"cannot measure the memory of a {type(model).__name__}: pass a WideResNet or the "
                     "path of a file written by wrnlib.runs.save_model, which the child process loads")


def measure_peak_memory_cpu(model: nn.Module | str | Path, batch_sizes: tuple[int, ...] = (1, THROUGHPUT_BATCH),
                            threads: int = 1, timeout_s: float = 600.0) -> dict[int, dict]:
    """Measure the CPU memory of one forward pass per batch size, each in a fresh child process.

    Each child imports torch, loads the model, creates its input, then runs one
    forward pass. `forward_mb` is the growth of the child's peak RSS over that
    pass: activations, workspaces and the runtime pages the first pass
    touches, because the weights and the input are already in the baseline.
    `process_peak_mb` is the child's whole peak RSS. The children run at the
    same time, one intra-op thread each by default. `model` is a WideResNet
    or the path of a file written by `wrnlib.runs.save_model`. Raises
    RunError when a child fails or runs longer than `timeout_s`.
    """
    if not batch_sizes:
        raise ValueError("no batch sizes to measure")
    for batch_size in batch_sizes:
        _check_timing_settings(batch_size, threads, 1, 0)
    with tempfile.TemporaryDirectory(prefix="wrnlib-memory-") as scratch:
        weights_path = _weights_for_probe(model, Path(scratch))
        return _MemoryProbes(weights_path, tuple(batch_sizes), threads).collect(timeout_s)


def measure_peak_memory_cuda(model: nn.Module, batch_size: int, device: str | torch.device = "cuda") -> dict:
    """Measure the GPU memory of one forward pass with torch.cuda.max_memory_allocated.

    `peak_allocated_mb` counts everything allocated at the peak (weights,
    input, activations); `forward_mb` only what the forward pass added.
    """
    _check_timing_settings(batch_size, None, 1, 0)
    device = _resolve_device(device)
    if device.type != "cuda":
        raise ValueError(f"measure_peak_memory_cuda needs a CUDA device, got {str(device)!r}")
    probe = copy.deepcopy(model).to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(batch_size, *INPUT_SHAPE, device=device).to(memory_format=torch.channels_last)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        probe(x)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del probe, x
    torch.cuda.empty_cache()
    return {"batch_size": batch_size, "peak_allocated_mb": peak / 1e6, "forward_mb": (peak - baseline) / 1e6,
            "method": MEMORY_METHOD_CUDA}


# --------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------

def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def measurement_environment() -> dict:
    """Return the hardware, thread counts and versions that every measured figure depends on."""
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    try:
        import onnx

        onnx_version = onnx.__version__
    except ImportError:
        onnx_version = None
    try:
        load_1min = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load_1min = None
    return {
        "cpu_model": _cpu_model_name(),
        "logical_cpus": os.cpu_count(),
        "available_cpus": available_cpus(),
        "threads_single": 1,
        "threads_all": available_cpus(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_version": torch.__version__,
        "onnxruntime_version": ort_version,
        "onnx_version": onnx_version,
        "onnx_opset": ONNX_OPSET,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        # Other processes compete for the cores; a high load means slower, noisier figures.
        "load_average_1min": load_1min,
    }


# --------------------------------------------------------------------------
# Every measurement of one model
# --------------------------------------------------------------------------

def _latency_keys(result: dict, batch_size: int, backend: str, all_threads: bool, prefix: str = "") -> dict:
    suffix = f"batch{batch_size}_{backend}" + ("_all_threads" if all_threads else "")
    keys = {
        f"{prefix}latency_ms_{suffix}": result["median_ms"],
        f"{prefix}latency_p90_ms_{suffix}": result["p90_ms"],
    }
    if batch_size > 1:
        keys[f"{prefix}throughput_ips_{suffix}"] = result["images_per_second"]
    return keys


def _twin_keys(timed: dict, batch_size: int, backend: str) -> dict:
    """Return the native twin's keys and the pruned / native ratio of one interleaved measurement."""
    keys = _latency_keys(timed["native"], batch_size, backend, False, prefix="native_")
    ratio = timed["model"]["median_ms"] / timed["native"]["median_ms"]
    keys[f"pruned_to_native_latency_ratio_batch{batch_size}_{backend}"] = ratio
    return keys


def _count(model: nn.Module, weights_path: Path | None) -> dict:
    macs = count_macs(model)
    metrics = {"params": count_parameters(model), "nonzero_params": count_nonzero_parameters(model),
               "macs": macs, "flops": 2 * macs}
    if weights_path is not None:
        metrics["model_size_mb"] = model_size_mb(weights_path)
    return metrics


def _export_checked(models: dict[str, nn.Module], paths: dict[str, Path]) -> dict:
    """Export every model to its path, check parity, and return the ONNX keys of the model named "model"."""
    differences = {}
    for name, model in models.items():
        export_onnx(model, paths[name])
        differences[name] = check_onnx_parity(model, paths[name])
    return {"onnx_opset": ONNX_OPSET, "onnx_max_abs_diff": differences["model"],
            "onnx_parity_tolerance": ONNX_TOLERANCE, "onnx_size_mb": model_size_mb(paths["model"])}


def _time_pytorch_cpu(models: dict[str, nn.Module], settings: tuple, all_threads: int) -> dict:
    metrics = {}
    for batch_size, repeats, warmup in settings:
        single = measure_latency_interleaved(models, batch_size, 1, "cpu", repeats, warmup)
        metrics.update(_latency_keys(single["model"], batch_size, "cpu", all_threads=False))
        if "native" in models:
            metrics.update(_twin_keys(single, batch_size, "cpu"))
        every = measure_latency(models["model"], batch_size, all_threads, "cpu", repeats, warmup)
        metrics.update(_latency_keys(every, batch_size, "cpu", all_threads=True))
    return metrics


def _time_onnxruntime(paths: dict[str, Path], settings: tuple, all_threads: int) -> dict:
    metrics = {}
    for batch_size, repeats, warmup in settings:
        single = measure_onnx_latency_interleaved(paths, batch_size, 1, repeats, warmup)
        metrics.update(_latency_keys(single["model"], batch_size, "ort", all_threads=False))
        if "native" in paths:
            metrics.update(_twin_keys(single, batch_size, "ort"))
        every = measure_onnx_latency(paths["model"], batch_size, all_threads, repeats, warmup)
        metrics.update(_latency_keys(every, batch_size, "ort", all_threads=True))
    return metrics


def _time_cuda(model: nn.Module, settings: tuple) -> dict:
    # NOTE: untested. This GPU branch (latency and measure_peak_memory_cuda) has
    # never run, because the machines it was written on have no GPU.
    metrics = {}
    gpu_model = copy.deepcopy(model).to("cuda", memory_format=torch.channels_last)
    for batch_size, repeats, warmup in settings:
        result = measure_latency(gpu_model, batch_size, None, "cuda", repeats, warmup)
        metrics.update(_latency_keys(result, batch_size, "cuda", all_threads=False))
        memory = measure_peak_memory_cuda(model, batch_size)
        metrics[f"peak_allocated_mb_batch{batch_size}_cuda"] = memory["peak_allocated_mb"]
    metrics["memory_method_cuda"] = MEMORY_METHOD_CUDA
    return metrics


def measure_model(model: nn.Module, weights_path: str | Path | None = None, onnx_path: str | Path | None = None,
                  latency_repeats: int = 30, throughput_repeats: int = 3, warmup: int = 5,
                  native: nn.Module | None = None, cuda: bool | None = None, progress: bool = False) -> dict:
    """Run every measurement of one WideResNet and return flat metric keys (see the module docstring).

    - counts: `params`, `nonzero_params`, `macs`, `flops` (2 x MACs),
      `model_size_mb` of `weights_path` when given;
    - CPU memory at batch 1 and `THROUGHPUT_BATCH` (`measure_peak_memory_cpu`);
    - ONNX export to `onnx_path` (a temporary file when None) with the parity
      check against PyTorch, which raises OnnxParityError when it fails;
    - latency at batch 1 (`latency_repeats` timed passes after `warmup`) and
      throughput at `THROUGHPUT_BATCH` (`throughput_repeats` after one
      warm-up), each with PyTorch and ONNX Runtime, on 1 thread and on all;
    - with `native` (the native WRN of a pruned model's widths), the
      one-thread PyTorch and ONNX Runtime figures time both models
      interleaved. The pruned model's figures get the usual keys and the
      native one's a `native_` prefix. `pruned_to_native_latency_ratio_*` is
      pruned median / native median, so above 1 the pruned model is slower;
    - on a GPU (`cuda` True, or None and one is present) latency, throughput
      and `torch.cuda.max_memory_allocated`.
    """
    from tqdm import tqdm

    for name, value in (("latency_repeats", latency_repeats), ("throughput_repeats", throughput_repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"invalid {name} {value!r}: use an integer >= 1")
    if cuda is None:
        cuda = torch.cuda.is_available()
    elif cuda and not torch.cuda.is_available():
        raise ValueError("cuda=True but torch.cuda.is_available() is False; pass cuda=False or None")

    started = time.perf_counter()
    environment = measurement_environment()
    settings = ((1, latency_repeats, warmup), (THROUGHPUT_BATCH, throughput_repeats, 1))
    models = {"model": copy.deepcopy(model).cpu().float().eval()}
    if native is not None:
        models["native"] = copy.deepcopy(native).cpu().float().eval()
    weights_path = Path(weights_path) if weights_path is not None else None
    steps = ["count", "onnx", "memory", "pytorch", "onnxruntime"] + (["cuda"] if cuda else [])
    bar = tqdm(total=len(steps), desc="measure", unit="step", disable=not progress)
    metrics: dict = {}
    with tempfile.TemporaryDirectory(prefix="wrnlib-measure-") as scratch:
        scratch = Path(scratch)
        onnx_paths = {name: scratch / f"{name}.onnx" for name in models}
        if onnx_path is not None:
            onnx_paths["model"] = Path(onnx_path)
        # The memory children overlap the untimed steps (counting, export) and
        # finish before any timing starts, so they never compete with it.
        probes = _MemoryProbes(_weights_for_probe(weights_path or models["model"], scratch),
                               (1, THROUGHPUT_BATCH), threads=1)
        try:
            bar.set_postfix_str("count")
            metrics.update(_count(models["model"], weights_path))
            bar.update()
            bar.set_postfix_str("onnx")
            metrics.update(_export_checked(models, onnx_paths))
            bar.update()
        except BaseException:
            probes.stop()
            raise

        bar.set_postfix_str("memory")
        memory = probes.collect()
        for batch_size, figures in memory.items():
            metrics[f"forward_peak_rss_mb_batch{batch_size}_cpu"] = figures["forward_mb"]
            metrics[f"process_peak_rss_mb_batch{batch_size}_cpu"] = figures["process_peak_mb"]
        metrics["memory_method_cpu"] = memory[1]["method"]
        bar.update()

        bar.set_postfix_str("pytorch")
        metrics.update(_time_pytorch_cpu(models, settings, environment["threads_all"]))
        metrics["latency_threads"] = 1
        bar.update()
        bar.set_postfix_str("onnxruntime")
        metrics.update(_time_onnxruntime(onnx_paths, settings, environment["threads_all"]))
        bar.update()

    if cuda:
        bar.set_postfix_str("cuda")
        metrics.update(_time_cuda(models["model"], settings))
        bar.update()
    bar.close()

    metrics["latency_repeats"] = latency_repeats
    metrics["throughput_repeats"] = throughput_repeats
    metrics["throughput_batch_size"] = THROUGHPUT_BATCH
    metrics["measurement_env"] = environment
    metrics["measurement_seconds"] = time.perf_counter() - started
    return metrics


# --------------------------------------------------------------------------
# Child process entry point
# --------------------------------------------------------------------------

def _main(argv: list[str]) -> int:
    usage = "usage: python -m wrnlib.measure peak-rss WEIGHTS.pt BATCH_SIZE THREADS"
    if len(argv) != 4 or argv[0] != "peak-rss":
        print(usage, file=sys.stderr)
        return 2
    try:
        batch_size, threads = int(argv[2]), int(argv[3])
    except ValueError:
        print(f"BATCH_SIZE and THREADS must be integers, got {argv[2]!r} and {argv[3]!r}\n{usage}", file=sys.stderr)
        return 2
    print(json.dumps(_probe_forward_rss(argv[1], batch_size, threads)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
