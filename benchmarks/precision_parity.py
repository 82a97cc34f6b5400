"""Test accuracy of bf16 and fp32 training over seeds, with a profile's settings.

Trains each model from scratch once per seed and precision with
`wrnlib.train.fit` and the settings of a profile. By default that is the
quick profile: its epochs, schedule, batch size and training, validation and
test subsets. The script reports the mean and sample standard deviation of
test accuracy per precision. Both precisions of one seed start from the same weights and see
the same batches, so the script also reports the paired difference.

The precisions agree when the difference of their means is no larger than
the larger of their two seed-to-seed standard deviations.

    python -m benchmarks.precision_parity
    python -m benchmarks.precision_parity --models wrn-10-1 --seeds 0 1 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
from benchmarks.train_throughput import positive_int

__all__ = ["main", "run_parity", "summarise"]

SECTION = "Accuracy parity: bf16 and fp32"
PRECISIONS = ("bf16", "fp32")


def run_config(profile, dataset: str, depth: int, width: int, seed: int, precision: str):
    """Return the RunConfig of a scratch run with `profile`'s settings and the given precision."""
    from wrnlib.runs import RunConfig

    return RunConfig(
        run_id=f"parity-{dataset}-wrn{depth}-{width}-s{seed}-{precision}", profile=profile.name, dataset=dataset,
        method="scratch", depth=depth, width=width, seed=seed, epochs=profile.epochs,
        milestones=list(profile.milestones), batch_size=profile.batch_size, lr=profile.lr,
        lr_gamma=profile.lr_gamma, momentum=profile.momentum, weight_decay=profile.weight_decay,
        val_size=profile.val_size, train_subset=profile.train_subset, test_subset=profile.test_subset,
        precision=precision,
    )


def run_parity(models: list[str], seeds: list[int], profile_name: str = "quick", dataset: str = "cifar10",
               data_root=None, download: bool = True, workdir: Path | None = None,
               progress: bool = True) -> list[dict]:
    """Train every (model, seed, precision) once on the CPU and return one row per run."""
    from tqdm import tqdm

    from wrnlib.data import prepare_data
    from wrnlib.grid import get_profile
    from wrnlib.models import WideResNet, parse_model_name
    from wrnlib.train import fit

    profile = get_profile(profile_name)
    parsed = [(name, *parse_model_name(name)) for name in models]
    device = torch.device("cpu")
    rows = []
    bar = tqdm(total=len(parsed) * len(seeds) * len(PRECISIONS), desc="parity runs", unit="run",
               disable=not progress)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for seed in seeds:
            data = prepare_data(dataset, data_root, val_size=profile.val_size, train_subset=profile.train_subset,
                                test_subset=profile.test_subset, seed=seed, download=download)
            for name, depth, width in parsed:
                for precision in PRECISIONS:
                    cfg = run_config(profile, dataset, depth, width, seed, precision)
                    torch.manual_seed(seed)
                    model = WideResNet(depth, width, data.num_classes)
                    started = time.perf_counter()
                    result = fit(model, data, cfg, Path(tmp) / cfg.run_id, device=device)
                    rows.append({
                        "model": name.upper(),
                        "seed": seed,
                        "precision": result["precision"],
                        "test_acc": result["test_acc"],
                        "final_val_acc": result["history"][-1]["val_acc"],
                        "train_seconds": result["train_seconds"],
                        "wall_seconds": time.perf_counter() - started,
                    })
                    bar.update()
    bar.close()
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Return per model: mean and sample std of test accuracy per precision, the differences and the verdict."""
    summaries = []
    for model in dict.fromkeys(r["model"] for r in rows):
        by_precision = {p: {r["seed"]: r["test_acc"] for r in rows if r["model"] == model and r["precision"] == p}
                        for p in PRECISIONS}
        entry = {"model": model, "seeds": sorted(by_precision["fp32"])}
        for precision, accs in by_precision.items():
            values = list(accs.values())
            entry[f"{precision}_mean"] = statistics.fmean(values)
            entry[f"{precision}_std"] = statistics.stdev(values) if len(values) > 1 else float("nan")
        entry["difference"] = entry["bf16_mean"] - entry["fp32_mean"]
        paired = [by_precision["bf16"][s] - by_precision["fp32"][s] for s in entry["seeds"] if s in by_precision["bf16"]]
        entry["paired_difference_std"] = statistics.stdev(paired) if len(paired) > 1 else float("nan")
        spread = max(entry["bf16_std"], entry["fp32_std"])
        entry["within_seed_spread"] = bool(abs(entry["difference"]) <= spread)
        summaries.append(entry)
    return summaries


def markdown_section(rows: list[dict], summaries: list[dict], env: dict, profile_name: str, dataset: str,
                     command: str, note: str | None) -> str:
    """Return the body of the "Accuracy parity" section of BENCHMARKS.md."""
    from wrnlib.grid import get_profile

    profile = get_profile(profile_name)
    train_images = "all" if profile.train_subset is None else f"{profile.train_subset:,}"
    test_images = "all" if profile.test_subset is None else f"{profile.test_subset:,}"
    lines = section_header("benchmarks/precision_parity.py", command, env, note=note)
    lines += [
        "",
        f"Scratch runs on {dataset} with the {profile_name} profile's settings ({train_images} training images, "
        f"{profile.epochs} epochs, batch {profile.batch_size}, {test_images} test images), trained with "
        "`wrnlib.train.fit` on the CPU. Test accuracy in %, mean ± sample standard deviation over seeds:",
        "",
        "| model | seeds | bf16 | fp32 | bf16 − fp32 | agree |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for s in summaries:
        lines.append(
            f"| {s['model']} | {', '.join(map(str, s['seeds']))} | {s['bf16_mean']:.2f} ± {s['bf16_std']:.2f} | "
            f"{s['fp32_mean']:.2f} ± {s['fp32_std']:.2f} | {s['difference']:+.2f} | "
            f"{'yes' if s['within_seed_spread'] else 'no'} |"
        )
    lines += [
        "",
        "The precisions agree when |bf16 − fp32| is no larger than the larger of the two standard deviations. "
        "Runs with the same seed start from the same weights and draw the same batches and augmentations.",
        "",
        "| model | seed | precision | test accuracy, % | training seconds |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['seed']} | {r['precision']} | {r['test_acc']:.2f} | "
                     f"{r['train_seconds']:.1f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.precision_parity",
        description="Train scratch runs in bf16 and fp32 over seeds and compare their test accuracy.",
    )
    parser.add_argument("--models", nargs="+", default=["wrn-10-2", "wrn-10-1"], metavar="NAME",
                        help="WRN-DEPTH-WIDTH names (default: wrn-10-2 wrn-10-1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--profile", default="quick", help="profile whose settings the runs use (default quick)")
    parser.add_argument("--dataset", default="cifar10", help="cifar10 or cifar100 (default cifar10)")
    parser.add_argument("--threads", type=positive_int, help="PyTorch CPU threads (default: PyTorch's default)")
    add_data_arguments(parser, "the data set")
    add_output_arguments(parser, "the summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    from wrnlib.data import dataset_info
    from wrnlib.errors import WrnlibError
    from wrnlib.grid import get_profile
    from wrnlib.models import parse_model_name

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        print_error_and_exit(f"--seeds must be distinct, got {args.seeds}")
    try:
        for name in args.models:
            parse_model_name(name)
        get_profile(args.profile)
        dataset_info(args.dataset)
        if args.threads:
            torch.set_num_threads(args.threads)
        rows = run_parity(args.models, args.seeds, args.profile, args.dataset, args.data_root,
                          download=not args.no_download, progress=not args.json)
    except (ValueError, WrnlibError) as exc:
        print_error_and_exit(str(exc))

    summaries = summarise(rows)
    env = describe_environment(torch.device("cpu"))
    if args.json:
        print(json.dumps({"profile": args.profile, "dataset": args.dataset, "summary": summaries, "runs": rows,
                          **env}, indent=2))
        return 0
    for s in summaries:
        print(f"{s['model']}: bf16 {s['bf16_mean']:.2f} ± {s['bf16_std']:.2f}, fp32 {s['fp32_mean']:.2f} ± "
              f"{s['fp32_std']:.2f}, difference {s['difference']:+.2f} "
              f"({'within' if s['within_seed_spread'] else 'outside'} the seed-to-seed spread)")
    if not args.no_write:
        section = markdown_section(rows, summaries, env, args.profile, args.dataset,
                                   command_line("benchmarks.precision_parity", argv), args.note)
        update_section(args.output, SECTION, section)
        print(f"wrote the section '{SECTION}' of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
