"""Training images per second of wrnlib's loop against a plain PyTorch loop, interleaved.

Both loops train the same network (same initial weights), with the same batch
size, on the same CIFAR-10 training images, in one process:

- wrnlib's loop is `wrnlib.train.train_steps`, the step `fit` runs: uint8
  images on the device, crop, flip and normalisation on whole batches,
  channels-last, bf16 autocast where the device supports it, fused SGD.
- The reference loop is the one most CIFAR tutorials write: a Dataset that
  returns PIL images (as `torchvision.datasets.CIFAR10` does), torchvision's
  RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize, a
  DataLoader, a float32 NCHW model, `torch.optim.SGD` with the same settings
  and `loss.item()` after every step.

After warm-up, the loops alternate in blocks of a few batches (the order is
reversed every block), so a load change on a shared machine hits both alike.
Images per second = timed images / summed block seconds.

    python -m benchmarks.train_throughput --model wrn-16-2 --batches 20 --json
    python -m benchmarks.train_throughput --note "machine shared with other jobs"

The first prints one JSON object. The second prints a table for WRN-16-2 and
WRN-28-2 and rewrites the "Training throughput" section of BENCHMARKS.md, or
the "Training throughput on a GPU" section when the device is a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from benchmarks.common import (
    add_data_arguments,
    add_output_arguments,
    command_line,
    count_forward_macs,
    describe_environment,
    load_average,
    measure_matmul_rate,
    print_error_and_exit,
    resolve_device,
    section_header,
    synchronize,
    update_section,
)

__all__ = ["measure_throughput", "main"]

SECTION = "Training throughput"
GPU_SECTION = "Training throughput on a GPU"
DEFAULT_TABLE_MODELS = ("wrn-16-2", "wrn-28-2")
SYNTHETIC_IMAGES = 50_000  # as many as CIFAR-10's training set


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def load_training_data(data_root, download: bool, synthetic: bool, seed: int):
    """Return CIFAR-10's training split as `DataSplits` (all 50,000 images), or random images."""
    from wrnlib.data import DATASETS, DataSplits, prepare_data

    if not synthetic:
        return prepare_data("cifar10", data_root, val_size=0, seed=seed, download=download)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (SYNTHETIC_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (SYNTHETIC_IMAGES,), generator=generator)
    info = DATASETS["cifar10"]
    return DataSplits(
        dataset="synthetic", train_x=images, train_y=labels, val_x=images[:0], val_y=labels[:0],
        test_x=images[:0], test_y=labels[:0], num_classes=10,
        mean=torch.tensor(info.mean).view(1, 3, 1, 1), std=torch.tensor(info.std).view(1, 3, 1, 1),
        val_is_test=False,
    )


class PILImageDataset(torch.utils.data.Dataset):
    """Images served as PIL images through a transform, as `torchvision.datasets.CIFAR10` serves them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        # torchvision keeps CIFAR as one (N, 32, 32, 3) uint8 array and calls
        # Image.fromarray per item; the same is done here.
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


# --------------------------------------------------------------------------
# The two loops
# --------------------------------------------------------------------------

@dataclass
class LoopTiming:
    """Timed images and seconds of one loop, with the rate of every block."""

    name: str
    images: int = 0
    seconds: float = 0.0
    block_rates: list[float] = field(default_factory=list)

    def add(self, images: int, seconds: float) -> None:
        self.images += images
        self.seconds += seconds
        self.block_rates.append(images / seconds)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class WrnlibLoop:
    """wrnlib's training step over uint8 CIFAR tensors that live on the device."""

    def __init__(self, model, data, batch_size: int, precision: str, device: torch.device, seed: int,
                 compile: bool = False) -> None:
        from wrnlib.runs import RunConfig
        from wrnlib.train import compile_model, make_optimizer

        self.name = "wrnlib (torch.compile)" if compile else "wrnlib"
        cfg = RunConfig(run_id="benchmark", profile="benchmark", dataset="cifar10", method="scratch",
                        depth=model.depth, width=model.width, batch_size=batch_size, compile=compile)
        self.model = model.to(device, memory_format=torch.channels_last)
        self.forward = compile_model(self.model, compile)
        self.optimizer = make_optimizer(self.model, cfg, device)
        self.data = data.to(device, memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.precision = precision
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.batches = self._endless_batches()

    def _endless_batches(self):
        from wrnlib.data import iterate_batches

        while True:
            yield from iterate_batches(self.data.train_x, self.data.train_y, self.batch_size, shuffle=True,
                                       generator=self.generator, drop_last=True)

    def run(self, batches: int) -> tuple[int, float]:
        """Train on `batches` batches; return (images, seconds)."""
        from wrnlib.train import train_steps

        synchronize(self.device)
        started = time.perf_counter()
        steps = train_steps(self.model, self.optimizer, itertools.islice(self.batches, batches),
                            self.data.mean, self.data.std, self.generator, self.precision,
                            forward=self.forward)
        synchronize(self.device)
        seconds = time.perf_counter() - started
        _check_finite(self.name, steps.first_non_finite())
        return steps.images, seconds


class ReferenceLoop:
    """The plain loop: PIL images, torchvision transforms, a DataLoader, float32 NCHW."""

    name = "reference"

    def __init__(self, model, data, batch_size: int, device: torch.device, seed: int, workers: int) -> None:
        from torchvision import transforms

        mean = data.mean.flatten().tolist()
        std = data.std.flatten().tolist()
        transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])
        dataset = PILImageDataset(data.train_x, data.train_y, transform)
        # Workers stay alive between blocks, so their start-up is paid once, in
        # the warm-up, as it is once per epoch in a real run.
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
        )
        self.model = model.to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                         weight_decay=5e-4)
        self.device = device
        self.iterator = iter(self.loader)

    def _next_batch(self):
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)

    def run(self, batches: int) -> tuple[int, float]:
        """Train on `batches` batches; return (images, seconds)."""
        self.model.train()
        images, running_loss = 0, 0.0
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(batches):
            inputs, labels = self._next_batch()
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(inputs), labels)
            loss.backward()
            self.optimizer.step()
            running_loss += loss.item()
            images += labels.numel()
        synchronize(self.device)
        seconds = time.perf_counter() - started
        _check_finite(self.name, None if running_loss == running_loss else (0, running_loss))
        return images, seconds


def _check_finite(name: str, non_finite) -> None:
    if non_finite is not None:
        raise RuntimeError(f"the {name} loop produced a non-finite loss ({non_finite[1]}); "
                           "the timing of a diverged run is not meaningful")


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------

def measure_throughput(model_name: str, *, batches: int = 20, warmup: int = 3, block: int = 5,
                       batch_size: int = 128, precision: str = "auto", device: str = "auto",
                       threads: int | None = None, reference_workers: int = 0, compile: bool = False,
                       data=None, seed: int = 0, progress: bool = True) -> dict:
    """Measure both loops interleaved on `model_name` and return the result as a flat dict.

    `data` is the `DataSplits` whose training images both loops use.
    `compile=True` adds a third loop, wrnlib's with `torch.compile`, whose
    compilation happens in its warm-up and is reported as `compile_seconds`.
    """
    from tqdm import tqdm

    from wrnlib.models import WideResNet, parse_model_name
    from wrnlib.train import keep_freed_cpu_memory, resolve_precision

    depth, width = parse_model_name(model_name)
    if threads:
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    resolved_precision = resolve_precision(precision, torch_device)
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # fit applies this on the CPU. It is process-wide, so the reference loop
    # runs with it too and the ratio compares the loops alone.
    allocator_tuned = torch_device.type == "cpu" and keep_freed_cpu_memory()
    if data.train_y.numel() < batch_size:
        raise ValueError(f"batch size {batch_size} exceeds the {data.train_y.numel()} training images")

    def fresh_model():
        # Same seed, same initial weights for every loop.
        torch.manual_seed(seed)
        return WideResNet(depth, width, data.num_classes)

    loops = [
        WrnlibLoop(fresh_model(), data, batch_size, resolved_precision, torch_device, seed),
        ReferenceLoop(fresh_model(), data, batch_size, torch_device, seed, reference_workers),
    ]
    if compile:
        loops.append(WrnlibLoop(fresh_model(), data, batch_size, resolved_precision, torch_device, seed,
                                compile=True))

    # The matmul rates bound what each precision can reach. They are measured
    # before the warm-up and again after the timed blocks, and the higher of
    # the two is kept, so a load spike during one measurement does not lower them.
    matmul_size = 8192 if torch_device.type == "cuda" else 2048
    matmul_dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    matmul_rates = {name: measure_matmul_rate(torch_device, matmul_size, dtype, repeats=5, warmup=2)
                    for name, dtype in matmul_dtypes.items()}

    warmup_seconds = {}
    for loop in loops:
        started = time.perf_counter()
        if warmup:
            loop.run(warmup)
        warmup_seconds[loop.name] = time.perf_counter() - started

    timings = {loop.name: LoopTiming(loop.name) for loop in loops}
    load_before = load_average()
    block_sizes = [min(block, batches - start) for start in range(0, batches, block)]
    for index, size in enumerate(tqdm(block_sizes, desc=f"{model_name} blocks", unit="block",
                                      disable=not progress, leave=False)):
        # Reversing the order every block keeps either loop from always running
        # right after the other one (warm caches, a load spike).
        order = loops if index % 2 == 0 else loops[::-1]
        for loop in order:
            timings[loop.name].add(*loop.run(size))

    load_after = load_average()
    wrnlib, reference = timings["wrnlib"], timings["reference"]
    env = describe_environment(torch_device)
    # Training FLOPs per image, an estimate: the backward pass is taken as twice
    # the forward pass, and one MAC is two FLOPs.
    flops_per_image = 3 * count_forward_macs(fresh_model())[0] * 2
    for name, dtype in matmul_dtypes.items():
        rate = measure_matmul_rate(torch_device, matmul_size, dtype, repeats=5, warmup=2)
        matmul_rates[name] = max(matmul_rates[name], rate)
    result = {
        "model": model_name.upper(),
        "batch_size": batch_size,
        "batches": batches,
        "warmup_batches": warmup,
        "block_batches": block,
        "device": torch_device.type,
        "device_name": env["device_name"],
        "precision": resolved_precision,
        "reference_precision": "fp32",
        "threads": torch.get_num_threads(),
        "reference_workers": reference_workers,
        "data": data.dataset,
        "wrnlib_images_per_second": wrnlib.images_per_second,
        "reference_images_per_second": reference.images_per_second,
        "ratio": wrnlib.images_per_second / reference.images_per_second,
        # Each block of one loop runs right next to the same block of the other.
        # A load spike that hits only some blocks moves the median of the
        # per-block ratios less than it moves the ratio of the totals.
        "median_block_ratio": statistics.median(
            w / r for w, r in zip(wrnlib.block_rates, reference.block_rates)),
        "training_flops_per_image_estimate": flops_per_image,
        "wrnlib_flops_per_second_estimate": flops_per_image * wrnlib.images_per_second,
        "reference_flops_per_second_estimate": flops_per_image * reference.images_per_second,
        "matmul_size": matmul_size,
        "matmul_bf16_flops_per_second": matmul_rates["bf16"],
        "matmul_fp32_flops_per_second": matmul_rates["fp32"],
        "wrnlib_block_images_per_second": wrnlib.block_rates,
        "reference_block_images_per_second": reference.block_rates,
        # The system's 1-minute load average around the timed blocks, this
        # process included. Above the CPU count, other jobs competed for the CPUs.
        "load_average_before": load_before,
        "load_average_after": load_after,
        "compile": compile,
        "keep_freed_cpu_memory": allocator_tuned,
        **{k: v for k, v in env.items() if k not in ("device", "device_name", "torch_threads")},
    }
    if compile:
        compiled = timings["wrnlib (torch.compile)"]
        result["compile_images_per_second"] = compiled.images_per_second
        result["compile_speedup"] = compiled.images_per_second / wrnlib.images_per_second
        result["compile_seconds"] = warmup_seconds[compiled.name]
    return result


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

def format_table(results: list[dict]) -> str:
    """Return a fixed-width text table of the results, one row per model."""
    header = f"{'model':<10} {'batch':>5} {'precision':>9} {'threads':>7} {'wrnlib img/s':>13} " \
             f"{'reference img/s':>16} {'ratio':>6} {'median block ratio':>19}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r['model']:<10} {r['batch_size']:>5} {r['precision']:>9} {r['threads']:>7} "
                     f"{r['wrnlib_images_per_second']:>13.1f} {r['reference_images_per_second']:>16.1f} "
                     f"{r['ratio']:>5.2f}x {r['median_block_ratio']:>18.2f}x")
    for r in results:
        if r["compile"]:
            lines.append(f"{r['model']}: torch.compile {r['compile_images_per_second']:.1f} img/s, "
                         f"{r['compile_speedup']:.2f}x wrnlib's eager loop, compiled in "
                         f"{r['compile_seconds']:.0f} s")
    return "\n".join(lines)


def markdown_section(results: list[dict], command: str, note: str | None) -> str:
    """Return the body of the "Training throughput" section of BENCHMARKS.md."""
    first = results[0]
    extra = [f"- Device: {first['device_name']}; wrnlib's loop in {first['precision']}, the reference loop in "
             f"float32; DataLoader workers of the reference loop: {first['reference_workers']}"]
    if first["load_average_before"] is not None:
        loads = ", ".join(f"{r['model']} {r['load_average_before']:.2f} to {r['load_average_after']:.2f}"
                          for r in results)
        extra.append(f"- System load average (1 minute) before and after the timed blocks, this benchmark's own "
                     f"threads included: {loads}")
    lines = section_header("benchmarks/train_throughput.py", command,
                           {**first, "torch_threads": first["threads"]}, extra=extra, note=note)
    lines += [
        "",
        "| model | batch | wrnlib precision | threads | wrnlib images/s | reference images/s | ratio | "
        "median block ratio |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['precision']} | {r['threads']} | "
                     f"{r['wrnlib_images_per_second']:.1f} | {r['reference_images_per_second']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['median_block_ratio']:.2f}x |")
    lines += [
        "",
        "Estimated training FLOP rates (3 x forward MACs x 2 per image) against the measured rate of a "
        f"{first['matmul_size']} x {first['matmul_size']} matmul on the same device and threads (the higher "
        "of one measurement before and one after the timed blocks):",
        "",
        "| model | wrnlib GFLOP/s | reference GFLOP/s | bf16 matmul GFLOP/s | fp32 matmul GFLOP/s | "
        "bf16 / fp32 matmul |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['model']} | {r['wrnlib_flops_per_second_estimate'] / 1e9:.0f} | "
                     f"{r['reference_flops_per_second_estimate'] / 1e9:.0f} | "
                     f"{r['matmul_bf16_flops_per_second'] / 1e9:.0f} | {r['matmul_fp32_flops_per_second'] / 1e9:.0f} | "
                     f"{r['matmul_bf16_flops_per_second'] / r['matmul_fp32_flops_per_second']:.2f}x |")
    compiled = [r for r in results if r["compile"]]
    if compiled:
        lines += [
            "",
            "`torch.compile` (default mode) on wrnlib's loop, measured in the same interleaving:",
            "",
            "| model | compiled images/s | compiled / eager wrnlib | compile time (warm-up), s |",
            "| --- | ---: | ---: | ---: |",
        ]
        for r in compiled:
            lines.append(f"| {r['model']} | {r['compile_images_per_second']:.1f} | {r['compile_speedup']:.2f}x | "
                         f"{r['compile_seconds']:.0f} |")
    lines += [
        "",
        f"Each loop trains {first['warmup_batches']} warm-up batches, then {first['batches']} timed batches "
        f"in blocks of {first['block_batches']}; the loops alternate block by block (order reversed every "
        "block) in one process, on the same initial weights and the same training images "
        f"({first['data']}). Images per second = timed images / summed block seconds; the median block "
        "ratio is the median over blocks of the two loops' images per second in that block. wrnlib's loop is "
        "`wrnlib.train.train_steps`, the step `fit` runs. The reference loop is a Dataset returning PIL "
        "images, torchvision RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize, a "
        "DataLoader, a float32 NCHW model, `torch.optim.SGD` with the same settings and `loss.item()` "
        "every step.",
    ]
    if first["keep_freed_cpu_memory"]:
        lines[-1] += (" `fit` makes glibc keep freed memory for reuse (`wrnlib.train.keep_freed_cpu_memory`); "
                      "the setting is process-wide, so the reference loop ran with it too.")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_throughput",
        description="Measure training images per second of wrnlib's loop and of a plain PyTorch loop, "
                    "interleaved in one process.",
    )
    parser.add_argument("--model", nargs="+", metavar="NAME",
                        help="WRN-DEPTH-WIDTH names (default: wrn-16-2 with --json, else wrn-16-2 and wrn-28-2)")

    parser.add_argument("--batches", type=positive_int, default=20, help="timed batches per loop (default 20)")
    parser.add_argument("--warmup", type=non_negative_int, default=3,
                        help="untimed batches per loop before timing (default 3)")
    parser.add_argument("--block", type=positive_int, default=5,
                        help="batches per loop before switching to the other loop (default 5)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per batch (default 128)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="precision of wrnlib's loop; the reference loop always uses fp32 (default auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--threads", type=positive_int, help="PyTorch CPU threads (default: PyTorch's default)")
    parser.add_argument("--reference-workers", type=non_negative_int, default=0,
                        help="DataLoader worker processes of the reference loop (default 0)")

    parser.add_argument("--compile", action="store_true",
                        help="also measure wrnlib's loop with torch.compile (compilation takes minutes on a CPU)")
    add_data_arguments(parser)
    parser.add_argument("--synthetic", action="store_true",
                        help=f"use {SYNTHETIC_IMAGES:,} random uint8 images instead of CIFAR-10")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and augmentation")

    add_output_arguments(parser, "the table", note_example="about machine load")
    parser.add_argument("--section", help=f"heading of the section to rewrite (default: '{SECTION}', or "
                                          f"'{GPU_SECTION}' on a GPU)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from wrnlib.errors import WrnlibError

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    models = args.model or (["wrn-16-2"] if args.json else list(DEFAULT_TABLE_MODELS))
    if args.section is not None and (not args.section.strip() or "\n" in args.section):
        print_error_and_exit(f"--section must be a non-empty, one-line heading, got {args.section!r}")
    if args.json and len(models) != 1:
        print_error_and_exit(f"--json measures one model, got {len(models)} ({', '.join(models)}); "
                             "pass a single --model")
    try:
        from wrnlib.models import parse_model_name

        for name in models:
            parse_model_name(name)
        resolve_device(args.device)
        data = load_training_data(args.data_root, not args.no_download, args.synthetic, args.seed)
        results = [
            measure_throughput(name, batches=args.batches, warmup=args.warmup, block=args.block,
                               batch_size=args.batch_size, precision=args.precision, device=args.device,
                               threads=args.threads, reference_workers=args.reference_workers,
                               compile=args.compile, data=data, seed=args.seed, progress=not args.json)
            for name in models
        ]
    except (ValueError, WrnlibError) as exc:
        print_error_and_exit(str(exc))

    if args.json:
        print(json.dumps(results[0], indent=2))
        return 0
    print(format_table(results))
    if not args.no_write:
        command = command_line("benchmarks.train_throughput", argv)
        section = args.section or (GPU_SECTION if results[0]["device"] == "cuda" else SECTION)
        update_section(args.output, section, markdown_section(results, command, args.note))
        print(f"wrote the section '{section}' of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
