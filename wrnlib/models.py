"""Pre-activation Wide-ResNet for 32x32 inputs.

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146).
WRN-d-k has a 16-channel stem conv and three groups of (d - 4) / 6 basic blocks
at 16k, 32k and 64k channels (strides 1, 2, 2). A block is
BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus a 1x1 projection shortcut where
the block changes the channel count or the resolution. Convolutions have no
bias; the classifier has one.

The layer widths of a model are described by an `ArchSpec`, so that node
pruning can build a physically smaller network of the same class: a native
WRN-d-k is the spec `ArchSpec.native(d, k)`; a pruned one may have other widths
and a projection shortcut where a native net of its width has none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["ArchSpec", "BasicBlock", "WideResNet", "build_model", "parse_model_name"]

STEM_CHANNELS = 16
GROUP_BASE_CHANNELS = (16, 32, 64)
GROUP_STRIDES = (1, 2, 2)


def blocks_per_group(depth: int) -> int:
    """Return (depth - 4) / 6, rejecting depths that are not 6n + 4."""
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise ValueError(f"depth must be an integer of the form 6n+4 (10, 16, 22, 28, ...), got {depth!r}")
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"invalid WRN depth {depth}: depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...)"
        )
    return (depth - 4) // 6


def check_width(width: int) -> int:
    """Return `width` if it is an integer >= 1, else raise ValueError."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"invalid WRN width {width!r}: the widening factor must be an integer >= 1")
    return width


@dataclass(frozen=True)
class ArchSpec:
    """Channel layout of a Wide-ResNet.

    `stream` holds the residual-stream width of each of the three groups.
    `inner` holds, per block in network order, the width between its two convs.
    `shortcuts` says, per group, whether its first block has a 1x1 projection.
    """

    depth: int
    num_classes: int
    stream: tuple[int, int, int]
    inner: tuple[int, ...]
    shortcuts: tuple[bool, bool, bool]
    dropout: float = 0.0

    @classmethod
    def native(cls, depth: int, width: int, num_classes: int, dropout: float = 0.0) -> "ArchSpec":
        """Return the spec of the standard WRN-depth-width."""
        n = blocks_per_group(depth)
        check_width(width)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        stream = tuple(base * width for base in GROUP_BASE_CHANNELS)
        inner = tuple(c for c in stream for _ in range(n))
        shortcuts = tuple(
            (in_ch != out_ch) or stride != 1
            for in_ch, out_ch, stride in zip((STEM_CHANNELS,) + stream[:2], stream, GROUP_STRIDES)
        )
        return cls(depth, num_classes, stream, inner, shortcuts, float(dropout))

    def __post_init__(self) -> None:
        n = blocks_per_group(self.depth)
        if len(self.stream) != 3 or len(self.shortcuts) != 3:
            raise ValueError("an ArchSpec needs three stream widths and three shortcut flags")
        if len(self.inner) != 3 * n:
            raise ValueError(f"WRN-{self.depth} has {3 * n} blocks, but {len(self.inner)} inner widths were given")
        for name, values in (("stream", self.stream), ("inner", self.inner)):
            if any(int(c) < 1 for c in values):
                raise ValueError(f"every {name} width must be >= 1 channel, got {list(values)}")
        in_channels = (STEM_CHANNELS,) + tuple(self.stream[:2])
        for g, (cin, cout, stride) in enumerate(zip(in_channels, self.stream, GROUP_STRIDES)):
            if (cin != cout or stride != 1) and not self.shortcuts[g]:
                raise ValueError(f"group {g + 1} maps {cin} to {cout} channels and needs a projection shortcut")

    @property
    def blocks_per_group(self) -> int:
        return blocks_per_group(self.depth)

    def is_native(self) -> bool:
        """Return True if some WRN-depth-k has exactly this layout."""
        width, rest = divmod(self.stream[0], GROUP_BASE_CHANNELS[0])
        if rest or width < 1:
            return False
        return self == ArchSpec.native(self.depth, width, self.num_classes, self.dropout)

    def to_dict(self) -> dict:
        """Return a JSON-friendly dict (lists, ints, bools, float)."""
        d = asdict(self)
        d["stream"] = list(self.stream)
        d["inner"] = list(self.inner)
        d["shortcuts"] = list(self.shortcuts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ArchSpec":
        return cls(
            depth=int(d["depth"]),
            num_classes=int(d["num_classes"]),
            stream=tuple(int(c) for c in d["stream"]),
            inner=tuple(int(c) for c in d["inner"]),
            shortcuts=tuple(bool(s) for s in d["shortcuts"]),
            dropout=float(d.get("dropout", 0.0)),
        )


class BasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 + shortcut."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int,
                 projection: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False) if projection else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        # The projection reads the pre-activated input, as in the authors' code;
        # an identity shortcut carries the raw input.
        residual = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + residual


class WideResNet(nn.Module):
    """Pre-activation WRN-depth-width for 32x32 images.

    `arch` overrides the native layout with an `ArchSpec` (used by node pruning);
    `depth`, `num_classes` and `dropout` must then agree with it.
    """

    def __init__(self, depth: int, width: int, num_classes: int, dropout: float = 0.0,
                 arch: ArchSpec | None = None) -> None:
        super().__init__()
        if arch is None:
            arch = ArchSpec.native(depth, width, num_classes, dropout)
        elif arch.depth != depth or arch.num_classes != num_classes:
            raise ValueError(
                f"arch is WRN-{arch.depth} with {arch.num_classes} classes, "
                f"but depth={depth} and num_classes={num_classes} were given"
            )
        self.arch = arch
        self.depth = depth
        self.width = width
        self.num_classes = num_classes

        n = arch.blocks_per_group
        self.stem = nn.Conv2d(3, STEM_CHANNELS, 3, padding=1, bias=False)
        in_channels = STEM_CHANNELS
        groups = []
        for g in range(3):
            blocks = []
            for b in range(n):
                first = b == 0
                blocks.append(BasicBlock(
                    in_channels=in_channels,
                    mid_channels=arch.inner[g * n + b],
                    out_channels=arch.stream[g],
                    stride=GROUP_STRIDES[g] if first else 1,
                    projection=arch.shortcuts[g] if first else False,
                    dropout=arch.dropout,
                ))
                in_channels = arch.stream[g]
            groups.append(nn.Sequential(*blocks))
        self.group1, self.group2, self.group3 = groups
        self.bn = nn.BatchNorm2d(in_channels)
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He (fan-out) init for convs, unit BN, zero biases, as in the authors' code.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def groups(self) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
        return (self.group1, self.group2, self.group3)

    @property
    def name(self) -> str:
        """Return "WRN-d-k" for a native layout, else "WRN-d (pruned 16/32/64 ...)"."""
        if self.arch.is_native():
            return f"WRN-{self.depth}-{self.arch.stream[0] // GROUP_BASE_CHANNELS[0]}"
        return f"WRN-{self.depth} (custom {'/'.join(str(c) for c in self.arch.stream)})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.group1(x)
        x = self.group2(x)
        x = self.group3(x)
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def build_model(arch: ArchSpec | dict) -> WideResNet:
    """Build a `WideResNet` from an `ArchSpec` or its dict form."""
    if isinstance(arch, dict):
        arch = ArchSpec.from_dict(arch)
    width = max(1, arch.stream[0] // GROUP_BASE_CHANNELS[0])
    return WideResNet(arch.depth, width, arch.num_classes, arch.dropout, arch=arch)


def parse_model_name(name: str) -> tuple[int, int]:
    """Parse "wrn-28-10" (any case, '-' or '_') into (depth, width)."""
    parts = name.lower().replace("_", "-").split("-")
    if len(parts) != 3 or parts[0] != "wrn" or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"invalid model name {name!r}: expected the form wrn-DEPTH-WIDTH, e.g. wrn-28-10")
    depth, width = int(parts[1]), int(parts[2])
    blocks_per_group(depth)
    check_width(width)
    return depth, width
