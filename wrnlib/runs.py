"""The run store: run configs, paths, atomic writes and the state of each run.

Layout: `<runs root>/<profile>/<run_id>/` holds `config.json`, `history.csv`,
`checkpoint.pt` (while training), `model.pt` (final weights), `metrics.json`
and the executed notebook. A run is `done` only when `metrics.json` exists and
has every key in `REQUIRED_METRICS`; a folder without it is `partial` and the
next attempt resumes from its checkpoint.

Every file is written to a temporary name in the same folder, flushed with
fsync and renamed over the target, so a crash leaves either the old file or
the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, RunError

__all__ = [
    "METHODS",
    "REQUIRED_METRICS",
    "RunConfig",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "environment_info",
    "load_model",
    "project_root",
    "read_history",
    "read_json",
    "read_metrics",
    "run_dir",
    "run_state",
    "runs_root",
    "save_model",
]

METHODS = ("scratch", "kd", "prune")

# metrics.json must carry these keys before a run counts as done.
REQUIRED_METRICS = (
    "run_id", "profile", "dataset", "method", "depth", "width", "teacher_run_id", "seed", "epochs",
    "test_acc", "test_loss", "params", "macs", "train_seconds", "latency_ms_batch1_cpu",
    "git_commit", "torch_version", "device",
)


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------

def project_root() -> Path:
    """Return the project folder (book sources, notebooks).

    `WRNLIB_PROJECT` wins; otherwise the folder above the installed package if
    it holds `_config.yml` (a source checkout), else the current directory.
    """
    env = os.environ.get("WRNLIB_PROJECT")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "_config.yml").is_file():
        return checkout
    return Path.cwd()


def runs_root(path: str | Path | None = None) -> Path:
    """Return the run store root: `path`, else `WRNLIB_RUNS`, else `<project>/runs`."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("WRNLIB_RUNS")
    return Path(env).expanduser() if env else project_root() / "runs"


def run_dir(root: str | Path, profile: str, run_id: str) -> Path:
    return Path(root) / profile / run_id


# --------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` to `path` atomically."""
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def _json_default(value: Any):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# --------------------------------------------------------------------------
# Run configuration
# --------------------------------------------------------------------------

@dataclass
class RunConfig:
    """Every setting of one run. Saved as config.json; notebooks receive it as a dict."""

    run_id: str
    profile: str
    dataset: str
    method: str                     # scratch | kd | prune
    depth: int
    width: int                      # widening factor of the trained model (the target width when pruning)
    seed: int = 0
    teacher_run_id: str | None = None
    # Optimiser and schedule; defaults are the standard WRN recipe.
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: list[int] = field(default_factory=lambda: [60, 120, 160])   # epochs at which lr *= lr_gamma
    lr_gamma: float = 0.2
    dropout: float = 0.0
    # Data
    val_size: int = 5000            # images held out of the training set; 0 = curves use the test set
    train_subset: int | None = None  # stratified subset of the remaining training images; None = all
    test_subset: int | None = None   # stratified subset of the test set; None = all 10,000
    eval_batch_size: int = 512
    precision: str = "auto"         # auto | bf16 | fp32
    compile: bool = False           # run the training forward through torch.compile
    # Knowledge distillation (method kd, or prune with kd_weight > 0)
    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    # Node pruning (method prune)
    pruning_ratio: float | None = None
    criterion: str = "l1"
    schedule: str = "one-shot"
    rounds: int = 1
    use_kd: bool = False            # prune only: fine-tune with KD from the unpruned teacher
    # Measurement
    latency_repeats: int = 30

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown run setting(s) {unknown}; valid settings: {sorted(known)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise ConfigError for settings no run can use."""
        from .models import blocks_per_group, check_width

        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        try:
            blocks_per_group(self.depth)
            check_width(self.width)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.method in ("kd", "prune") and not self.teacher_run_id:
            raise ConfigError(f"run {self.run_id}: method {self.method} needs a teacher_run_id")
        if self.method == "prune":
            ratio = self.pruning_ratio
            if ratio is None or not 0.0 < float(ratio) < 1.0:
                raise ConfigError(f"run {self.run_id}: pruning_ratio must be in (0, 1), got {ratio!r}")
        if self.epochs < 1:
            raise ConfigError(f"run {self.run_id}: epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"run {self.run_id}: batch_size must be >= 1, got {self.batch_size}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"run {self.run_id}: compile must be true or false, got {self.compile!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"run {self.run_id}: precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.temperature <= 0:
            raise ConfigError(f"run {self.run_id}: temperature must be > 0, got {self.temperature}")


# --------------------------------------------------------------------------
# Run state
# --------------------------------------------------------------------------

def read_metrics(path: str | Path) -> dict | None:
    """Return the metrics of a run folder if it is complete, else None."""
    file = Path(path) / "metrics.json"
    if not file.is_file():
        return None
    try:
        metrics = read_json(file)
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or any(k not in metrics for k in REQUIRED_METRICS):
        return None
    return metrics


def run_state(root: str | Path, profile: str, run_id: str) -> str:
    """Return "done", "partial" (folder exists, metrics incomplete) or "missing"."""
    folder = run_dir(root, profile, run_id)
    if read_metrics(folder) is not None:
        return "done"
    if folder.is_dir() and any(folder.iterdir()):
        return "partial"
    return "missing"


def read_history(path: str | Path) -> list[dict]:
    """Read history.csv into a list of dicts with numbers parsed."""
    file = Path(path)
    if file.is_dir():
        file = file / "history.csv"
    if not file.is_file():
        return []
    rows = []
    with open(file, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: _number(v) for k, v in row.items()})
    return rows


def _number(text: str):
    if text == "":
        return None
    try:
        as_float = float(text)
    except ValueError:
        return text
    return int(as_float) if as_float.is_integer() and "." not in text and "e" not in text.lower() else as_float


def history_to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --------------------------------------------------------------------------
# Models on disk
# --------------------------------------------------------------------------

def save_model(model, path: str | Path) -> None:
    """Save a WideResNet as its ArchSpec (plain dict) and state dict."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save({"arch": model.arch.to_dict(), "state_dict": state}, path)


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load a model saved by `save_model`, refusing files that need pickled code."""
    from .models import build_model

    path = Path(path)
    if not path.is_file():
        raise RunError(f"model file {path} not found")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RunError(
            f"cannot load {path} with weights_only=True ({type(exc).__name__}: {exc}). "
            "Only files written by wrnlib (tensors and plain values) are accepted."
        ) from None
    if not isinstance(blob, dict) or "arch" not in blob or "state_dict" not in blob:
        raise RunError(f"{path} is not a wrnlib model file (expected keys 'arch' and 'state_dict')")
    model = build_model(blob["arch"])
    model.load_state_dict(blob["state_dict"])
    return model


# --------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------

def git_commit() -> str:
    """Return the project's git commit (with "+dirty" for local changes), or "unknown"."""
    try:
        root = project_root()
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_info(device: torch.device | str) -> dict:
    """Return provenance fields for metrics.json: commit, versions, device, host."""
    device = torch.device(device)
    if device.type == "cuda":
        device_name = f"cuda:{torch.cuda.get_device_name(device)}"
    else:
        device_name = f"cpu:{platform.processor() or platform.machine()}"
    return {
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "device": device_name,
        "host": platform.node(),
        "threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
    }
