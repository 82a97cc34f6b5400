"""Time node pruning of WRN-28-10 by 0.8 (to the widths of WRN-28-2) on the CPU, per criterion.

    python -m benchmarks.prune_speed [--repeats 5] [--threads N] [--markdown]

Each timing covers `prune_model` on a 10-class WRN-28-10 in eval mode: the
importance scores, the selection, building the smaller model and copying the
kept weights. The model is built once, outside the timing, and one untimed
call per criterion warms up the allocator. The last row times the pruning
steps of an iterative schedule (10 rounds, every round prunes the previous
round's model), without any fine-tuning. `--markdown` prints the result as
the "Pruning speed" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time

import torch

from wrnlib.models import WideResNet
from wrnlib.prune import CRITERIA, prune_model, prune_to_widths, round_archs

DEPTH, WIDTH, NUM_CLASSES = 28, 10, 10
PRUNING_RATIO = 0.8          # 160/320/640 channels -> 32/64/128, the widths of WRN-28-2
ITERATIVE_ROUNDS = 10


def cpu_model() -> str:
    """Return the CPU model name from lscpu, else from the platform module."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or platform.machine()
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def time_call(function, repeats: int) -> list[float]:
    """Return the wall time in seconds of `repeats` calls, after one untimed warm-up call."""
    function()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return seconds


def prune_iteratively(model: WideResNet) -> WideResNet:
    current = model
    for arch in round_archs(model.arch, PRUNING_RATIO, ITERATIVE_ROUNDS):
        current = prune_to_widths(current, arch.stream, arch.inner, criterion="l1")
    return current


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (default: 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--markdown", action="store_true", help="print the BENCHMARKS.md section")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    model = WideResNet(DEPTH, WIDTH, NUM_CLASSES).eval()
    rows = []
    for criterion in CRITERIA:
        seconds = time_call(lambda: prune_model(model, PRUNING_RATIO, criterion=criterion), args.repeats)
        rows.append((f"one-shot, {criterion}", seconds))
    seconds = time_call(lambda: prune_iteratively(model), args.repeats)
    rows.append((f"iterative, l1, {ITERATIVE_ROUNDS} rounds (pruning only)", seconds))

    header = f"{'pruning WRN-28-10 by 0.8':<44} {'median (s)':>10} {'min (s)':>8} {'max (s)':>8}"
    lines = [header, "-" * len(header)]
    for name, seconds in rows:
        lines.append(f"{name:<44} {statistics.median(seconds):>10.3f} {min(seconds):>8.3f} {max(seconds):>8.3f}")
    table = "\n".join(lines)
    if not args.markdown:
        print(table)
        return

    command = "python -m benchmarks.prune_speed --markdown" + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
    if args.threads is not None:
        command += f" --threads {args.threads}"
    print("## Pruning speed\n")
    print(f"Command: `{command}`\n")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"Hardware: {cpu_model()}, {torch.get_num_threads()} torch threads on {cores} usable cores; "
          f"torch {torch.__version__}, Python {platform.python_version()}.\n")
    print(f"Wall time of one call, {args.repeats} timed calls after one warm-up. The 1-minute load average "
          f"was {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the timings; a load above the "
          "core count means other processes shared the CPU.\n")
    print("```text\n" + table + "\n```")


if __name__ == "__main__":
    main()
