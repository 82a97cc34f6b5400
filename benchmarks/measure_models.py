"""Measure WRN models with the same code path as every run, and print fixed-width tables.

    python -m benchmarks.measure_models                      # WRN-28-10/4/2/1, pruned vs native
    python -m benchmarks.measure_models --depth 10 --latency-repeats 20 --throughput-repeats 2

Each model goes through `wrnlib.measure.measure_model`, the code every run
uses after training. It counts parameters and MACs, measures forward-pass
memory in a fresh child process and exports to ONNX with the parity check.
It then times latency (batch 1) and throughput (batch 256) with PyTorch and
ONNX Runtime, on 1 thread and on every available CPU. A pruned model is timed
interleaved with the native WRN of its widths. Weights are random (He init,
as in training); speed and memory do not depend on their values.
The last column, `measure s`, is the wall time of the whole measurement of
one model, which is what each run of a profile adds after training.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from wrnlib import runs
from wrnlib.measure import THROUGHPUT_BATCH, measure_model
from wrnlib.models import WideResNet, blocks_per_group, check_width
from wrnlib.prune import check_ratio, prune_model


def parse_pairs(text: str) -> list[tuple[int, float]]:
    """Parse "10:0.8,2:0.5" into [(teacher width, pruning ratio), ...]."""
    pairs = []
    for item in filter(None, text.split(",")):
        width, _, ratio = item.partition(":")
        try:
            pairs.append((int(width), float(ratio)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid pair {item!r}: write WIDTH:RATIO, e.g. 10:0.8 (prune WRN-d-10 by 0.8)") from None
    return pairs


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=28, help="WRN depth (6n+4); default 28")
    parser.add_argument("--widths", type=int, nargs="+", default=[10, 4, 2, 1], help="widths to measure")
    parser.add_argument("--pairs", type=parse_pairs, default=parse_pairs("10:0.8,2:0.5"),
                        help="pruned models as WIDTH:RATIO, each timed against its native twin; "
                             "default 10:0.8,2:0.5; '' for none")
    parser.add_argument("--classes", type=int, default=10, help="classifier outputs; default 10")
    parser.add_argument("--latency-repeats", type=int, default=30, help="timed batch-1 passes per figure")
    parser.add_argument("--throughput-repeats", type=int, default=3, help="timed batch-256 passes per figure")
    parser.add_argument("--json", type=Path, help="also write every metric to this JSON file")
    args = parser.parse_args(argv)
    try:
        blocks_per_group(args.depth)
        for width in args.widths:
            check_width(width)
        for width, ratio in args.pairs:
            check_width(width)
            check_ratio(ratio)
    except ValueError as exc:
        parser.error(str(exc))
    for name in ("latency_repeats", "throughput_repeats", "classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def measure_all(args: argparse.Namespace, scratch: Path) -> list[dict]:
    """Return one metrics dict per measured model, each with `name` and `twin` (the native twin or "")."""
    rows = []
    jobs = [(f"WRN-{args.depth}-{w}", WideResNet(args.depth, w, args.classes), None) for w in args.widths]
    for width, ratio in args.pairs:
        torch.manual_seed(0)
        pruned = prune_model(WideResNet(args.depth, width, args.classes), ratio)
        student = max(1, pruned.arch.stream[0] // 16)
        jobs.append((f"WRN-{args.depth}-{width}@{ratio:g}", pruned, WideResNet(args.depth, student, args.classes)))
    for index, (name, model, native) in enumerate(jobs, start=1):
        print(f"[{index}/{len(jobs)}] measuring {name} ...", file=sys.stderr, flush=True)
        weights = scratch / f"{index}.pt"
        runs.save_model(model, weights)
        metrics = measure_model(model, weights, scratch / f"{index}.onnx", latency_repeats=args.latency_repeats,
                                throughput_repeats=args.throughput_repeats, native=native, cuda=False)
        metrics["name"] = name
        metrics["twin"] = native.name if native is not None else ""
        metrics["native_params"] = sum(p.numel() for p in native.parameters()) if native is not None else None
        rows.append(metrics)
    return rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def print_report(rows: list[dict], command: str, started_load: float, seconds: float) -> None:
    env = rows[0]["measurement_env"]
    all_threads = env["threads_all"]
    print(f"command: {command}")
    print(f"cpu: {env['cpu_model']}, {env['logical_cpus']} logical CPUs, {env['available_cpus']} available "
          f"('all' = {all_threads} threads)")
    print(f"torch {env['torch_version']}, onnxruntime {env['onnxruntime_version']}, onnx {env['onnx_version']}, "
          f"ONNX opset {env['onnx_opset']}, python {env['python_version']}, {env['platform']}")
    print(f"load average (1 min) at start {started_load:.2f}, highest at a model's start "
          f"{max(r['measurement_env']['load_average_1min'] or 0.0 for r in rows):.2f}; total {seconds:.0f} s")
    print(f"repeats: batch 1 {rows[0]['latency_repeats']} timed passes after 5 warm-up, batch {THROUGHPUT_BATCH} "
          f"{rows[0]['throughput_repeats']} after 1 warm-up; figures are medians")

    print_table(
        "Size, compute and forward-pass memory (MB = 10^6 bytes; memory = peak RSS growth of a fresh process, "
        "1 thread)",
        ["model", "params", "MACs (M)", "weights MB", "ONNX MB", "mem b1 MB", f"mem b{THROUGHPUT_BATCH} MB",
         "ONNX max diff"],
        [[r["name"], f"{r['params']:,}", f"{r['macs'] / 1e6:,.1f}", f"{r['model_size_mb']:.2f}",
          f"{r['onnx_size_mb']:.2f}", f"{r['forward_peak_rss_mb_batch1_cpu']:.1f}",
          f"{r[f'forward_peak_rss_mb_batch{THROUGHPUT_BATCH}_cpu']:.1f}", f"{r['onnx_max_abs_diff']:.1e}"]
         for r in rows])

    b = THROUGHPUT_BATCH
    print_table(
        f"Latency at batch 1 (ms, median / p90) and throughput at batch {b} (images/s); "
        f"1t = 1 thread, all = {all_threads} threads",
        ["model", "torch b1 1t", "torch b1 all", "ORT b1 1t", "ORT b1 all", f"torch b{b} 1t", f"torch b{b} all",
         f"ORT b{b} 1t", f"ORT b{b} all", "measure s"],
        [[r["name"],
          f"{r['latency_ms_batch1_cpu']:.2f} / {r['latency_p90_ms_batch1_cpu']:.2f}",
          f"{r['latency_ms_batch1_cpu_all_threads']:.2f} / {r['latency_p90_ms_batch1_cpu_all_threads']:.2f}",
          f"{r['latency_ms_batch1_ort']:.2f} / {r['latency_p90_ms_batch1_ort']:.2f}",
          f"{r['latency_ms_batch1_ort_all_threads']:.2f} / {r['latency_p90_ms_batch1_ort_all_threads']:.2f}",
          f"{r[f'throughput_ips_batch{b}_cpu']:,.0f}", f"{r[f'throughput_ips_batch{b}_cpu_all_threads']:,.0f}",
          f"{r[f'throughput_ips_batch{b}_ort']:,.0f}", f"{r[f'throughput_ips_batch{b}_ort_all_threads']:,.0f}",
          f"{r['measurement_seconds']:.1f}"]
         for r in rows])

    pruned = [r for r in rows if r["twin"]]
    if pruned:
        print_table(
            "Pruned vs native twin, timed interleaved in one process on 1 thread (ratio = pruned / native; "
            "> 1: pruned is slower)",
            ["pruned", "params", "twin", "twin params", "b1 ms", "twin b1 ms", "ratio b1", f"ratio b{b}",
             "ORT ratio b1", f"ORT ratio b{b}"],
            [[r["name"], f"{r['params']:,}", r["twin"], f"{r['native_params']:,}",
              f"{r['latency_ms_batch1_cpu']:.3f}", f"{r['native_latency_ms_batch1_cpu']:.3f}",
              f"{r['pruned_to_native_latency_ratio_batch1_cpu']:.3f}",
              f"{r[f'pruned_to_native_latency_ratio_batch{b}_cpu']:.3f}",
              f"{r['pruned_to_native_latency_ratio_batch1_ort']:.3f}",
              f"{r[f'pruned_to_native_latency_ratio_batch{b}_ort']:.3f}"]
             for r in pruned])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started_load = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wrn-measure-") as scratch:
        rows = measure_all(args, Path(scratch))
    command = "python -m benchmarks.measure_models" + ("" if not argv else " " + shlex.join(argv))
    print_report(rows, command, started_load, time.perf_counter() - started)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
