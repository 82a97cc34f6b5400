"""The run store: run configs, paths, atomic writes and the state of each run.

Layout: `<runs root>/<profile>/<run_id>/` holds `config.json`, `history.csv`,
`checkpoint.pt` (while training), `model.pt` (final weights), `model.onnx`
(the same weights exported for ONNX Runtime), `metrics.json` and the executed
notebook. A pruning run also writes `pruning.json` and one `rounds/<NN>/`
folder per pruning round (its checkpoint, history and record). A run is
`done` only when `metrics.json` exists and has every key in
`REQUIRED_METRICS`; a folder without it is `partial` and the next attempt
resumes from its checkpoint.

Every file is written to a temporary name in the same folder, flushed with
fsync and renamed over the target, so a crash leaves either the old file or
the new one, never half of one. A write that fails because the disk is full or
the file system is read-only raises `StoreError` and leaves no temporary file.

A run being executed holds an exclusive `fcntl.flock` lock on a file in its
folder (`RunLock`). The file records the holder's pid and host, so a second
process that wants the same run waits and logs whom it waits for. The
operating system drops a flock lock when its holder exits or is killed, so a
crash never leaves a stale lock.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import pickle
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, RunError, StoreError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "METHODS",
    "REQUIRED_METRICS",
    "RUN_LOCK",
    "RunConfig",
    "RunLock",
    "STORAGE_ERRNOS",
    "TRAIN_LOCK",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "environment_info",
    "load_model",
    "load_trusted",
    "make_dirs",
    "project_root",
    "read_history",
    "read_json",
    "read_metrics",
    "remove_stale_temp_files",
    "run_dir",
    "run_state",
    "runs_root",
    "save_model",
    "store_error",
]

log = logging.getLogger("wrnlib")

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


# errno values that mean "the run store cannot take this write", as opposed to a bug.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def store_error(exc: OSError, path: str | Path) -> StoreError:
    """Return a StoreError that explains why `path` could not be written and what to do."""
    path = Path(path)
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        message = (f"cannot write {path}: no space left on its device (disk full or quota reached). "
                   "Free some space, or pass another --runs-dir (or WRNLIB_RUNS); finished epochs are kept "
                   "and the same command resumes the run.")
    elif code == errno.EROFS:
        message = (f"cannot write {path}: the file system is read-only. Pass a writable --runs-dir "
                   "(or WRNLIB_RUNS).")
    elif code in (errno.EACCES, errno.EPERM):
        message = (f"cannot write {path}: permission denied. Pass a --runs-dir (or WRNLIB_RUNS) that "
                   "you may write to.")
    elif code in (errno.ENOTDIR, errno.EEXIST):
        message = (f"cannot create {path}: {exc.filename or 'a part of the path'} is a file, not a folder. "
                   "Pass another --runs-dir (or WRNLIB_RUNS).")
    else:
        message = f"cannot write {path}: {exc.strerror or exc}."
    return StoreError(message, code, str(path))


def make_dirs(path: str | Path) -> Path:
    """Create folder `path` with its parents; raise StoreError when that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise store_error(exc, path) from exc
    return path


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def is_writer() -> bool:
    """Return True unless this process is a rank other than 0 of distributed training.

    In a data-parallel run every rank holds the same state, and rank 0 alone
    writes it: the atomic writes, locks and clean-ups below do nothing on the
    other ranks.
    """
    from .distributed import is_writer as rank_zero

    return rank_zero()


def _atomic_write(path: str | Path, write) -> None:
    if not is_writer():
        return
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise store_error(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, StoreError):
            raise store_error(exc, path) from exc
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temporary files that a killed writer left in `folder`; return them.

    Call it only while holding the folder's lock: a live writer's temporary
    file looks the same.
    """
    removed = []
    if not is_writer():
        return removed
    for tmp in Path(folder).glob(".*.tmp"):
        _unlink_quietly(tmp)
        removed.append(tmp)
    return removed


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
    epochs: int = 200               # total training epochs; for pruning, rounds x epochs_per_round
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    # Epochs, counted from the start of each pruning round (from epoch 0 for other runs), after
    # which lr *= lr_gamma.
    milestones: list[int] = field(default_factory=lambda: [60, 120, 160])
    lr_gamma: float = 0.2
    dropout: float = 0.0
    # Data
    val_size: int = 5000            # images held out of the training set; 0 = curves use the test set
    train_subset: int | None = None  # stratified subset of the remaining training images; None = all
    test_subset: int | None = None   # stratified subset of the test set; None = all 10,000
    eval_batch_size: int = 512
    precision: str = "auto"         # auto | bf16 | fp32
    compile: bool = False           # run the training forward through torch.compile
    # Data-parallel training: processes (one per GPU) that share each global batch of batch_size.
    devices: int = 1
    sync_bn: bool = False           # with devices > 1 on CUDA: BatchNorm statistics over the global batch
    freeze_bn: bool = False         # BatchNorm keeps and uses its running statistics while training
    # Knowledge distillation (method kd, or method prune with use_kd)
    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    # Node pruning (method prune)
    pruning_ratio: float | None = None
    criterion: str = "l1"           # l1 | l2 | bn_scale | random (wrnlib.prune.CRITERIA)
    schedule: str = "one-shot"      # one-shot | iterative
    rounds: int = 1                 # pruning rounds; 1 for one-shot
    epochs_per_round: int | None = None  # fine-tuning epochs after each round; None = epochs / rounds
    use_kd: bool = False            # prune only: fine-tune with KD from the unpruned teacher
    # Measurement
    latency_repeats: int = 30       # timed passes per batch-1 latency figure
    throughput_repeats: int = 3     # timed passes per batch-256 throughput figure

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
        from .data import DATASETS
        from .models import blocks_per_group, check_width

        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"run {self.run_id}: unknown data set {self.dataset!r}; choose one of "
                              f"{', '.join(DATASETS)}")
        try:
            blocks_per_group(self.depth)
            check_width(self.width)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.method in ("kd", "prune") and not self.teacher_run_id:
            raise ConfigError(f"run {self.run_id}: method {self.method} needs a teacher_run_id")
        if self.epochs < 1:
            raise ConfigError(f"run {self.run_id}: epochs must be >= 1, got {self.epochs}")
        if self.method == "prune":
            self._validate_pruning()
        if self.batch_size < 1:
            raise ConfigError(f"run {self.run_id}: batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"run {self.run_id}: lr must be > 0, got {self.lr}")
        if self.val_size < 0:
            raise ConfigError(f"run {self.run_id}: val_size must be >= 0 (0 = curves use the test set), "
                              f"got {self.val_size}")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"run {self.run_id}: {name} must be >= 1 or None (all images), got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"run {self.run_id}: dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"run {self.run_id}: compile must be true or false, got {self.compile!r}")
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1:
            raise ConfigError(f"run {self.run_id}: devices must be an integer >= 1 (processes of data-parallel "
                              f"training), got {self.devices!r}")
        if self.batch_size < self.devices:
            raise ConfigError(f"run {self.run_id}: batch_size {self.batch_size} is split over {self.devices} "
                              "devices and must be at least the number of devices")
        for name in ("sync_bn", "freeze_bn"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"run {self.run_id}: {name} must be true or false, got {getattr(self, name)!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"run {self.run_id}: precision must be auto, bf16 or fp32, got {self.precision!r}")
        for name in ("latency_repeats", "throughput_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"run {self.run_id}: {name} must be an integer >= 1, got {value!r}")
        if self.temperature <= 0:
            raise ConfigError(f"run {self.run_id}: temperature must be > 0, got {self.temperature}")

    def _validate_pruning(self) -> None:
        from .prune import CRITERIA, SCHEDULES

        ratio = self.pruning_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
            raise ConfigError(f"run {self.run_id}: pruning_ratio must be in (0, 1), got {ratio!r}; it is the "
                              "fraction of channels removed from each pruned layer (0.5 halves the width)")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"run {self.run_id}: unknown pruning criterion {self.criterion!r}; "
                              f"choose one of {', '.join(CRITERIA)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"run {self.run_id}: unknown pruning schedule {self.schedule!r}; "
                              f"choose one of {', '.join(SCHEDULES)}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"run {self.run_id}: rounds must be an integer >= 1, got {self.rounds!r}")
        if self.schedule == "one-shot" and self.rounds != 1:
            raise ConfigError(f"run {self.run_id}: a one-shot schedule prunes once, so rounds must be 1, "
                              f"got {self.rounds}; use schedule iterative for several rounds")
        if self.schedule == "iterative" and self.rounds < 2:
            raise ConfigError(f"run {self.run_id}: an iterative schedule needs rounds >= 2, got "
                              f"{self.rounds}; use schedule one-shot to prune once")
        per_round = self.epochs_per_round
        if per_round is not None and (isinstance(per_round, bool) or not isinstance(per_round, int) or per_round < 1):
            raise ConfigError(f"run {self.run_id}: epochs_per_round must be an integer >= 1 or None, "
                              f"got {per_round!r}")
        if self.epochs_per_round is None:
            if self.epochs % self.rounds:
                raise ConfigError(f"run {self.run_id}: epochs {self.epochs} do not split into {self.rounds} "
                                  "equal rounds; set epochs_per_round and epochs = rounds x epochs_per_round")
        elif self.epochs != self.rounds * self.epochs_per_round:
            raise ConfigError(
                f"run {self.run_id}: epochs must equal rounds x epochs_per_round = {self.rounds} x "
                f"{self.epochs_per_round}, got epochs {self.epochs}; epochs counts every fine-tuning epoch"
            )

    @property
    def round_epochs(self) -> int:
        """Fine-tuning epochs of one pruning round (all epochs for a run that does not prune)."""
        if self.method != "prune":
            return self.epochs
        return self.epochs_per_round if self.epochs_per_round is not None else self.epochs // self.rounds


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


def _is_bookkeeping(path: Path) -> bool:
    """Lock files and the notebook of a failed attempt are no part of a run's results."""
    return path.name in (RUN_LOCK, TRAIN_LOCK) or path.name.endswith(".partial.ipynb")


def run_state(root: str | Path, profile: str, run_id: str) -> str:
    """Return "done", "partial" (training began, metrics incomplete) or "missing".

    A folder that contains only lock files and the notebook of an attempt
    that failed before training began counts as missing.
    """
    folder = run_dir(root, profile, run_id)
    if read_metrics(folder) is not None:
        return "done"
    if folder.is_dir() and any(not _is_bookkeeping(p) for p in folder.iterdir()):
        return "partial"
    return "missing"


# --------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------

# Held by the process that executes a run's notebook (`wrnlib run`, `grid`, `reproduce`).
RUN_LOCK = "run.lock"
# Held by the process that trains the run: the notebook's kernel, or a script calling the API.
TRAIN_LOCK = "train.lock"


class RunLock:
    """An exclusive `fcntl.flock` lock on `path`, which records the holder's pid and host.

    `acquire` waits while another process holds the lock, logs once whom it
    waits for, and polls every `poll_seconds` so that Ctrl-C and `stop` end the
    wait. Use it as a context manager. Two RunLock objects on one file conflict
    even inside one process, because flock locks belong to open file
    descriptions.
    """

    def __init__(self, path: str | Path, description: str, poll_seconds: float = 0.5,
                 stop: threading.Event | None = None) -> None:
        self.path = Path(path)
        self.description = description
        self.poll_seconds = poll_seconds
        self.stop = stop
        self._fd: int | None = None

    @staticmethod
    def holder(path: str | Path) -> dict | None:
        """Return the pid, host, command and start time written by the holder of `path`, if any."""
        try:
            text = Path(path).read_text(encoding="utf-8")
            info = json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    @staticmethod
    def describe_holder(info: dict | None) -> str:
        """Format a `holder` record for a log message."""
        if not info:
            return "another process (it has not written its pid yet)"
        return (f"pid {info.get('pid')} on host {info.get('host')} (command: {info.get('command')}; "
                f"since {info.get('started')})")

    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            raise StoreError(f"cannot lock {self.path}: {exc.strerror}. The run store's file system must "
                             "support fcntl.flock locks; pass a --runs-dir on a local disk.") from exc
        return True

    def acquire(self) -> "RunLock":
        """Take the lock, waiting as long as another process holds it."""
        make_dirs(self.path.parent)
        if fcntl is None:
            # NOTE: without fcntl (Windows) runs are not locked; two processes may train the same run.
            return self
        if not is_writer():
            # Rank 0 of a data-parallel run holds the lock for all its ranks.
            return self
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise store_error(exc, self.path) from exc
        if not self._try_lock():
            try:
                self._wait()
            except BaseException:
                self._close()
                raise
        info = {
            "pid": os.getpid(),
            "parent_pid": os.getppid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv) or sys.executable,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        return self

    def _wait(self) -> None:
        reported = None
        while True:
            info = self.holder(self.path)
            if info != reported:
                log.warning("%s is locked by %s; waiting for it to finish", self.description,
                            self.describe_holder(info))
                reported = info
            if self.stop is None:
                time.sleep(self.poll_seconds)
            elif self.stop.wait(self.poll_seconds):
                raise KeyboardInterrupt
            if self._try_lock():
                log.warning("%s: the lock is free; continuing", self.description)
                return

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        """Clear the holder record and drop the lock."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass  # a full or read-only disk must not keep the lock held
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._close()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


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


def load_trusted(path: str | Path, kind: str, remedy: str, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`, raising RunError that names `kind` and `remedy` on failure.

    weights_only=True unpickles only tensors and plain containers, so a file
    whose loading would run arbitrary code (a pickled class or function) is
    rejected instead of executed.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        obj = f" (it contains the Python object {found.group(1)})" if found else ""
        raise RunError(
            f"{kind} {path} needs arbitrary code to load{obj}, so it was rejected: wrnlib loads files "
            f"with torch.load(weights_only=True), which accepts only tensors and plain values. {remedy}"
        ) from exc
    except FileNotFoundError as exc:
        raise RunError(f"{kind} {path} not found. {remedy}") from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError... for damaged files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{kind} {path} is damaged or not a file written by torch.save "
                       f"({type(exc).__name__}: {first_line}). {remedy}") from exc


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load a model saved by `save_model`, rejecting files that need pickled code."""
    from .models import build_model

    path = Path(path)
    remedy = f"Delete the run folder {path.parent} and run that run again."
    if not path.is_file():
        raise RunError(f"model file {path} not found. {remedy}")
    blob = load_trusted(path, "model file", remedy, map_location)
    if not isinstance(blob, dict) or "arch" not in blob or "state_dict" not in blob:
        raise RunError(f"{path} is not a wrnlib model file (expected keys 'arch' and 'state_dict'). {remedy}")
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
