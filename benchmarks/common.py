"""Helpers shared by the benchmarks: hardware and version facts, and BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from pathlib import Path

import torch

__all__ = [
    "BENCHMARKS_FILE",
    "command_line",
    "cpu_info",
    "describe_environment",
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


def command_line(module: str, argv: list[str]) -> str:
    """Return the shell command that reruns `python -m module` with `argv`."""
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in argv)])


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


def print_error_and_exit(message: str) -> None:
    """Print `message` to stderr as the benchmark's one-line error and exit with status 1."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)
