"""The training loop and the run that trains a network from scratch.

One epoch: shuffle the training tensors with a seeded generator, augment and
normalise each batch on the device, step SGD, then evaluate on the validation
split. After every epoch the loop atomically writes `checkpoint.pt` (model,
optimiser, scheduler and every random-generator state) and `history.csv`.
A rerun of an unfinished run resumes after the last checkpoint.
The test split is evaluated once, after the last epoch.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from . import distributed, runs
from .data import DataSplits, augment_batch, dataset_info, iterate_batches, normalize, prepare_data
from .errors import ConfigError, RunError, WrnlibError
from .runs import RunConfig

__all__ = [
    "StepResults", "compile_model", "default_device", "evaluate", "execute_run", "fit", "keep_freed_cpu_memory",
    "make_optimizer", "resolve_precision", "run_scratch", "train_steps",
]

HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
                  "val_seconds", "images_per_second")


def default_device(gpus: list[int] | None = None) -> torch.device:
    """Return the device this process trains on.

    A rank of data-parallel training on CUDA uses cuda:LOCAL_RANK; otherwise the
    first of `gpus` (assigned by the grid), else the first CUDA device, else the CPU.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    rank = distributed.current()
    if rank is not None:
        return torch.device("cuda", rank.local_rank)
    if gpus:
        return torch.device("cuda", int(gpus[0]))
    return torch.device("cuda")


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map "auto" to "bf16" where the device runs bfloat16 natively, else "fp32".

    CUDA needs bf16 support (Ampere or newer); a CPU needs oneDNN's bf16 path
    (AVX-512 BF16 or AMX), which `torch.ops.mkldnn._is_mkldnn_bf16_supported`
    reports.
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


# glibc mallopt parameter numbers, from <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=None)
def keep_freed_cpu_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse instead of returning them to the OS.

    Training frees and allocates the same activation sizes every step. By
    default glibc serves large blocks from fresh mmap pages and trims the heap,
    so the kernel zero-fills tens of MB of new pages per step: 16 ms of system
    time per bf16 WRN-16-2 step on one CPU thread (BENCHMARKS.md, "Where a
    training step's time goes"). Raising the mmap and trim thresholds to 1 GiB
    keeps those pages mapped, at the cost that the process's memory does not
    shrink until it exits. The setting is process-wide. Returns True where it
    was applied (Linux with glibc), else False.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    threshold = 1 << 30
    # mallopt(3) documents 32 MiB as the mmap threshold's upper limit on 64-bit
    # systems, although glibc 2.36 accepts 1 GiB; a glibc that rejects 1 GiB gets 32 MiB.
    if not mallopt(_M_MMAP_THRESHOLD, threshold) and not mallopt(_M_MMAP_THRESHOLD, 32 << 20):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, threshold))


def autocast_context(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cross_entropy_criterion(logits: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             batch_size: int = 512, precision: str = "fp32") -> tuple[float, float]:
    """Return (mean cross-entropy, accuracy in %) of `model` on uint8 images `x`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct = 0.0, 0
    for xb, yb in iterate_batches(x, y, batch_size):
        # A no-op for splits moved with `DataSplits.to(..., torch.channels_last)`.
        xb = normalize(xb.to(device), mean, std).contiguous(memory_format=torch.channels_last)
        yb = yb.to(device)
        with autocast_context(precision, device):
            logits = model(xb)
        total_loss += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    model.train(was_training)
    n = max(1, y.numel())
    return total_loss / n, 100.0 * correct / n


# --------------------------------------------------------------------------
# Training steps
# --------------------------------------------------------------------------

@dataclass
class StepResults:
    """Per-step losses, batch sizes and correct predictions of `train_steps`, kept on the training device."""

    losses: list[torch.Tensor]      # one detached scalar loss per step, in step order
    batch_sizes: list[int]
    correct: torch.Tensor           # int64 count of correct training predictions

    @property
    def images(self) -> int:
        return sum(self.batch_sizes)

    def loss_sum(self) -> float:
        """Return the sum over steps of loss x batch size (one device synchronisation)."""
        if not self.losses:
            return 0.0
        sizes = torch.tensor(self.batch_sizes, dtype=torch.float64, device=self.losses[0].device)
        return float((torch.stack(self.losses).double() * sizes).sum())

    def first_non_finite(self) -> tuple[int, float] | None:
        """Return (0-based step, loss) of the first NaN or infinite loss, or None."""
        if not self.losses:
            return None
        losses = torch.stack(self.losses).float()
        bad = torch.nonzero(~torch.isfinite(losses)).flatten()
        if bad.numel() == 0:
            return None
        step = int(bad[0])
        return step, float(losses[step])


def make_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.SGD:
    """Build the run's SGD (Nesterov momentum, weight decay) with the fused kernel where one exists.

    PyTorch ships a fused SGD for CPU and CUDA parameters; on other devices
    the default per-parameter implementation is used.
    """
    fused = device.type in ("cpu", "cuda")
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, fused=fused or None)


def compile_model(model: nn.Module, enabled: bool) -> Callable:
    """Return `torch.compile(model)` when `enabled`, else `model` itself.

    The compiled module shares the parameters of `model`, so checkpoints and
    the saved model keep using `model`.
    """
    if not enabled:
        return model
    return torch.compile(model)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable, mean: torch.Tensor,
                std: torch.Tensor, generator: torch.Generator, precision: str,
                criterion: Callable | None = None, forward: Callable | None = None,
                rank: "distributed.RankInfo | None" = None, freeze_bn: bool = False) -> StepResults:
    """Run one SGD step per (uint8 images, labels) batch: augment, normalise, forward, backward, update.

    `forward` is the callable that runs the model (a `torch.compile` or DDP
    wrapper of `model`, or `model` itself when None). With `rank`, each batch is
    the global batch: this process trains on its shard, and its loss is scaled
    by the shard's share so that DDP's gradient average equals the whole
    batch's gradient. `freeze_bn` keeps BatchNorm in eval mode (running
    statistics used, not updated). Nothing here reads a value back from the
    device, so on a GPU the host queues steps ahead without waiting. The
    caller checks `StepResults.first_non_finite` afterwards; the results count
    this process's shard only.
    """
    criterion = criterion or cross_entropy_criterion
    forward = model if forward is None else forward
    device = next(model.parameters()).device
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    results = StepResults([], [], torch.zeros((), dtype=torch.int64, device=device))
    # The record_function labels name the phases for torch.profiler
    # (benchmarks/step_profile.py); they cost about a microsecond when no
    # profiler runs.
    for xb, yb in batches:
        with record_function("augment and normalise"):
            # Every rank augments the whole global batch with the same generator
            # state, so the ranks stay in step and their shards never overlap.
            inputs = normalize(augment_batch(xb, generator), mean, std)
            # A no-op for the channels-last batches augment_batch returns.
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        share = 1.0
        if rank is not None:
            start, stop = distributed.shard_bounds(yb.numel(), rank.rank, rank.world_size)
            share = (stop - start) * rank.world_size / yb.numel()
            inputs, yb = inputs[start:stop], yb[start:stop]
        with record_function("forward and loss"), autocast_context(precision, device):
            logits = forward(inputs)
            loss = criterion(logits, inputs, yb)
        with record_function("backward"):
            optimizer.zero_grad(set_to_none=True)
            (loss * share if share != 1.0 else loss).backward()
        with record_function("optimizer step"):
            optimizer.step()
        results.losses.append(loss.detach())
        results.batch_sizes.append(yb.numel())
        results.correct += (logits.argmax(1) == yb).sum()
    return results


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    state = {"generator": generator.get_state(), "torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict, generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)


CHECKPOINT_KEYS = ("epoch", "arch", "model", "optimizer", "scheduler", "rng", "history")


def _load_checkpoint(path: Path, model: nn.Module, run_id: str) -> dict | None:
    """Load `path` if it exists and belongs to `model`; raise RunError that explains how to start over."""
    if not path.is_file():
        return None
    remedy = f"Delete it to restart run {run_id} from epoch 0."
    # Loaded to the CPU because random-generator states must be CPU ByteTensors;
    # load_state_dict copies weights and optimiser state to the model's device.
    # NOTE: resuming on CUDA has no test here; the tests run on CPU only.
    checkpoint = runs.load_trusted(path, "checkpoint", remedy, map_location="cpu")
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise RunError(f"checkpoint {path} is not a wrnlib training checkpoint (missing: {', '.join(missing)}). "
                       f"{remedy}")
    saved = checkpoint["arch"]
    current = model.arch.to_dict()
    if isinstance(saved, dict) and saved.get("num_classes") != current["num_classes"]:
        raise RunError(f"checkpoint {path} was saved by a model with {saved.get('num_classes')} classes, but "
                       f"run {run_id} trains a model with {current['num_classes']} classes; the checkpoint "
                       f"belongs to a run on another data set. {remedy}")
    if saved != current:
        raise RunError(f"checkpoint {path} belongs to another architecture ({saved}); delete the run folder "
                       f"{path.parent} to start over")
    return checkpoint


def _train_epoch(model, optimizer, batches, splits, generator, precision, criterion, forward,
                 cfg: RunConfig, rank: "distributed.RankInfo | None" = None) -> StepResults:
    options = dict(criterion=criterion, forward=forward, rank=rank, freeze_bn=cfg.freeze_bn)
    if not cfg.compile:
        return train_steps(model, optimizer, batches, splits.mean, splits.std, generator, precision, **options)
    from torch._dynamo.exc import TorchDynamoException

    try:
        return train_steps(model, optimizer, batches, splits.mean, splits.std, generator, precision, **options)
    except TorchDynamoException as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RunError(
            f"run {cfg.run_id}: torch.compile failed ({type(exc).__name__}: {first_line}). "
            "Set compile to false for this run, or install the C++ compiler TorchInductor needs."
        ) from None


def _data_parallel(model: nn.Module, cfg: RunConfig, device: torch.device,
                   rank: "distributed.RankInfo | None") -> nn.Module:
    """Wrap `model` in DistributedDataParallel when this process is a rank of several; else return it."""
    if rank is None:
        if cfg.sync_bn and cfg.devices > 1:
            raise ConfigError(f"run {cfg.run_id}: sync_bn needs the run to be launched on {cfg.devices} devices "
                              "by torchrun (wrnlib does that when devices > 1)")
        return model
    from torch.nn.parallel import DistributedDataParallel

    if cfg.sync_bn:
        if device.type != "cuda":
            raise ConfigError(f"run {cfg.run_id}: sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no "
                              "CPU kernel); set sync_bn to false or freeze_bn to true on the CPU")
        # Converts the BatchNorm layers in place: `model` keeps the same parameters and state-dict keys.
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def fit(model: nn.Module, data: DataSplits, cfg: RunConfig, folder: str | Path,
        criterion: Callable | None = None, device: torch.device | None = None,
        progress: bool = False, on_epoch: Callable[[list[dict]], None] | None = None) -> dict:
    """Train `model` for `cfg.epochs` epochs, resuming from `folder/checkpoint.pt` if present.

    `criterion(logits, inputs, targets)` defaults to cross-entropy. `on_epoch`
    receives the history rows after each epoch's checkpoint is written. Returns
    the history rows, test loss and accuracy, summed training seconds, the
    precision used and whether torch.compile ran the forward pass. Raises
    RunError on a non-finite loss or a failed torch.compile.
    """
    from tqdm import tqdm

    folder = runs.make_dirs(folder)
    device = device or default_device()
    precision = resolve_precision(cfg.precision, device)
    criterion = criterion or cross_entropy_criterion
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_cpu_memory()

    model.to(device, memory_format=torch.channels_last)
    rank = distributed.current()
    forward = compile_model(_data_parallel(model, cfg, device, rank), cfg.compile)
    splits = data.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones),
                                                     gamma=cfg.lr_gamma)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    history: list[dict] = []
    start_epoch = 0
    checkpoint_path = folder / "checkpoint.pt"
    checkpoint = _load_checkpoint(checkpoint_path, model, cfg.run_id)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _restore_rng(checkpoint["rng"], generator, device)
        history = list(checkpoint["history"])
        start_epoch = int(checkpoint["epoch"])

    n_train = splits.train_y.numel()
    # With several ranks a last batch smaller than the number of ranks would
    # leave a rank without images, so it is dropped (fewer than `devices` images per epoch).
    drop_last = rank is not None and 0 < n_train % cfg.batch_size < rank.world_size
    n_trained = n_train - n_train % cfg.batch_size if drop_last else n_train
    bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=cfg.run_id, unit="epoch", disable=not progress)
    for epoch in range(start_epoch, cfg.epochs):
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        batches = iterate_batches(splits.train_x, splits.train_y, cfg.batch_size, shuffle=True,
                                  generator=generator, drop_last=drop_last)
        steps = _train_epoch(model, optimizer, batches, splits, generator, precision, criterion, forward, cfg,
                             rank)
        # The losses are checked once per epoch, not after every step, so a GPU
        # does not wait for the host mid-epoch. A diverged epoch still raises
        # before it is checkpointed.
        non_finite = steps.first_non_finite()
        if rank is not None:
            # Every rank must raise, or the others would wait forever in the next all-reduce.
            bad_step = distributed.all_reduce_min(non_finite[0] if non_finite else 2**62, device)
            if non_finite is None and bad_step < 2**62:
                non_finite = (bad_step, float("nan"))
        if non_finite is not None:
            step, value = non_finite
            raise RunError(
                f"run {cfg.run_id}: the training loss became {value} at epoch {epoch + 1}, "
                f"step {step + 1}, learning rate {lr:g}. Lower the learning rate or check the data; "
                "the last finished epoch is kept in the checkpoint."
            )
        loss_sum, correct = distributed.all_reduce_sum([steps.loss_sum(), float(steps.correct)], device)
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started

        val_started = time.perf_counter()
        val_loss, val_acc = evaluate(model, splits.val_x, splits.val_y, splits.mean, splits.std,
                                     cfg.eval_batch_size, precision)
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": loss_sum / n_trained,
            "train_acc": 100.0 * correct / n_trained,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "seconds": seconds,
            "val_seconds": time.perf_counter() - val_started,
            "images_per_second": n_trained / seconds,
        }
        history.append(row)
        # Checkpoint first: history.csv is rewritten from the checkpoint's rows,
        # so a crash between the two writes never leaves a gap or a duplicate.
        runs.atomic_torch_save({
            "epoch": epoch + 1,
            "arch": model.arch.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(generator, device),
            "history": history,
        }, checkpoint_path)
        runs.atomic_write_text(folder / "history.csv", runs.history_to_csv(history))
        if on_epoch is not None:
            on_epoch(history)
        bar.set_postfix(val_acc=f"{val_acc:.1f}")
        bar.update()
    bar.close()

    test_loss, test_acc = evaluate(model, splits.test_x, splits.test_y, splits.mean, splits.std,
                                   cfg.eval_batch_size, precision)
    return {
        "history": history,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "train_seconds": sum(r["seconds"] for r in history),
        "precision": precision,
        "compile": bool(cfg.compile),
        "resumed_from_epoch": start_epoch,
    }


# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------

def _check_same_config(cfg: RunConfig, folder: Path) -> None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return
    current = cfg.to_dict()
    # A setting added to RunConfig after the run was made (compile, for one) is
    # compared at its default value, so older run folders stay valid.
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}
    previous = {**{k: v for k, v in defaults.items() if k in current}, **runs.read_json(config_path)}
    if previous != current:
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        raise RunError(
            f"run {cfg.run_id} in {folder} was made with other settings (changed: {', '.join(changed)}). "
            f"Delete {folder} to train it again with the new settings."
        )


def prepare_run_folder(cfg: RunConfig, root: Path) -> Path:
    """Create the run folder and write config.json, rejecting a changed config on resume."""
    folder = runs.make_dirs(runs.run_dir(root, cfg.profile, cfg.run_id))
    # Any saved state (checkpoints, history, pruning records) was made with config.json's settings;
    # notebooks and lock files do not count, because they exist before the run starts.
    if any(p.name != "config.json" and p.suffix not in (".ipynb", ".lock") for p in folder.iterdir()):
        _check_same_config(cfg, folder)
    runs.atomic_write_json(folder / "config.json", cfg.to_dict())
    return folder


def load_teacher(cfg: RunConfig, root: Path, device: torch.device) -> nn.Module:
    """Load the finished teacher run's final weights, or explain how to produce them."""
    teacher_dir = runs.run_dir(root, cfg.profile, cfg.teacher_run_id)
    if runs.read_metrics(teacher_dir) is None:
        raise RunError(
            f"run {cfg.run_id} needs its teacher run {cfg.teacher_run_id}, which has not finished "
            f"(no complete metrics.json in {teacher_dir}). Run it first: "
            f"wrnlib run {cfg.teacher_run_id} --profile {cfg.profile}"
        )
    teacher = runs.load_model(teacher_dir / "model.pt", map_location="cpu")
    expected = dataset_info(cfg.dataset).num_classes
    if teacher.num_classes != expected:
        trained_on = runs.read_metrics(teacher_dir).get("dataset", "another data set")
        raise RunError(
            f"run {cfg.run_id} trains on {cfg.dataset} ({expected} classes), but its teacher run "
            f"{cfg.teacher_run_id} is a {teacher.num_classes}-class model (trained on {trained_on}). "
            f"Set teacher_run_id to a {cfg.dataset} run."
        )
    return teacher.to(device, memory_format=torch.channels_last).eval()


BuildFn = Callable[[RunConfig, DataSplits, "nn.Module | None"], tuple[nn.Module, "Callable | None", dict]]


def execute_run(config: dict | RunConfig, build: BuildFn, runs_dir: str | Path | None = None,
                data_root: str | Path | None = None, threads: int | None = None,
                progress: bool = False, download: bool = True, train: Callable = fit,
                gpus: list[int] | None = None) -> dict:
    """Run one configured run end to end and return its metrics.

    `build(cfg, data, teacher)` returns (model to train, criterion or None,
    extra metrics). The teacher and the data are checked before the run folder
    is created, so a bad input leaves nothing behind. Training holds the run's
    train.lock: a second process that calls this for the same run waits, then
    returns the metrics the first one wrote. The run writes config.json, trains
    with `train` (`fit` by default), saves model.pt, measures the model
    (`measure.measure_model`, which also writes model.onnx) and writes
    metrics.json last. A `train` function takes fit's arguments and
    returns fit's result. Its result may add "model", the trained model when it
    is not the one `build` returned, and "extra", more metrics.

    `gpus` lists the CUDA devices the grid assigned to this run. A run with
    `devices` > 1 is handed to torchrun (`distributed.launch`), whose processes
    call this function again as ranks; only rank 0 writes and measures, and the
    other ranks return {"run_id", "profile", "rank"}.
    """
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config))
    cfg.validate()
    if threads:
        torch.set_num_threads(int(threads))
    root = runs.runs_root(runs_dir)
    folder = runs.run_dir(root, cfg.profile, cfg.run_id)
    finished = runs.read_metrics(folder)
    if finished is not None:
        # A finished run is never trained again; its notebook may still be re-executed.
        _check_same_config(cfg, folder)
        return finished
    if cfg.devices > 1 and distributed.current() is None:
        return _launch_data_parallel(cfg, root, data_root, threads, gpus)
    device = default_device(gpus)
    teacher = load_teacher(cfg, root, device) if cfg.teacher_run_id else None
    data = prepare_data(cfg.dataset, data_root, val_size=cfg.val_size, train_subset=cfg.train_subset,
                        test_subset=cfg.test_subset, seed=cfg.seed, download=download)

    with runs.RunLock(folder / runs.TRAIN_LOCK, f"training of run {cfg.run_id}"):
        finished = runs.read_metrics(folder)
        if finished is not None:
            # Another process finished the run while this one waited for the lock.
            _check_same_config(cfg, folder)
            return finished
        runs.remove_stale_temp_files(folder)
        folder = prepare_run_folder(cfg, root)
        return _train_and_measure(cfg, build, folder, data, teacher, device, progress, train)


def _launch_data_parallel(cfg: RunConfig, root: Path, data_root: str | Path | None, threads: int | None,
                          gpus: list[int] | None) -> dict:
    """Write config.json, train the run with torchrun on `cfg.devices` processes and return its metrics."""
    if cfg.teacher_run_id:
        load_teacher(cfg, root, torch.device("cpu"))  # fail here, before any process starts
    folder = prepare_run_folder(cfg, root)
    distributed.launch(folder / "config.json", cfg.devices, root.resolve(), data_root, threads, gpus)
    metrics = runs.read_metrics(folder)
    if metrics is None:
        raise RunError(f"distributed training of run {cfg.run_id} ended without a complete metrics.json in "
                       f"{folder}; rerun it to resume from its checkpoint")
    return metrics


def _train_and_measure(cfg: RunConfig, build: BuildFn, folder: Path, data: DataSplits,
                       teacher: nn.Module | None, device: torch.device, progress: bool,
                       train: Callable = fit) -> dict:
    from .measure import measure_model
    from .models import WideResNet

    model, criterion, extra = build(cfg, data, teacher)
    result = train(model, data, cfg, folder, criterion=criterion, device=device, progress=progress)
    rank = distributed.current()
    if rank is not None and rank.rank != 0:
        return {"run_id": cfg.run_id, "profile": cfg.profile, "rank": rank.rank}
    model = result.get("model", model)
    extra = {**extra, **result.get("extra", {})}

    model_path = folder / "model.pt"
    runs.save_model(model, model_path)
    cpu_model = runs.load_model(model_path)
    # A pruned model is timed interleaved with the native WRN of its target width.
    native = WideResNet(cfg.depth, cfg.width, data.num_classes) if cfg.method == "prune" else None
    measured = measure_model(cpu_model, model_path, folder / "model.onnx", latency_repeats=cfg.latency_repeats,
                             throughput_repeats=cfg.throughput_repeats, native=native,
                             cuda=device.type == "cuda", progress=progress)
    metrics = {
        "run_id": cfg.run_id,
        "profile": cfg.profile,
        "dataset": cfg.dataset,
        "method": cfg.method,
        "depth": cfg.depth,
        "width": cfg.width,
        "model": cpu_model.name,
        "teacher_run_id": cfg.teacher_run_id,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "num_classes": data.num_classes,
        **data.describe(),
        "test_acc": result["test_acc"],
        "test_loss": result["test_loss"],
        "final_val_acc": result["history"][-1]["val_acc"],
        "train_seconds": result["train_seconds"],
        "precision": result["precision"],
        "compile": result["compile"],
        "devices": cfg.devices,
        **measured,
        **extra,
        **runs.environment_info(device),
    }
    runs.atomic_write_json(folder / "metrics.json", metrics)
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return metrics


def run_scratch(config: dict, runs_dir: str | Path | None = None, data_root: str | Path | None = None,
                threads: int | None = None, progress: bool = False, gpus: list[int] | None = None) -> dict:
    """Train WRN-depth-width from random initialisation; return its metrics."""
    from .models import WideResNet

    def build(cfg, data, teacher):
        torch.manual_seed(cfg.seed)
        return WideResNet(cfg.depth, cfg.width, data.num_classes, cfg.dropout), None, {}

    return execute_run(config, build, runs_dir=runs_dir, data_root=data_root, threads=threads,
                       progress=progress, gpus=gpus)


RUN_FUNCTIONS = {"scratch": "wrnlib.train:run_scratch", "kd": "wrnlib.distill:run_distillation",
                 "prune": "wrnlib.prune:run_pruning"}


def run_function(method: str) -> Callable:
    """Return the function that executes a run of `method` (scratch, kd or prune)."""
    import importlib

    if method not in RUN_FUNCTIONS:
        raise ConfigError(f"unknown method {method!r}: choose one of {', '.join(RUN_FUNCTIONS)}")
    module, name = RUN_FUNCTIONS[method].split(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    """Train one run from its config.json; under torchrun, as one rank of data-parallel training.

    Usage: torchrun --nproc_per_node=N -m wrnlib.train --config runs/P/RUN/config.json
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m wrnlib.train", description=main.__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a run's config.json")
    parser.add_argument("--runs-dir", default=None,
                        help="run store root (default: three folders above the config, runs/P/RUN/config.json)")
    parser.add_argument("--data-root", default=None, help="CIFAR data root, as for `wrnlib run`")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    args = parser.parse_args(argv)
    try:
        config_path = Path(args.config)
        if not config_path.is_file():
            raise ConfigError(f"config file {config_path} not found; pass a run's config.json "
                              "(runs/<profile>/<run_id>/config.json)")
        try:
            settings = runs.read_json(config_path)
        except ValueError as exc:
            raise ConfigError(f"config file {config_path} is not valid JSON: {exc}") from None
        cfg = RunConfig.from_dict(settings)
        root = Path(args.runs_dir) if args.runs_dir else config_path.resolve().parents[2]
        rank = distributed.init_from_env()
        try:
            metrics = run_function(cfg.method)(cfg.to_dict(), runs_dir=root, data_root=args.data_root)
        finally:
            distributed.shutdown()
    except WrnlibError as exc:
        if args.debug:
            raise
        print(f"wrnlib.train: error: {exc}", file=sys.stderr)
        return 1
    if rank is None or rank.rank == 0:
        print(f"run {cfg.run_id} done: test accuracy {metrics['test_acc']:.2f} %")
    return 0


if __name__ == "__main__":
    from wrnlib.train import main as _main  # the importable module, not this __main__ copy

    sys.exit(_main())
