"""One CIFAR-10 training epoch of WRN-28-10 with wrnlib's loop, and the device utilisation it implies.

Measures, on one device:

1. the seconds of one training epoch (all training images, batch 128, after
   a few warm-up batches) with `wrnlib.train.train_steps`, the step `fit` runs;
2. the FLOPs of that epoch, estimated as 3 x forward MACs x 2 x images: the
   backward pass costs about twice the forward pass (gradients for the
   activations and for the weights), and one MAC is two FLOPs;
3. the device's bf16 matrix-multiply rate, measured on a square matmul.

Utilisation = (estimated FLOPs / epoch seconds) / measured matmul rate.

    python -m benchmarks.gpu_epoch --json
    python -m benchmarks.gpu_epoch --device cpu --model wrn-10-1 --images 512 --matmul-size 512 --no-write

The second form is a quick check of the script itself on a CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch

from benchmarks.common import (
    add_data_arguments,
    add_output_arguments,
    command_line,
    count_forward_macs,
    describe_environment,
    measure_matmul_rate,
    print_error_and_exit,
    resolve_device,
    section_header,
    synchronize,
    update_section,
)
from benchmarks.train_throughput import load_training_data, non_negative_int, positive_int

__all__ = ["main", "measure_epoch"]

SECTION = "GPU training epoch"


def measure_epoch(model_name: str, data, device: torch.device, *, batch_size: int = 128, images: int | None = None,
                  precision: str = "auto", compile: bool = False, warmup: int = 10, seed: int = 0,
                  progress: bool = True) -> dict:
    """Train one epoch of `model_name` on `data` with wrnlib's step and return its timing and FLOPs."""
    from tqdm import tqdm

    from wrnlib.data import iterate_batches
    from wrnlib.models import WideResNet, parse_model_name
    from wrnlib.runs import RunConfig
    from wrnlib.train import compile_model, keep_freed_cpu_memory, make_optimizer, resolve_precision, train_steps

    depth, width = parse_model_name(model_name)
    available = data.train_y.numel()
    images = available if images is None else images
    if images > available:
        raise ValueError(f"--images {images} exceeds the {available} training images available")
    if images < batch_size:
        raise ValueError(f"--images {images} is smaller than one batch of {batch_size}")
    resolved_precision = resolve_precision(precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_cpu_memory()  # as fit does on the CPU

    torch.manual_seed(seed)
    model = WideResNet(depth, width, data.num_classes)
    macs, macs_source = count_forward_macs(model)
    cfg = RunConfig(run_id="benchmark", profile="benchmark", dataset="cifar10", method="scratch", depth=depth,
                    width=width, batch_size=batch_size, compile=compile)
    model.to(device, memory_format=torch.channels_last)
    forward = compile_model(model, compile)
    optimizer = make_optimizer(model, cfg, device)
    splits = data.to(device, memory_format=torch.channels_last)
    # The cached training set is sorted by class, so a subset is drawn at random.
    subset = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:images].to(device)
    train_x, train_y = splits.train_x[subset], splits.train_y[subset]
    generator = torch.Generator(device=device).manual_seed(seed)

    def batches():
        return iterate_batches(train_x, train_y, batch_size, shuffle=True, generator=generator)

    warm_started = time.perf_counter()
    if warmup:
        train_steps(model, optimizer, itertools.islice(batches(), warmup), splits.mean, splits.std, generator,
                    resolved_precision, forward=forward)
    synchronize(device)
    warmup_seconds = time.perf_counter() - warm_started

    epoch = tqdm(batches(), total=-(-images // batch_size), desc=f"{model_name} epoch", unit="batch",
                 disable=not progress, leave=False)
    started = time.perf_counter()
    steps = train_steps(model, optimizer, epoch, splits.mean, splits.std, generator, resolved_precision,
                        forward=forward)
    synchronize(device)
    seconds = time.perf_counter() - started
    non_finite = steps.first_non_finite()
    if non_finite is not None:
        raise RuntimeError(f"the epoch diverged (loss {non_finite[1]} at step {non_finite[0] + 1}); "
                           "its timing is not meaningful")

    flops = 3 * macs * 2 * steps.images
    return {
        "model": model_name.upper(),
        "images": steps.images,
        "batch_size": batch_size,
        "precision": resolved_precision,
        "compile": compile,
        "epoch_seconds": seconds,
        "images_per_second": steps.images / seconds,
        "warmup_batches": warmup,
        "warmup_seconds": warmup_seconds,
        "forward_macs": macs,
        "macs_source": macs_source,
        "flops_per_epoch_estimate": flops,
        "achieved_flops_per_second": flops / seconds,
        "train_loss": steps.loss_sum() / steps.images,
    }


def markdown_section(result: dict, command: str, note: str | None) -> str:
    """Return the body of the "GPU training epoch" section of BENCHMARKS.md."""
    lines = section_header("benchmarks/gpu_epoch.py", command, result, note=note)
    lines += [
        "",
        "| model | images | precision | epoch, s | images/s | FLOPs per epoch (estimate) | "
        "achieved TFLOP/s | bf16 matmul TFLOP/s | utilisation |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {result['model']} | {result['images']} | {result['precision']} | {result['epoch_seconds']:.2f} | "
        f"{result['images_per_second']:.0f} | {result['flops_per_epoch_estimate']:.3e} | "
        f"{result['achieved_flops_per_second'] / 1e12:.1f} | {result['matmul_flops_per_second'] / 1e12:.1f} | "
        f"{100 * result['utilisation']:.1f}% |",
        "",
        f"FLOPs per epoch are an estimate: 3 x forward MACs ({result['forward_macs']:,}, counted by "
        f"{result['macs_source']}) x 2 x images; the backward pass is taken as twice the forward pass. "
        f"The matmul rate is the mean of timed {result['matmul_size']} x {result['matmul_size']} bf16 "
        f"products on the same device. The epoch follows {result['warmup_batches']} warm-up batches "
        f"({result['data']} images, one shuffled pass, batch {result['batch_size']}).",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_epoch",
        description="Time one CIFAR-10 training epoch with wrnlib's loop and compare its FLOP rate "
                    "with the device's measured bf16 matmul rate.",
    )
    parser.add_argument("--model", default="wrn-28-10", help="WRN-DEPTH-WIDTH (default wrn-28-10)")
    parser.add_argument("--device", default="cuda", help="cuda, cpu or auto (default cuda)")
    parser.add_argument("--images", type=positive_int,
                        help="training images in the epoch (default: all 50,000)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per batch (default 128)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="training precision (default auto)")
    parser.add_argument("--compile", action="store_true", help="run the forward pass through torch.compile")
    parser.add_argument("--warmup", type=non_negative_int, default=10,
                        help="untimed batches before the epoch (default 10)")
    parser.add_argument("--matmul-size", type=positive_int, default=8192,
                        help="side of the square bf16 matmul that measures the device's rate (default 8192)")
    parser.add_argument("--threads", type=positive_int, help="PyTorch CPU threads (default: PyTorch's default)")
    add_data_arguments(parser)
    parser.add_argument("--synthetic", action="store_true", help="use random uint8 images instead of CIFAR-10")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and augmentation")
    add_output_arguments(parser, "the result")
    parser.add_argument("--save-json", metavar="PATH", help="also write the result as JSON to PATH")
    return parser


def main(argv: list[str] | None = None) -> int:
    from wrnlib.errors import WrnlibError

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        from wrnlib.models import parse_model_name

        parse_model_name(args.model)
        device = resolve_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        data = load_training_data(args.data_root, not args.no_download, args.synthetic, args.seed)
        result = measure_epoch(args.model, data, device, batch_size=args.batch_size, images=args.images,
                               precision=args.precision, compile=args.compile, warmup=args.warmup,
                               seed=args.seed, progress=not args.json)
    except (ValueError, WrnlibError) as exc:
        print_error_and_exit(str(exc))

    result["matmul_size"] = args.matmul_size
    result["matmul_flops_per_second"] = measure_matmul_rate(device, args.matmul_size)
    result["utilisation"] = result["achieved_flops_per_second"] / result["matmul_flops_per_second"]
    result["data"] = data.dataset
    result.update(describe_environment(device))
    if args.save_json:
        from wrnlib import runs

        runs.atomic_write_json(args.save_json, result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} on {result['device_name']}: one epoch of {result['images']} images in "
          f"{result['epoch_seconds']:.2f} s ({result['images_per_second']:.0f} images/s, {result['precision']}); "
          f"{result['achieved_flops_per_second'] / 1e12:.2f} TFLOP/s estimated, bf16 matmul "
          f"{result['matmul_flops_per_second'] / 1e12:.2f} TFLOP/s, utilisation {100 * result['utilisation']:.1f}%")
    if not args.no_write:
        update_section(args.output, SECTION, markdown_section(result, command_line("benchmarks.gpu_epoch", argv),
                                                              args.note))
        print(f"wrote the section '{SECTION}' of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
