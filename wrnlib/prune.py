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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .models import GROUP_BASE_CHANNELS, ArchSpec, WideResNet, build_model

__all__ = [
    "CRITERIA",
    "ChannelGroup",
    "channel_groups",
    "kept_channels",
    "prune_model",
    "prune_to_widths",
    "round_widths",
    "run_pruning",
]


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
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
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
    check_ratio(pruning_ratio)
    arch = model.arch
    groups = {group.name: group for group in channel_groups(model)}
    stream = tuple(
        kept_channels(c, pruning_ratio) if groups[f"group{g + 1}.stream"].prunable else c
        for g, c in enumerate(arch.stream)
    )
    inner = tuple(kept_channels(c, pruning_ratio) for c in arch.inner)
    return prune_to_widths(model, stream, inner, criterion=criterion, seed=seed)


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

def run_pruning(config: dict, runs_dir: str | Path | None = None, data_root: str | Path | None = None,
                threads: int | None = None, progress: bool = False) -> dict:
    """Prune the run store's teacher once, fine-tune it and return the metrics."""
    from . import runs
    from .distill import KDCriterion
    from .errors import ConfigError
    from .train import evaluate, execute_run, resolve_precision

    def build(cfg, data, teacher):
        if cfg.schedule != "one-shot":
            raise ConfigError(f"run {cfg.run_id}: schedule {cfg.schedule!r} is not available; use one-shot")
        teacher_cpu = teacher.cpu().float()
        try:
            pruned = prune_model(teacher_cpu, cfg.pruning_ratio, criterion=cfg.criterion, seed=cfg.seed)
        except ValueError as exc:
            raise ConfigError(f"run {cfg.run_id}: {exc}") from None
        expected = ArchSpec.native(cfg.depth, cfg.width, data.num_classes)
        if tuple(pruned.arch.stream) != expected.stream:
            raise ConfigError(
                f"run {cfg.run_id}: pruning {teacher.name} by {cfg.pruning_ratio} gives stream widths "
                f"{list(pruned.arch.stream)}, not those of WRN-{cfg.depth}-{cfg.width} {list(expected.stream)}"
            )
        device = next(teacher.parameters()).device
        info_path = runs.run_dir(runs.runs_root(runs_dir), cfg.profile, cfg.run_id) / "pruning.json"
        if info_path.is_file():
            info = runs.read_json(info_path)
        else:
            pruned_eval = pruned.to(device, memory_format=torch.channels_last)
            precision = resolve_precision(cfg.precision, device)
            teacher_eval = teacher_cpu.to(device, memory_format=torch.channels_last)
            _, acc_before = evaluate(teacher_eval, data.test_x, data.test_y, data.mean, data.std,
                                     cfg.eval_batch_size, precision)
            _, acc_after = evaluate(pruned_eval, data.test_x, data.test_y, data.mean, data.std,
                                    cfg.eval_batch_size, precision)
            info = {
                "pruning_ratio": cfg.pruning_ratio,
                "criterion": cfg.criterion,
                "schedule": cfg.schedule,
                "rounds": 1,
                "epochs_per_round": cfg.epochs,
                "teacher_model": teacher.name,
                "teacher_width": teacher.arch.stream[0] // GROUP_BASE_CHANNELS[0],
                "widths_before": list(teacher.arch.stream),
                "widths_after": list(pruned.arch.stream),
                "inner_before": list(teacher.arch.inner),
                "inner_after": list(pruned.arch.inner),
                "teacher_test_acc": acc_before,
                "test_acc_after_pruning": acc_after,
                "use_kd": cfg.use_kd,
                **compare_with_native(pruned.arch, cfg.width),
            }
            runs.atomic_write_json(info_path, info)
        teacher_device = teacher_cpu.to(device, memory_format=torch.channels_last)
        criterion = (KDCriterion(teacher_device, cfg.temperature, cfg.ce_weight, cfg.kd_weight)
                     if cfg.use_kd else None)
        return pruned, criterion, info

    return execute_run(config, build, runs_dir=runs_dir, data_root=data_root, threads=threads,
                       progress=progress)
