"""Time breakdown of one CPU training step of wrnlib's loop, by phase and by operator group.

Profiles `wrnlib.train.train_steps` with `torch.profiler` over a number of
batches. Per step, it reports the time of each phase that `train_steps`
marks: augmentation and normalisation, forward pass with the loss, backward
pass, optimiser step. It also groups the self CPU time of the operators into
convolution, batch norm, ReLU, elementwise add and the rest. Profiling adds
some overhead of its own, so the totals run a little above unprofiled steps.

    python -m benchmarks.step_profile --model wrn-16-2 --precision bf16 fp32

Each configuration (model, precision, malloc setting) runs in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks.common import (
    add_data_arguments,
    add_output_arguments,
    command_line,
    describe_environment,
    print_error_and_exit,
    section_header,
    update_section,
)
from benchmarks.train_throughput import load_training_data, non_negative_int, positive_int

__all__ = ["main", "profile_step"]

SECTION = "Where a training step's time goes"
PHASES = ("augment and normalise", "forward and loss", "backward", "optimizer step")
OPERATOR_GROUPS = ("convolution", "batch norm", "ReLU", "elementwise add", "other")


def operator_group(name: str) -> str:
    """Return the group of a profiler operator name (self time is summed per group)."""
    if "convolution" in name or "mkldnn_conv" in name:
        return "convolution"
    if "batch_norm" in name:
        return "batch norm"
    if "relu" in name or "threshold_backward" in name or "clamp_min" in name:
        return "ReLU"
    if name in ("aten::add", "aten::add_"):
        return "elementwise add"
    return "other"


def profile_step(model_name: str, precision: str, data, *, batches: int = 10, warmup: int = 3,
                 batch_size: int = 128, seed: int = 0, keep_freed_memory: bool = True) -> dict:
    """Return the mean milliseconds per step of each phase and operator group of wrnlib's step on the CPU.

    The phases are the `record_function` ranges that `train_steps` marks; their
    times include the profiler's own overhead. Before profiling, `batches`
    unprofiled steps give the wall time, the system (kernel) time and the
    minor page faults per step. `keep_freed_memory` applies
    `keep_freed_cpu_memory`, as `fit` does; the setting lasts for the process.
    """
    import itertools
    import resource
    import time

    from torch.profiler import ProfilerActivity, profile

    from wrnlib.data import iterate_batches
    from wrnlib.models import WideResNet, parse_model_name
    from wrnlib.runs import RunConfig
    from wrnlib.train import keep_freed_cpu_memory, make_optimizer, resolve_precision, train_steps

    depth, width = parse_model_name(model_name)
    device = torch.device("cpu")
    if keep_freed_memory:
        keep_freed_cpu_memory()
    resolved = resolve_precision(precision, device)
    torch.manual_seed(seed)
    model = WideResNet(depth, width, data.num_classes).to(memory_format=torch.channels_last)
    cfg = RunConfig(run_id="profile", profile="benchmark", dataset="cifar10", method="scratch", depth=depth,
                    width=width, batch_size=batch_size)
    optimizer = make_optimizer(model, cfg, device)
    splits = data.to(device, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    batch_iter = iterate_batches(splits.train_x, splits.train_y, batch_size, shuffle=True, generator=generator,
                                 drop_last=True)

    def run(steps: int):
        return train_steps(model, optimizer, itertools.islice(batch_iter, steps), splits.mean, splits.std,
                           generator, resolved)

    run(warmup)
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    run(batches)
    wall_seconds = time.perf_counter() - started
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(batches)
    phase_us = {p: 0.0 for p in PHASES}
    group_us = {g: 0.0 for g in OPERATOR_GROUPS}
    for event in prof.key_averages():
        if event.key in phase_us:
            phase_us[event.key] += event.cpu_time_total
        else:
            group_us[operator_group(event.key)] += event.self_cpu_time_total
    return {
        "model": model_name.upper(),
        "precision": resolved,
        "batch_size": batch_size,
        "batches": batches,
        "threads": torch.get_num_threads(),
        "malloc": "keep freed" if keep_freed_memory else "glibc default",
        "wall_ms": 1000 * wall_seconds / batches,
        "system_ms": 1000 * (usage_after.ru_stime - usage_before.ru_stime) / batches,
        "minor_page_faults": (usage_after.ru_minflt - usage_before.ru_minflt) / batches,
        "phases_ms": {p: phase_us[p] / 1000 / batches for p in PHASES},
        "operators_ms": {g: group_us[g] / 1000 / batches for g in OPERATOR_GROUPS},
    }


def _profile_in_fresh_process(settings: dict) -> dict:
    """Load the data and run `profile_step` with `settings`; the body of one spawned process."""
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    data = load_training_data(settings["data_root"], settings["download"], synthetic=False, seed=0)
    return profile_step(settings["model"], settings["precision"], data, batches=settings["batches"],
                        warmup=settings["warmup"], batch_size=settings["batch_size"],
                        keep_freed_memory=settings["keep_freed_memory"])


def profile_in_fresh_processes(configurations: list[dict]) -> list[dict]:
    """Run each configuration in its own spawned process and return the results in order.

    A fresh process per configuration keeps the malloc setting, oneDNN's
    kernel cache and the heap of one configuration from affecting the next.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    results = []
    for settings in configurations:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results.append(pool.submit(_profile_in_fresh_process, settings).result())
    return results


def markdown_section(results: list[dict], env: dict, command: str, note: str | None) -> str:
    """Return the body of the "Where a training step's time goes" section of BENCHMARKS.md."""
    lines = section_header("benchmarks/step_profile.py", command, env, note=note)
    first = results[0]
    lines += ["", f"Unprofiled steps (batch {first['batch_size']}, mean over {first['batches']} steps, PyTorch "
              f"threads: {first['threads']}). System time and minor page faults come from getrusage:", "",
              "| model | precision | malloc | wall ms | system ms | minor page faults |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['model']} | {r['precision']} | {r['malloc']} | {r['wall_ms']:.1f} | "
                     f"{r['system_ms']:.1f} | {r['minor_page_faults']:.0f} |")
    header = "| model | precision | malloc | " + " | ".join(PHASES) + " | total |"
    lines += ["", "Profiled steps, milliseconds per step by phase:", "", header,
              "| --- | --- | --- |" + " ---: |" * (len(PHASES) + 1)]
    for r in results:
        values = [r["phases_ms"][p] for p in PHASES]
        lines.append(f"| {r['model']} | {r['precision']} | {r['malloc']} | "
                     + " | ".join(f"{v:.1f}" for v in values) + f" | {sum(values):.1f} |")
    lines += ["", "Self CPU time of every operator of the profiled steps by group, milliseconds per step; "
              "\"other\" includes the augmentation and the optimiser:", "",
              "| model | precision | malloc | " + " | ".join(OPERATOR_GROUPS) + " |",
              "| --- | --- | --- |" + " ---: |" * len(OPERATOR_GROUPS)]
    for r in results:
        lines.append(f"| {r['model']} | {r['precision']} | {r['malloc']} | "
                     + " | ".join(f"{r['operators_ms'][g]:.1f}" for g in OPERATOR_GROUPS) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_profile",
                                     description="Break one CPU training step of wrnlib's loop into phases "
                                                 "and operator groups.")
    parser.add_argument("--model", nargs="+", default=["wrn-16-2"], metavar="NAME",
                        help="WRN-DEPTH-WIDTH names (default wrn-16-2)")
    parser.add_argument("--precision", nargs="+", choices=("auto", "bf16", "fp32"), default=["bf16", "fp32"],
                        help="precisions to profile (default: bf16 fp32)")
    parser.add_argument("--malloc", choices=("keep", "default", "both"), default="both",
                        help="keep: glibc keeps freed memory for reuse, as fit sets it; default: glibc's own "
                             "thresholds; both: one row each (default both)")
    parser.add_argument("--batches", type=positive_int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per batch (default 128)")
    parser.add_argument("--threads", type=positive_int, help="PyTorch CPU threads (default: PyTorch's default)")
    add_data_arguments(parser)
    add_output_arguments(parser, "the tables", json_value="list")
    parser.add_argument("--section", default=SECTION, help=f"heading of the section to rewrite (default: '{SECTION}')")
    return parser


def main(argv: list[str] | None = None) -> int:
    from wrnlib.errors import WrnlibError
    from wrnlib.models import parse_model_name

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if not args.section.strip() or "\n" in args.section:
        print_error_and_exit(f"--section must be a non-empty, one-line heading, got {args.section!r}")
    keep_settings = {"keep": [True], "default": [False], "both": [True, False]}[args.malloc]
    try:
        for name in args.model:
            parse_model_name(name)
        # Loading once here reports a missing data set before any process starts
        # and fills the cache the spawned processes read.
        load_training_data(args.data_root, not args.no_download, synthetic=False, seed=0)
        configurations = [
            {"model": name, "precision": precision, "keep_freed_memory": keep, "batches": args.batches,
             "warmup": args.warmup, "batch_size": args.batch_size, "threads": args.threads,
             "data_root": args.data_root, "download": not args.no_download}
            for name in args.model for precision in args.precision for keep in keep_settings
        ]
        results = profile_in_fresh_processes(configurations)
    except (ValueError, WrnlibError) as exc:
        print_error_and_exit(str(exc))

    if args.threads:
        torch.set_num_threads(args.threads)
    env = describe_environment(torch.device("cpu"))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    section = markdown_section(results, env, command_line("benchmarks.step_profile", argv), args.note)
    print(section)
    if not args.no_write:
        update_section(args.output, args.section, section)
        print(f"wrote the section '{args.section}' of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
