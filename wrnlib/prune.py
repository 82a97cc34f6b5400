"""Node (structured channel) pruning of a pre-activation Wide-ResNet.

Pruning removes whole channels and rebuilds a physically smaller `WideResNet`:
the saved tensors have the smaller shapes, and no masks remain.

Channels that must go together form coupled groups:

* inner group of a block: conv1's output filters, bn2, and conv2's input
  channels;
* residual stream of a group of blocks (when its first block has a projection
  shortcut): every block's conv2 output filters, the shortcut's output filters,
  and every consumer of the stream: the later blocks' bn1 and conv1 inputs, the
  next group's first bn1, conv1 and shortcut inputs, and for the last group the
  final BatchNorm and the classifier's input features.

A stream whose first block has an identity shortcut is the stem's output
(16 channels, WRN-d-1) and is left whole, because the stem is never pruned;
the classifier's outputs are never pruned either.

The pruning ratio is the fraction of channels removed in every pruned layer;
the number kept is round(channels x (1 - ratio)), so 0.8 turns 160/320/640 into
32/64/128 (WRN-28-10 into the widths of WRN-28-2).

A pruning run prunes the teacher in `rounds` rounds and fine-tunes after each
one (`run_pruning`): one round is the one-shot schedule, several rounds the
iterative one. Round r keeps round(channels x keep_ratio ** (r / rounds)) of the
teacher's channels in every pruned group (`round_widths`, `round_archs`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .models import GROUP_BASE_CHANNELS, ArchSpec, WideResNet, build_model

__all__ = [
    "CRITERIA",
    "SCHEDULES",
    "ChannelGroup",
    "channel_groups",
    "fine_tune_criterion",
    "fine_tune_rounds",
    "kept_channels",
    "prune_model",
    "prune_to_widths",
    "pruned_arch",
    "round_archs",
    "round_widths",
    "run_pruning",
]

SCHEDULES = ("one-shot", "iterative")


# --------------------------------------------------------------------------
# Coupled channel groups
# --------------------------------------------------------------------------

@dataclass
class ChannelGroup:
    """Channels of one coupled group: the layers that write them and those that read them."""

    name: str
    kind: str                       # "inner" or "stream"
    channels: int
    producers: list[nn.Conv2d]      # convs whose output filters are these channels
    batchnorms: list[nn.BatchNorm2d]  # BatchNorms that normalise these channels
    consumers: list[nn.Module]      # convs / linear layers whose input channels are these channels
    prunable: bool = True


def channel_groups(model: WideResNet) -> list[ChannelGroup]:
    """List the coupled channel groups of `model`: one per block (inner), one per stream."""
    groups: list[ChannelGroup] = []
    stages = model.groups
    for g, stage in enumerate(stages):
        for b, block in enumerate(stage):
            groups.append(ChannelGroup(
                name=f"group{g + 1}.block{b + 1}.inner", kind="inner", channels=block.conv1.out_channels,
                producers=[block.conv1], batchnorms=[block.bn2], consumers=[block.conv2],
            ))
    for g, stage in enumerate(stages):
        first = stage[0]
        producers = [block.conv2 for block in stage]
        batchnorms = [block.bn1 for block in list(stage)[1:]]
        consumers: list[nn.Module] = [block.conv1 for block in list(stage)[1:]]
        if g + 1 < len(stages):
            following = stages[g + 1][0]
            batchnorms.append(following.bn1)
            consumers.append(following.conv1)
            if following.shortcut is not None:
                consumers.append(following.shortcut)
        else:
            batchnorms.append(model.bn)
            consumers.append(model.fc)
        if first.shortcut is not None:
            producers.insert(0, first.shortcut)
        groups.append(ChannelGroup(
            name=f"group{g + 1}.stream", kind="stream", channels=model.arch.stream[g],
            producers=producers, batchnorms=batchnorms, consumers=consumers,
            # An identity shortcut ties this stream to the previous one (the stem's
            # 16 channels for group 1), which is never pruned.
            prunable=first.shortcut is not None,
        ))
    return groups


# --------------------------------------------------------------------------
# Importance criteria
# --------------------------------------------------------------------------

def _filter_norms(conv: nn.Conv2d, p: int) -> torch.Tensor:
    return conv.weight.detach().flatten(1).norm(p=p, dim=1)


def l1_importance(group: ChannelGroup, generator: torch.Generator) -> torch.Tensor:
    """L1 norm of each output filter, summed over the group's producing convs.

    Li et al., "Pruning Filters for Efficient ConvNets" (ICLR 2017) rank filters
    by their L1 norm; for a coupled stream the per-layer norms are summed.
    """
    return sum(_filter_norms(conv, 1) for conv in group.producers)


def l2_importance(group: ChannelGroup, generator: torch.Generator) -> torch.Tensor:
    """L2 norm of each output filter, summed over the group's producing convs."""
    return sum(_filter_norms(conv, 2) for conv in group.producers)


def bn_scale_importance(group: ChannelGroup, generator: torch.Generator) -> torch.Tensor:
    """|gamma| of the BatchNorms that read the channel, summed over them.

    Liu et al., "Learning Efficient Convolutional Networks through Network
    Slimming" (ICCV 2017). In a pre-activation net the BatchNorm that follows a
    channel sits in its consumers: bn2 for inner channels, and the next bn1 or
    the final BatchNorm for a stream.
    """
    return sum(bn.weight.detach().abs() for bn in group.batchnorms)


def random_importance(group: ChannelGroup, generator: torch.Generator) -> torch.Tensor:
    """Seeded uniform random scores: the baseline every criterion must beat."""
    return torch.rand(group.channels, generator=generator)


CRITERIA: dict[str, Callable[[ChannelGroup, torch.Generator], torch.Tensor]] = {
    "l1": l1_importance,
    "l2": l2_importance,
    "bn_scale": bn_scale_importance,
    "random": random_importance,
}


def kept_channels(channels: int, pruning_ratio: float) -> int:
    """Return round(channels x (1 - pruning_ratio)), rejecting a ratio that keeps nothing."""
    check_ratio(pruning_ratio)
    keep = int(round(channels * (1.0 - pruning_ratio)))
    if keep < 1:
        raise ValueError(f"pruning ratio {pruning_ratio} would leave a layer of {channels} channels with "
                         f"{keep}; use a ratio below {1 - 0.5 / channels:.4f} for this layer")
    return keep


def check_ratio(pruning_ratio: float) -> float:
    if isinstance(pruning_ratio, bool) or not isinstance(pruning_ratio, (int, float)) \
            or not 0.0 < float(pruning_ratio) < 1.0 or math.isnan(pruning_ratio):
        raise ValueError(f"invalid pruning ratio {pruning_ratio!r}: it must be strictly between 0 and 1 "
                         "(the fraction of channels removed per layer)")
    return float(pruning_ratio)


def round_widths(channels: int, keep_ratio: float, rounds: int) -> list[int]:
    """Return the channel count after each of `rounds` iterative pruning rounds.

    Round r keeps round(channels x keep_ratio ** (r / rounds)) of the ORIGINAL
    width, so the last round lands on round(channels x keep_ratio). Compounding
    floors of the previous round's width would drift: 32 channels at keep 0.5
    over 10 rounds would end at 12, not 16.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if not 0.0 < keep_ratio < 1.0:
        raise ValueError(f"keep ratio must be strictly between 0 and 1, got {keep_ratio}")
    widths = [max(1, int(round(channels * keep_ratio ** (r / rounds)))) for r in range(1, rounds + 1)]
    # Rounding may repeat a width between rounds; the clamp guarantees it never grows.
    for i in range(1, len(widths)):
        widths[i] = min(widths[i], widths[i - 1])
    return widths


# --------------------------------------------------------------------------
# Physical slicing
# --------------------------------------------------------------------------

def _select(scores: torch.Tensor, keep: int) -> torch.Tensor:
    # Highest scores survive; ties go to the lower index (stable sort), and the
    # kept indices stay in their original order.
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:keep]).values


def prune_to_widths(model: WideResNet, stream: tuple[int, int, int], inner: tuple[int, ...],
                    criterion: str = "l1", seed: int = 0) -> WideResNet:
    """Return a new model with the given stream and inner widths, keeping the most important channels."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")
    model = model.eval()
    groups = channel_groups(model)
    generator = torch.Generator().manual_seed(seed)
    score = CRITERIA[criterion]
    n = model.arch.blocks_per_group
    targets = {f"group{g + 1}.stream": stream[g] for g in range(3)}
    targets.update({f"group{g + 1}.block{b + 1}.inner": inner[g * n + b] for g in range(3) for b in range(n)})

    kept: dict[str, torch.Tensor] = {}
    for group in groups:
        keep = targets[group.name]
        if keep > group.channels or keep < 1:
            raise ValueError(f"{group.name} has {group.channels} channels; cannot keep {keep}")
        if keep < group.channels and not group.prunable:
            raise ValueError(f"{group.name} shares its channels with the stem and cannot be pruned")
        kept[group.name] = _select(score(group, generator), keep) if keep < group.channels \
            else torch.arange(group.channels)

    arch = ArchSpec(model.depth, model.num_classes, tuple(stream), tuple(inner), model.arch.shortcuts,
                    model.arch.dropout)
    pruned = build_model(arch)
    _copy_sliced(model, pruned, kept)
    return pruned.eval()


def _copy_sliced(source: WideResNet, target: WideResNet, kept: dict[str, torch.Tensor]) -> None:
    def bn_copy(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, idx: torch.Tensor) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(dst, name).data.copy_(getattr(src, name).data[idx])
        dst.num_batches_tracked.data.copy_(src.num_batches_tracked.data)

    def conv_copy(dst: nn.Conv2d, src: nn.Conv2d, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
        dst.weight.data.copy_(src.weight.data[out_idx][:, in_idx])

    stem_idx = torch.arange(source.stem.out_channels)
    target.stem.weight.data.copy_(source.stem.weight.data)
    previous = stem_idx
    for g, (src_stage, dst_stage) in enumerate(zip(source.groups, target.groups)):
        stream_idx = kept[f"group{g + 1}.stream"] if src_stage[0].shortcut is not None else previous
        for b, (src_block, dst_block) in enumerate(zip(src_stage, dst_stage)):
            in_idx = previous if b == 0 else stream_idx
            inner_idx = kept[f"group{g + 1}.block{b + 1}.inner"]
            bn_copy(dst_block.bn1, src_block.bn1, in_idx)
            conv_copy(dst_block.conv1, src_block.conv1, inner_idx, in_idx)
            bn_copy(dst_block.bn2, src_block.bn2, inner_idx)
            conv_copy(dst_block.conv2, src_block.conv2, stream_idx, inner_idx)
            if src_block.shortcut is not None:
                conv_copy(dst_block.shortcut, src_block.shortcut, stream_idx, in_idx)
        previous = stream_idx
    bn_copy(target.bn, source.bn, previous)
    target.fc.weight.data.copy_(source.fc.weight.data[:, previous])
    target.fc.bias.data.copy_(source.fc.bias.data)


def prune_model(model: WideResNet, pruning_ratio: float, criterion: str = "l1", seed: int = 0) -> WideResNet:
    """Return a physically smaller copy of `model` with `pruning_ratio` of each layer's channels removed.

    Every inner width and every prunable residual stream keeps
    round(channels x (1 - pruning_ratio)) channels, chosen by `criterion`
    (one of `CRITERIA`). `seed` drives the `random` criterion. `model` is left
    unchanged.
    """
    target = pruned_arch(model.arch, pruning_ratio)
    return prune_to_widths(model, target.stream, target.inner, criterion=criterion, seed=seed)


def pruned_arch(arch: ArchSpec, pruning_ratio: float) -> ArchSpec:
    """Return the layout left after removing `pruning_ratio` of every prunable group's channels.

    A group's residual stream is prunable when its first block has a projection
    shortcut; otherwise it carries the stem's channels and keeps its width.
    """
    check_ratio(pruning_ratio)
    stream = tuple(kept_channels(c, pruning_ratio) if arch.shortcuts[g] else c for g, c in enumerate(arch.stream))
    inner = tuple(kept_channels(c, pruning_ratio) for c in arch.inner)
    return dataclasses.replace(arch, stream=stream, inner=inner)


def round_archs(arch: ArchSpec, pruning_ratio: float, rounds: int) -> list[ArchSpec]:
    """Return the layout after each of `rounds` pruning rounds; the last is `pruned_arch`.

    Every prunable group (inner and stream) follows `round_widths` of its own
    original width, so each round's widths come from the original model, not
    from the previous round's rounded widths.
    """
    target = pruned_arch(arch, pruning_ratio)
    keep = 1.0 - float(pruning_ratio)
    streams = [round_widths(c, keep, rounds) if arch.shortcuts[g] else [c] * rounds
               for g, c in enumerate(arch.stream)]
    inners = [round_widths(c, keep, rounds) for c in arch.inner]
    archs = [
        dataclasses.replace(arch, stream=tuple(s[r] for s in streams), inner=tuple(i[r] for i in inners))
        for r in range(rounds)
    ]
    if archs[-1] != target:
        raise RuntimeError(f"the last pruning round gives {archs[-1]}, not the target {target}")
    return archs


def compare_with_native(arch: ArchSpec, width: int) -> dict:
    """Describe how a pruned layout differs from native WRN-depth-width."""
    native = ArchSpec.native(arch.depth, width, arch.num_classes, arch.dropout)
    native_params = sum(p.numel() for p in WideResNet(arch.depth, width, arch.num_classes).parameters())
    pruned_params = sum(p.numel() for p in build_model(arch).parameters())
    extra_shortcuts = [f"group{g + 1}" for g in range(3) if arch.shortcuts[g] and not native.shortcuts[g]]
    return {
        "matches_native": arch == native,
        "native_model": f"WRN-{arch.depth}-{width}",
        "native_params": native_params,
        "extra_params": pruned_params - native_params,
        "extra_shortcut_layers": extra_shortcuts,
        "widths_match_native": tuple(arch.stream) == tuple(native.stream) and tuple(arch.inner) == tuple(native.inner),
    }


# --------------------------------------------------------------------------
# The pruning run
# --------------------------------------------------------------------------

ROUNDS_FOLDER = "rounds"     # <run folder>/rounds/<NN>/ contains one round's checkpoint, history and weights
# Round r (from 1) seeds its batch order, augmentation and `random` scores with seed + (r - 1) x stride,
# so that rounds do not repeat the same batches.
ROUND_SEED_STRIDE = 1000


def round_folder(folder: str | Path, round_index: int) -> Path:
    """Return the folder of round `round_index` (counted from 1) inside a run folder."""
    return Path(folder) / ROUNDS_FOLDER / f"{round_index:02d}"


def fine_tune_criterion(cfg, teacher: nn.Module):
    """Return the fine-tuning loss of a pruning run: KD from the unpruned `teacher`, or None for cross-entropy.

    With `cfg.use_kd` the loss is `distill.kd_loss` with the run's temperature,
    ce_weight and kd_weight, and the teacher is the unpruned model the run
    started from, in every round.
    """
    from .distill import KDCriterion

    if not cfg.use_kd:
        return None
    return KDCriterion(teacher, cfg.temperature, cfg.ce_weight, cfg.kd_weight)


def _cpu_copy(model: WideResNet) -> WideResNet:
    copy = build_model(model.arch)
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return copy.eval()


def _global_rows(rows: list[dict], round_index: int, epochs_per_round: int) -> list[dict]:
    # Number epochs across the whole run and tag each row with its round.
    return [{"epoch": (round_index - 1) * epochs_per_round + row["epoch"], "round": round_index,
             **{k: v for k, v in row.items() if k != "epoch"}} for row in rows]


def fine_tune_rounds(model: WideResNet, data, cfg, folder: str | Path, criterion=None,
                     device: torch.device | None = None, progress: bool = False) -> dict:
    """Prune `model` in `cfg.rounds` rounds and fine-tune after each; return `fit`'s result for the whole run.

    Round r prunes the current model to `round_archs(...)[r - 1]` with
    `cfg.criterion`, measures test accuracy, then fine-tunes it for
    `cfg.round_epochs` epochs with `fit` in `rounds/<NN>/` and measures test
    accuracy again. Each round restarts the learning-rate schedule: SGD starts
    again at `cfg.lr` (new momentum buffers, because the tensors changed shape)
    and multiplies it by `cfg.lr_gamma` after each of `cfg.milestones` epochs
    of the round. `model` itself is never changed.

    The run resumes after a crash. Round r's record is `rounds/<NN>/round.json`
    (NN = r with two digits), which gets the test accuracy once the round is
    finished; its `model.pt` stays until the next round is finished. An
    unfinished round resumes from its own per-epoch `checkpoint.pt`. The run
    folder's `history.csv` contains every epoch so far, with a `round` column.
    The result adds "model" (the last round's model) and "extra" with
    `round_accuracy` (one record per round) and `test_acc_after_pruning` (the
    first round's accuracy before fine-tuning).
    """
    from tqdm import tqdm

    from . import runs
    from .train import default_device, evaluate, fit, resolve_precision

    folder = Path(folder)
    device = device or default_device()
    precision = resolve_precision(cfg.precision, device)
    archs = round_archs(model.arch, cfg.pruning_ratio, cfg.rounds)
    epochs_per_round = cfg.round_epochs

    done_rows: list[dict] = []
    records: list[dict] = []
    resumed_from_epoch: int | None = None   # epochs already trained when this call started
    result: dict = {}
    current: WideResNet | None = None
    bar = tqdm(total=cfg.rounds, desc=f"{cfg.run_id} rounds", unit="round", disable=not progress)
    for r, arch in enumerate(archs, start=1):
        here = round_folder(folder, r)
        record_path = here / "round.json"
        record = runs.read_json(record_path) if record_path.is_file() else None
        if record is not None and "test_acc" in record:
            done_rows += _global_rows(runs.read_history(here), r, epochs_per_round)
            records.append(record)
            current = None  # loaded from disk only if a later round needs it
            bar.update()
            continue

        round_seed = cfg.seed + (r - 1) * ROUND_SEED_STRIDE
        if r == 1:
            source = _cpu_copy(model)
        elif current is not None:
            source = _cpu_copy(current)
        else:
            source = runs.load_model(round_folder(folder, r - 1) / "model.pt")
        pruned = prune_to_widths(source, arch.stream, arch.inner, criterion=cfg.criterion, seed=round_seed)
        del source
        pruned = pruned.to(device, memory_format=torch.channels_last)
        if record is None:
            _, acc_after_pruning = evaluate(pruned, data.test_x, data.test_y, data.mean, data.std,
                                            cfg.eval_batch_size, precision)
            record = {
                "round": r,
                "stream": list(arch.stream),
                "inner": list(arch.inner),
                "params": sum(p.numel() for p in pruned.parameters()),
                "epochs": epochs_per_round,
                "test_acc_after_pruning": acc_after_pruning,
            }
            runs.atomic_write_json(record_path, record)

        round_cfg = dataclasses.replace(cfg, run_id=f"{cfg.run_id} round {r}/{cfg.rounds}",
                                        epochs=epochs_per_round, seed=round_seed)
        previous_rows = list(done_rows)

        def write_history(rows: list[dict], r: int = r, previous_rows: list[dict] = previous_rows) -> None:
            combined = previous_rows + _global_rows(rows, r, epochs_per_round)
            runs.atomic_write_text(folder / "history.csv", runs.history_to_csv(combined))

        result = fit(pruned, data, round_cfg, here, criterion=criterion, device=device, progress=progress,
                     on_epoch=write_history)
        if resumed_from_epoch is None:
            resumed_from_epoch = len(done_rows) + result["resumed_from_epoch"]
        done_rows += _global_rows(result["history"], r, epochs_per_round)
        record.update(test_acc=result["test_acc"], test_loss=result["test_loss"],
                      train_seconds=result["train_seconds"])
        # Weights before the record: a round counts as finished only once its model is on disk.
        runs.save_model(pruned, here / "model.pt")
        runs.atomic_write_json(record_path, record)
        if runs.is_writer():
            (here / "checkpoint.pt").unlink(missing_ok=True)
            if r > 1:
                (round_folder(folder, r - 1) / "model.pt").unlink(missing_ok=True)
        records.append(record)
        current = pruned
        bar.update()
    bar.close()

    runs.atomic_write_text(folder / "history.csv", runs.history_to_csv(done_rows))
    last = records[-1]
    if current is None:
        current = runs.load_model(round_folder(folder, cfg.rounds) / "model.pt")
    return {
        "history": done_rows,
        "test_loss": last["test_loss"],
        "test_acc": last["test_acc"],
        "train_seconds": sum(row["seconds"] for row in done_rows),
        "precision": result.get("precision", precision),
        "compile": result.get("compile", cfg.compile),
        "resumed_from_epoch": len(done_rows) if resumed_from_epoch is None else resumed_from_epoch,
        "model": current,
        "extra": {
            "round_accuracy": records,
            "test_acc_after_pruning": records[0]["test_acc_after_pruning"],
        },
    }


def run_pruning(config: dict, runs_dir: str | Path | None = None, data_root: str | Path | None = None,
                threads: int | None = None, progress: bool = False,
                gpus: list[int] | None = None) -> dict:
    """Prune the run store's teacher with the run's schedule, fine-tune it and return the metrics.

    The schedule is `fine_tune_rounds` with one round (one-shot) or several
    (iterative); `cfg.epochs` counts every fine-tuning epoch of the run. Besides
    the common metrics, metrics.json gets the pruning settings, the widths
    before and after, the teacher's test accuracy, the accuracy right after the
    first pruning, `round_accuracy`, and how the result differs from the native
    student (`compare_with_native`).
    """
    from . import runs
    from .errors import ConfigError
    from .train import evaluate, execute_run, resolve_precision

    def build(cfg, data, teacher):
        try:
            archs = round_archs(teacher.arch, cfg.pruning_ratio, cfg.rounds)
        except ValueError as exc:
            raise ConfigError(f"run {cfg.run_id}: {exc}") from None
        final = archs[-1]
        expected = ArchSpec.native(cfg.depth, cfg.width, data.num_classes)
        if tuple(final.stream) != expected.stream:
            raise ConfigError(
                f"run {cfg.run_id}: pruning {teacher.name} by {cfg.pruning_ratio} gives stream widths "
                f"{list(final.stream)}, not those of WRN-{cfg.depth}-{cfg.width} {list(expected.stream)}"
            )
        info_path = runs.run_dir(runs.runs_root(runs_dir), cfg.profile, cfg.run_id) / "pruning.json"
        if info_path.is_file():
            info = runs.read_json(info_path)
        else:
            device = next(teacher.parameters()).device
            _, teacher_acc = evaluate(teacher, data.test_x, data.test_y, data.mean, data.std,
                                      cfg.eval_batch_size, resolve_precision(cfg.precision, device))
            info = {
                "pruning_ratio": cfg.pruning_ratio,
                "criterion": cfg.criterion,
                "schedule": cfg.schedule,
                "rounds": cfg.rounds,
                "epochs_per_round": cfg.round_epochs,
                "use_kd": cfg.use_kd,
                "teacher_model": teacher.name,
                "teacher_width": teacher.arch.stream[0] // GROUP_BASE_CHANNELS[0],
                "widths_before": list(teacher.arch.stream),
                "widths_after": list(final.stream),
                "inner_before": list(teacher.arch.inner),
                "inner_after": list(final.inner),
                "teacher_test_acc": teacher_acc,
                **compare_with_native(final, cfg.width),
            }
            if cfg.use_kd:
                info["kd"] = {"temperature": cfg.temperature, "ce_weight": cfg.ce_weight,
                              "kd_weight": cfg.kd_weight}
            runs.atomic_write_json(info_path, info)
        return teacher, fine_tune_criterion(cfg, teacher), info

    metrics = execute_run(config, build, runs_dir=runs_dir, data_root=data_root, threads=threads,
                          progress=progress, train=fine_tune_rounds, gpus=gpus)
    if not runs.is_writer():
        return metrics
    # metrics.json is written, so the per-round weights (the last one equals model.pt) can go.
    folder = runs.run_dir(runs.runs_root(runs_dir), metrics["profile"], metrics["run_id"])
    for leftover in folder.glob(f"{ROUNDS_FOLDER}/*/model.pt"):
        leftover.unlink()
    return metrics
