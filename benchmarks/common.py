"""Helpers shared by the benchmarks: hardware and versions, MAC counts, matmul rates, BENCHMARKS.md sections."""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BENCHMARKS_FILE",
    "command_line",
    "count_forward_macs",
    "cpu_info",
    "describe_environment",
    "hook_forward_macs",
    "load_average",
    "measure_matmul_rate",
    "resolve_device",
    "synchronize",
    "update_section",
]

BENCHMARKS_FILE = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"

# CPU flags that decide which bf16 and fp32 kernels oneDNN can use.
RELEVANT_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")

FILE_HEADER = (
    "# Benchmarks\n\n"
    "Measured speed and accuracy records of wrn-compress. Each section is written by the script it\n"
    "names; rerun the script to update it.\n"
)


def resolve_device(name: str) -> torch.device:
    """Map "auto" to the first CUDA device when one is present, else the CPU; validate the rest."""
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"invalid device {name!r}: use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but this PyTorch build sees no CUDA device; "
                         "use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"invalid device {name!r}: use auto, cpu or cuda")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer read afterwards covers it; no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> float | None:
    """Return the 1-minute system load average, or None where the OS does not report one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_info() -> dict:
    """Return the CPU model name, logical CPU count and the bf16-relevant flags present.

    Reads /proc/cpuinfo (Linux); elsewhere the model name falls back to
    `platform.processor()` and the flags are unknown (empty).
    """
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 0,
        "cpu_flags": [flag for flag in RELEVANT_CPU_FLAGS if flag in flags],
    }


def describe_environment(device: torch.device) -> dict:
    """Return the hardware and software facts recorded with every benchmark result."""
    import torchvision

    info = {
        **cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "onednn_version": _onednn_version(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    return info


def _onednn_version() -> str:
    match = re.search(r"MKL-DNN v([\d.]+)", torch.__config__.show())
    return match.group(1) if match else "unknown"


def environment_lines(env: dict) -> list[str]:
    """Return the markdown bullet lines that describe the hardware and the versions."""
    flags = ", ".join(env["cpu_flags"]) or "none of " + ", ".join(RELEVANT_CPU_FLAGS)
    lines = [
        f"- CPU: {env['cpu_model']}, {env['cpu_count']} logical CPUs, PyTorch threads: {env['torch_threads']}",
        f"- CPU flags relevant to bf16: {flags}",
    ]
    if env["device"] == "cuda":
        lines.append(f"- GPU: {env['device_name']}")
    lines.append(
        f"- Python {env['python_version']}, torch {env['torch_version']}, torchvision "
        f"{env['torchvision_version']}, oneDNN {env['onednn_version']}"
    )
    return lines


def section_header(script: str, command: str, env: dict, extra: list[str] = (), note: str | None = None) -> list[str]:
    """Return the opening lines of a BENCHMARKS.md section: script, date, command, hardware, versions.

    `extra` contains further bullet lines placed after the environment, and `note` becomes the last bullet.
    """
    today = datetime.date.today().isoformat()
    lines = [f"Written by `{script}` on {today}. Command:", "", f"    {command}", "", *environment_lines(env), *extra]
    if note:
        lines.append(f"- Note: {note}")
    return lines


def add_data_arguments(parser: argparse.ArgumentParser, dataset: str = "CIFAR-10") -> None:
    """Add --data-root and --no-download, named for `dataset` in the help text."""
    parser.add_argument("--data-root", help=f"folder with {dataset} (default: WRNLIB_DATA_ROOT or the cache)")
    parser.add_argument("--no-download", action="store_true", help=f"never download {dataset}")


def add_output_arguments(parser: argparse.ArgumentParser, printed: str, json_value: str = "object",
                         note_example: str | None = None) -> None:
    """Add --json, --output, --no-write and --note, which every script that writes BENCHMARKS.md takes.

    `printed` names what --no-write prints ("the table"), `json_value` what --json prints ("object", "list").
    """
    parser.add_argument("--json", action="store_true", help=f"print one JSON {json_value} and write nothing")
    parser.add_argument("--output", default=str(BENCHMARKS_FILE),
                        help="markdown file whose section is rewritten (default: BENCHMARKS.md)")
    parser.add_argument("--no-write", action="store_true", help=f"print {printed} only")
    example = f", e.g. {note_example}" if note_example else ""
    parser.add_argument("--note", help=f"a line added to the BENCHMARKS.md section{example}")


# Options that name local files; they do not change what is measured and are
# left out of the recorded command.
PATH_OPTIONS = ("--output", "--save-json", "--data-root")


def command_line(module: str, argv: list[str]) -> str:
    """Return the shell command that reruns `python -m module` with `argv`, without its local paths."""
    kept_args, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in PATH_OPTIONS:
            skip_next = True
        elif not arg.startswith(tuple(f"{option}=" for option in PATH_OPTIONS)):
            kept_args.append(arg)
    return " ".join(["python", "-m", module, *(shlex.quote(arg) for arg in kept_args)])


def update_section(path: str | Path, heading: str, body: str) -> None:
    """Replace the level-2 section `## heading` of a markdown file with `body`, or append it.

    The section runs from its heading line to the next level-2 heading or the
    end of the file; other sections are left as they are. The file is created
    with a short header when missing, and written atomically.
    """
    from wrnlib import runs

    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else FILE_HEADER
    section = f"## {heading}\n\n{body.strip()}\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == f"## {heading}"), None)
    if start is None:
        new_text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        after = "".join(lines[end:])
        new_text = "".join(lines[:start]) + section + ("\n" + after if after else "")
    runs.atomic_write_text(path, new_text)


def count_forward_macs(model: nn.Module) -> tuple[int, str]:
    """Return (MACs of one 32x32 forward pass, how they were counted).

    Uses `wrnlib.measure.count_macs` (torchinfo) when torchinfo is installed,
    else `hook_forward_macs`.
    """
    try:
        from wrnlib.measure import count_macs

        return count_macs(model), "torchinfo"
    except ImportError:
        return hook_forward_macs(model), "conv and linear layers (forward hooks)"


def hook_forward_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Count the MACs of convolutions and linear layers in one forward pass with forward hooks.

    A convolution costs output elements x input channels per group x kernel
    area; a linear layer output elements x input features. BatchNorm's
    per-channel work, which torchinfo adds, is left out.
    """
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * kernel

    def linear_hook(module, inputs, output):
        nonlocal total
        total += output.numel() * module.in_features

    probe = copy.deepcopy(model).cpu().float().eval()
    handles = [m.register_forward_hook(conv_hook) for m in probe.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in probe.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        probe(torch.zeros(input_size))
    for handle in handles:
        handle.remove()
    return total


def measure_matmul_rate(device: torch.device, size: int = 8192, dtype: torch.dtype = torch.bfloat16,
                        repeats: int = 10, warmup: int = 3) -> float:
    """Return the measured FLOP/s of a (size x size) @ (size x size) product in `dtype` on `device`.

    Random normal inputs; the mean over `repeats` timed products after
    `warmup` untimed ones; one product is 2 x size^3 FLOPs.
    """
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    for _ in range(warmup):
        torch.matmul(a, b)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    synchronize(device)
    seconds = (time.perf_counter() - started) / repeats
    return 2.0 * size ** 3 / seconds


def print_error_and_exit(message: str) -> None:
    """Print `message` to stderr as the benchmark's one-line error and exit with status 1."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)
