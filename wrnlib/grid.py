"""Profiles, the run list of a profile, and its execution through papermill.

A profile is one named size of the whole study. Every profile has the same
shape: for each data set, scratch runs of every teacher and student width,
then for each (teacher, student) pair a KD run and node-pruning runs whose
pruning ratio turns the teacher's width into the student's. Every pair gets
the canonical pruning run (one-shot, L1 criterion, no KD), and the profile
may add other pruning variants (iterative schedules, the L2 criterion,
prune + KD). Runs execute in dependency order (a teacher before its
students), each as its template notebook through papermill.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import runs
from .errors import ConfigError, RunError

__all__ = ["PROFILES", "PROFILES_ENV", "Profile", "PruneVariant", "RunSpec", "execute_grid",
           "execute_run_notebook", "extra_profiles", "get_profile", "plan_runs", "profile_from_dict",
           "prune_run_id"]

log = logging.getLogger("wrnlib")

NOTEBOOK_FOR_METHOD = {"scratch": "train", "kd": "distill", "prune": "prune"}

# Kernel command-line options: keep the kernel's own start-up warnings (it
# listens on loopback TCP) and its shutdown errors after an interrupt out of
# the grid's output.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]


@dataclass(frozen=True)
class Pair:
    """A compression target: teacher width -> student width, and the pruning ratio that maps one to the other."""

    teacher_width: int
    student_width: int
    pruning_ratio: float


# The study's three targets: 28-10 -> 28-2 (ratio 0.8), 28-4 -> 28-2 and 28-2 -> 28-1 (ratio 0.5).
STUDY_PAIRS = (Pair(10, 2, 0.8), Pair(4, 2, 0.5), Pair(2, 1, 0.5))


ITERATIVE_ROUNDS = 10             # default rounds of an iterative pruning variant
ITERATIVE_EPOCHS_PER_ROUND = 20   # default fine-tuning epochs after each round


@dataclass(frozen=True)
class PruneVariant:
    """One node-pruning setting of a profile, run for every pair unless `student_widths` or `datasets` narrow it.

    A one-shot variant fine-tunes for the profile's epochs and milestones, or
    for `epochs_per_round` epochs when set. An iterative variant prunes in
    `rounds` rounds (default 10) of `epochs_per_round` epochs each (default 20),
    and every round restarts the learning-rate schedule with milestones at 30 %,
    60 % and 80 % of the round.
    """

    criterion: str = "l1"
    schedule: str = "one-shot"
    rounds: int | None = None                       # None = 1 for one-shot, ITERATIVE_ROUNDS for iterative
    epochs_per_round: int | None = None             # None = the profile's epochs (one-shot), 20 (iterative)
    use_kd: bool = False
    student_widths: tuple[int, ...] | None = None   # None = every pair
    datasets: tuple[str, ...] | None = None         # None = every data set of the profile

    def __post_init__(self) -> None:
        # Frozen dataclass: fill the schedule's defaults through object.__setattr__.
        if self.schedule == "iterative":
            if self.rounds is None:
                object.__setattr__(self, "rounds", ITERATIVE_ROUNDS)
            if self.epochs_per_round is None:
                object.__setattr__(self, "epochs_per_round", ITERATIVE_EPOCHS_PER_ROUND)
        elif self.rounds is None:
            object.__setattr__(self, "rounds", 1)

    @property
    def canonical(self) -> bool:
        """True for the variant the KD comparison uses: one-shot, L1, no KD, the profile's epochs."""
        return self == PruneVariant(student_widths=self.student_widths, datasets=self.datasets)

    @property
    def tag(self) -> str:
        """Run id part, e.g. "l1-oneshot", "l2-oneshot", "l1-oneshot-kd", "l1-iter10x20"."""
        if self.schedule == "one-shot":
            schedule = "oneshot" if self.epochs_per_round is None else f"oneshot{self.epochs_per_round}ep"
        else:
            schedule = f"iter{self.rounds}x{self.epochs_per_round}"
        return f"{self.criterion}-{schedule}" + ("-kd" if self.use_kd else "")

    def applies_to(self, dataset: str, pair: Pair) -> bool:
        return ((self.datasets is None or dataset in self.datasets)
                and (self.student_widths is None or pair.student_width in self.student_widths))

    def describe(self, profile_epochs: int) -> str:
        """Return e.g. "iterative 10 x 20 epochs, l1" for the profile table."""
        if self.schedule == "one-shot":
            text = f"one-shot, {self.epochs_per_round or profile_epochs} epochs"
        else:
            text = f"iterative {self.rounds} x {self.epochs_per_round} epochs"
        text += f", {self.criterion}" + (", + KD" if self.use_kd else "")
        if self.student_widths is not None:
            text += f" (pairs with student width {', '.join(map(str, self.student_widths))})"
        if self.datasets is not None:
            text += f" ({', '.join(self.datasets)} only)"
        return text


CANONICAL_PRUNING = PruneVariant()


@dataclass(frozen=True)
class Profile:
    """Settings of one profile; every number a run uses comes from here."""

    name: str
    description: str
    datasets: tuple[str, ...]
    depth: int
    pairs: tuple[Pair, ...]
    epochs: int                      # scratch and KD training, and one-shot pruning fine-tuning
    milestones: tuple[int, ...]      # epochs at which the learning rate is multiplied by lr_gamma
    train_subset: int | None         # training images per run (stratified); None = all left after validation
    val_size: int                    # held-out validation images; 0 = curves use the test set
    test_subset: int | None          # test images; None = all 10,000
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 128
    lr: float = 0.1
    lr_gamma: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    latency_repeats: int = 30        # timed passes per batch-1 latency figure
    throughput_repeats: int = 3      # timed passes per batch-256 throughput figure (after one warm-up)
    # torch.compile for training. Off in every profile: on a 2-core CPU it was no
    # faster than eager mode and took 20-45 s to compile (BENCHMARKS.md).
    # NOTE: not yet measured on a GPU; WITH_COMPILE=1 benchmarks/gpu_check.sh does.
    compile: bool = False
    # CUDA devices per run: above 1 the run trains data-parallel under torchrun
    # with the same global batch and learning rate (see wrnlib.distributed).
    devices: int = 1
    miniature: bool = True
    # Node-pruning runs per pair; the canonical variant (one-shot, L1, no KD) comes first in every profile.
    prune_variants: tuple[PruneVariant, ...] = (CANONICAL_PRUNING,)
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def widths(self) -> list[int]:
        """Return every width trained from scratch, widest first."""
        return sorted({w for p in self.pairs for w in (p.teacher_width, p.student_width)}, reverse=True)

    def settings_rows(self) -> list[tuple[str, str]]:
        """Return (setting, value) rows that describe this profile in the book and the docs."""
        subset = "all" if self.train_subset is None else f"{self.train_subset:,}"
        test = "all 10,000" if self.test_subset is None else f"{self.test_subset:,}"
        val = "none (curves use the test set)" if self.val_size == 0 else f"{self.val_size:,}"
        pairs = ", ".join(f"{self.depth}-{p.teacher_width} -> {self.depth}-{p.student_width} "
                          f"(pruning ratio {p.pruning_ratio})" for p in self.pairs)
        return [
            ("profile", self.name),
            ("miniature", "yes" if self.miniature else "no"),
            ("datasets", ", ".join(self.datasets)),
            ("architecture", f"WRN-{self.depth}-k, k in {', '.join(str(w) for w in self.widths())}"),
            ("teacher -> student pairs", pairs),
            ("epochs (scratch, KD, one-shot pruning fine-tune)", str(self.epochs)),
            ("learning rate", f"{self.lr}, x{self.lr_gamma} at epochs {', '.join(map(str, self.milestones))}"),
            ("learning rate, iterative pruning", f"restarts at {self.lr} every round, x{self.lr_gamma} at "
                                                 "30 %, 60 % and 80 % of the round's epochs"),
            ("optimizer", f"SGD, Nesterov momentum {self.momentum}, weight decay {self.weight_decay}"),
            ("batch size", str(self.batch_size)),
            ("training images", subset),
            ("validation images (from the training set)", val),
            ("test images", test),
            ("seeds", ", ".join(map(str, self.seeds))),
            ("KD", "T = 4, ce_weight = 0.1, kd_weight = 0.9"),
            ("pruning variants", "; ".join(v.describe(self.epochs) for v in self.prune_variants)),
            ("timed inference passes", f"batch 1: {self.latency_repeats}, batch 256: {self.throughput_repeats}"),
        ]


def _milestones(epochs: int) -> tuple[int, ...]:
    # 60/120/160 of 200 epochs, scaled to shorter schedules.
    return tuple(sorted({max(1, round(epochs * f)) for f in (0.3, 0.6, 0.8)}))


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="CI check of the whole pipeline on real images in a few minutes; the numbers mean nothing.",
        datasets=("cifar10", "cifar100"),
        depth=10,
        pairs=(Pair(2, 1, 0.5),),
        epochs=1,
        milestones=(1,),
        train_subset=500,
        val_size=100,
        test_subset=200,
        batch_size=100,
        latency_repeats=5,
        # One iterative and one prune + KD run, on cifar10 only: cifar100 then checks that the book
        # still builds when a variant has no runs.
        prune_variants=(
            CANONICAL_PRUNING,
            PruneVariant(schedule="iterative", rounds=2, epochs_per_round=1, datasets=("cifar10",)),
            PruneVariant(use_kd=True, datasets=("cifar10",)),
        ),
        throughput_repeats=1,
    ),
    "quick": Profile(
        name="quick",
        description="A miniature of the study for a 2-core CPU in under 30 minutes: WRN-10 instead of "
                    "WRN-28, a training subset and a few epochs.",
        datasets=("cifar10", "cifar100"),
        depth=10,
        pairs=STUDY_PAIRS,
        epochs=5,
        milestones=_milestones(5),
        train_subset=2000,
        val_size=500,
        test_subset=2000,
        latency_repeats=20,
        # The variants only for the narrow pair (2 -> 1), to stay within the profile's time budget;
        # 3 rounds x 1 epoch fine-tune for fewer epochs than one-shot's 5.
        prune_variants=(
            CANONICAL_PRUNING,
            PruneVariant(schedule="iterative", rounds=3, epochs_per_round=1, student_widths=(1,)),
            PruneVariant(use_kd=True, student_widths=(1,)),
            PruneVariant(criterion="l2", student_widths=(1,)),
        ),
        throughput_repeats=1,
    ),
    "paper": Profile(
        name="paper",
        description="The full study for a GPU: WRN-28, the whole training set, 200 epochs, 3 seeds.",
        datasets=("cifar10", "cifar100"),
        depth=28,
        pairs=STUDY_PAIRS,
        epochs=200,
        milestones=(60, 120, 160),
        train_subset=None,
        val_size=0,
        test_subset=None,
        seeds=(0, 1, 2),
        latency_repeats=50,
        # Measured on the CPU even on a GPU machine: each WRN-28-10 pass at batch 256 on one
        # thread takes tens of seconds, and every throughput figure costs repeats + 1 passes.
        throughput_repeats=3,
        miniature=False,
        # 10 x 20 fine-tunes for as many epochs (200) as one-shot; 10 x 40 doubles that budget.
        prune_variants=(
            CANONICAL_PRUNING,
            PruneVariant(criterion="l2"),
            PruneVariant(use_kd=True),
            PruneVariant(schedule="iterative"),
            PruneVariant(schedule="iterative", epochs_per_round=40),
        ),
    ),
}

DEFAULT_PROFILE = "quick"

# A JSON file with more profiles: a list of objects (or one object) whose keys
# are Profile fields, with "pairs" as [teacher_width, student_width,
# pruning_ratio] triples. Tests and users register profiles of their own size with it.
PROFILES_ENV = "WRNLIB_PROFILES"

_PROFILE_FIELD_KINDS = {
    "name": "name", "description": "text", "datasets": "texts", "depth": "int", "pairs": "pairs",
    "epochs": "int", "milestones": "ints", "train_subset": "int or null", "val_size": "int",
    "test_subset": "int or null", "seeds": "ints", "batch_size": "int", "lr": "number",
    "lr_gamma": "number", "momentum": "number", "weight_decay": "number", "latency_repeats": "int",
    "miniature": "bool", "throughput_repeats": "int", "compile": "bool",
    "devices": "int",
}
_REQUIRED_PROFILE_FIELDS = ("name", "datasets", "depth", "pairs", "epochs")


def get_profile(name: str) -> Profile:
    """Return the named profile (built in, or from the WRNLIB_PROFILES file) or raise ConfigError."""
    # The file is read even for a built-in name, so a clash or a broken file is reported on every lookup.
    extra = extra_profiles()
    if name in PROFILES:
        return PROFILES[name]
    if name in extra:
        return extra[name]
    raise ConfigError(f"unknown profile {name!r}: choose one of {', '.join([*PROFILES, *extra])}, or define "
                      f"it in a JSON file named by {PROFILES_ENV}")


def extra_profiles() -> dict[str, Profile]:
    """Return the profiles defined in the JSON file named by WRNLIB_PROFILES (none when it is unset)."""
    import json

    path_text = os.environ.get(PROFILES_ENV)
    if not path_text:
        return {}
    path = Path(path_text).expanduser()
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{PROFILES_ENV}={path_text}: cannot read the profile file ({exc.strerror}). "
                          f"Point {PROFILES_ENV} at a JSON file or unset it.") from None
    except ValueError as exc:
        raise ConfigError(f"profile file {path} is not valid JSON: {exc}") from None
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise ConfigError(f"profile file {path} must hold a JSON object or a list of objects, "
                          f"not {type(entries).__name__}")
    profiles: dict[str, Profile] = {}
    for entry in entries:
        profile = profile_from_dict(entry, path)
        if profile.name in profiles:
            raise ConfigError(f"profile file {path} defines profile {profile.name!r} twice")
        profiles[profile.name] = profile
    return profiles


def _check_kind(key: str, value, kind: str) -> bool:
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if kind in ("name", "text"):
        return isinstance(value, str) and (kind == "text" or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value))
    if kind == "texts":
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
    if kind == "int":
        return is_int(value)
    if kind == "int or null":
        return value is None or is_int(value)
    if kind == "ints":
        return isinstance(value, list) and all(is_int(v) for v in value)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "pairs":
        return (isinstance(value, list) and bool(value) and all(
            isinstance(p, list) and len(p) == 3 and is_int(p[0]) and is_int(p[1])
            and isinstance(p[2], (int, float)) and not isinstance(p[2], bool) for p in value))
    raise AssertionError(kind)


def profile_from_dict(entry: dict, source: str | Path = "<dict>") -> Profile:
    """Build and check a Profile from JSON-like data; raise ConfigError naming `source` and the field."""
    from .models import GROUP_BASE_CHANNELS
    from .prune import kept_channels

    if not isinstance(entry, dict):
        raise ConfigError(f"profile file {source}: each profile must be a JSON object, got {entry!r}")
    where = f"profile {entry.get('name', '?')!r} in {source}"
    unknown = sorted(set(entry) - set(_PROFILE_FIELD_KINDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(_PROFILE_FIELD_KINDS)}")
    missing = [k for k in _REQUIRED_PROFILE_FIELDS if k not in entry]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}")
    for key, value in entry.items():
        kind = _PROFILE_FIELD_KINDS[key]
        if not _check_kind(key, value, kind):
            expected = {"name": "a name of letters, digits, '_', '.' or '-'",
                        "pairs": "a list of [teacher_width, student_width, pruning_ratio]"}.get(kind, kind)
            raise ConfigError(f"{where}: field {key!r} must be {expected}, got {value!r}")
    if entry["name"] in PROFILES:
        raise ConfigError(f"{where}: the name {entry['name']!r} belongs to a built-in profile; choose another")

    settings = dict(entry)
    settings.setdefault("description", f"custom profile from {source}")
    settings["datasets"] = tuple(settings["datasets"])
    settings["pairs"] = tuple(Pair(*p) for p in settings["pairs"])
    settings["milestones"] = tuple(settings.get("milestones") or _milestones(settings["epochs"]))
    settings.setdefault("train_subset", None)
    settings.setdefault("val_size", 5000)
    settings.setdefault("test_subset", None)
    if "seeds" in settings:
        if not settings["seeds"]:
            raise ConfigError(f"{where}: field 'seeds' must list at least one seed")
        settings["seeds"] = tuple(settings["seeds"])
    profile = Profile(**settings)

    for pair in profile.pairs:
        if not 0.0 < pair.pruning_ratio < 1.0:
            raise ConfigError(f"{where}: pair {pair.teacher_width} -> {pair.student_width} has pruning ratio "
                              f"{pair.pruning_ratio}; it must be in (0, 1)")
        for width in (pair.teacher_width, pair.student_width):
            if width < 1:
                raise ConfigError(f"{where}: invalid WRN width {width}: the widening factor must be >= 1")
        try:
            pruned_stream = [kept_channels(base * pair.teacher_width, pair.pruning_ratio)
                             for base in GROUP_BASE_CHANNELS]
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        student_stream = [base * pair.student_width for base in GROUP_BASE_CHANNELS]
        if pruned_stream != student_stream:
            raise ConfigError(f"{where}: pruning ratio {pair.pruning_ratio} turns width {pair.teacher_width} "
                              f"into {pruned_stream} channels per group, not the {student_stream} of width "
                              f"{pair.student_width}")
    try:
        plan_runs(profile)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return profile


@dataclass
class RunSpec:
    """One run of a profile: its id, template notebook, settings and prerequisite runs."""

    run_id: str
    notebook: str
    config: dict
    depends_on: tuple[str, ...] = ()

    @property
    def method(self) -> str:
        return self.config["method"]


def scratch_id(dataset: str, depth: int, width: int, seed: int) -> str:
    return f"{dataset}-scratch-wrn{depth}-{width}-s{seed}"


def plan_runs(profile: Profile | str) -> list[RunSpec]:
    """Return every run of `profile` in an order where teachers precede their students."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    common = {
        "profile": profile.name,
        "epochs": profile.epochs,
        "milestones": list(profile.milestones),
        "batch_size": profile.batch_size,
        "lr": profile.lr,
        "lr_gamma": profile.lr_gamma,
        "momentum": profile.momentum,
        "weight_decay": profile.weight_decay,
        "val_size": profile.val_size,
        "train_subset": profile.train_subset,
        "test_subset": profile.test_subset,
        "latency_repeats": profile.latency_repeats,
        "throughput_repeats": profile.throughput_repeats,
        "compile": profile.compile,
        "devices": profile.devices,
    }
    specs: list[RunSpec] = []
    d = profile.depth
    for dataset in profile.datasets:
        for seed in profile.seeds:
            for width in profile.widths():
                run_id = scratch_id(dataset, d, width, seed)
                cfg = runs.RunConfig(run_id=run_id, dataset=dataset, method="scratch", depth=d, width=width,
                                     seed=seed, **common)
                specs.append(RunSpec(run_id, "train", cfg.to_dict()))
            for pair in profile.pairs:
                teacher = scratch_id(dataset, d, pair.teacher_width, seed)
                kd_id = f"{dataset}-kd-wrn{d}-{pair.teacher_width}-to-{pair.student_width}-s{seed}"
                cfg = runs.RunConfig(run_id=kd_id, dataset=dataset, method="kd", depth=d,
                                     width=pair.student_width, seed=seed, teacher_run_id=teacher, **common)
                specs.append(RunSpec(kd_id, "distill", cfg.to_dict(), (teacher,)))
                for variant in profile.prune_variants:
                    if not variant.applies_to(dataset, pair):
                        continue
                    prune_id = prune_run_id(dataset, d, pair, variant, seed)
                    cfg = runs.RunConfig(run_id=prune_id, dataset=dataset, method="prune", depth=d,
                                         width=pair.student_width, seed=seed, teacher_run_id=teacher,
                                         pruning_ratio=pair.pruning_ratio,
                                         **{**common, **_prune_settings(profile, variant)})
                    specs.append(RunSpec(prune_id, "prune", cfg.to_dict(), (teacher,)))
    _check_plan(profile, specs)
    return specs


def prune_run_id(dataset: str, depth: int, pair: Pair, variant: PruneVariant, seed: int) -> str:
    """Return e.g. "cifar10-prune-wrn28-10-to-2-l1-oneshot-s0" or "...-l1-iter10x20-s0"."""
    return f"{dataset}-prune-wrn{depth}-{pair.teacher_width}-to-{pair.student_width}-{variant.tag}-s{seed}"


def _prune_settings(profile: Profile, variant: PruneVariant) -> dict:
    """Return the RunConfig fields a pruning variant sets: criterion, schedule, epochs and milestones."""
    if variant.epochs_per_round is None:
        epochs_per_round, milestones = profile.epochs, list(profile.milestones)
    else:
        epochs_per_round, milestones = variant.epochs_per_round, list(_milestones(variant.epochs_per_round))
    return {
        "criterion": variant.criterion,
        "schedule": variant.schedule,
        "rounds": variant.rounds,
        "epochs_per_round": epochs_per_round,
        "epochs": variant.rounds * epochs_per_round,
        "milestones": milestones,
        "use_kd": variant.use_kd,
    }


def _check_plan(profile: Profile, specs: list[RunSpec]) -> None:
    """Raise ConfigError for a profile whose runs are invalid, share an id, or lack canonical pruning."""
    if not any(v.canonical and v.student_widths is None and v.datasets is None for v in profile.prune_variants):
        raise ConfigError(f"profile {profile.name} has no canonical pruning variant (one-shot, l1, no KD, every "
                          "pair); the KD comparison needs it, so add PruneVariant() to prune_variants")
    seen: set[str] = set()
    for spec in specs:
        if spec.run_id in seen:
            raise ConfigError(f"profile {profile.name} plans run {spec.run_id} twice; give its pruning "
                              "variants different criteria, schedules or epochs")
        seen.add(spec.run_id)
        runs.RunConfig.from_dict(spec.config)


def find_run(profile: Profile | str, run_id: str) -> RunSpec:
    """Return the run `run_id` of `profile`, or raise ConfigError listing the valid ids."""
    specs = plan_runs(profile)
    for spec in specs:
        if spec.run_id == run_id:
            return spec
    name = profile if isinstance(profile, str) else profile.name
    raise ConfigError(f"unknown run id {run_id!r} in profile {name}. Valid run ids: "
                      + ", ".join(s.run_id for s in specs))


# --------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------

def notebook_path(project: Path, name: str) -> Path:
    path = project / "notebooks" / f"{name}.ipynb"
    if not path.is_file():
        raise ConfigError(f"template notebook {path} not found; run wrnlib from a checkout of wrn-compress "
                          "or set WRNLIB_PROJECT to one")
    return path


def executed_notebook(root: Path, spec: RunSpec) -> Path:
    """Return where the executed notebook of a finished run lives."""
    return runs.run_dir(root, spec.config["profile"], spec.run_id) / f"{spec.run_id}.ipynb"


def spec_state(root: Path, spec: RunSpec) -> str:
    """Return done (metrics and executed notebook present), partial or missing."""
    state = runs.run_state(root, spec.config["profile"], spec.run_id)
    if state == "done" and not executed_notebook(root, spec).is_file():
        return "partial"
    return state


WRNLIB_ERROR_NAMES = ("WrnlibError", "DataError", "ConfigError", "RunError", "StoreError")


def execute_run_notebook(spec: RunSpec, runs_dir: str | Path | None = None, data_root: str | Path | None = None,
                         threads: int | None = None, project: Path | None = None,
                         stop: threading.Event | None = None, gpus: list[int] | None = None) -> Path:
    """Execute one run's template notebook with papermill; return the executed notebook's path.

    The caller holds the run's run.lock meanwhile: while another process holds
    it, this waits (logging that process's pid and host) and then skips the run
    if that process finished it. Setting `stop` ends the wait with
    KeyboardInterrupt. The notebook is written under a temporary name and
    renamed when it has run to the end, so a run folder contains an executed
    notebook only for a run that finished. Raises RunError naming the run, the
    notebook and the error. `gpus` lists the CUDA devices the run may use
    (None: the first one, or the CPU).
    """
    project = project or runs.project_root()
    root = runs.runs_root(runs_dir).resolve()
    template = notebook_path(project, spec.notebook)
    final = executed_notebook(root, spec)
    runs.make_dirs(final.parent)
    with runs.RunLock(final.parent / runs.RUN_LOCK, f"run {spec.run_id}", stop=stop):
        if spec_state(root, spec) == "done":
            log.info("run %s was finished by another process meanwhile; skipped", spec.run_id)
            return final
        _execute_locked(spec, root, template, final, data_root, threads, gpus)
    return final


def _execute_locked(spec: RunSpec, root: Path, template: Path, final: Path, data_root: str | Path | None,
                    threads: int | None, gpus: list[int] | None = None) -> None:
    import papermill

    partial = final.with_name(f"{spec.run_id}.partial.ipynb")
    parameters = {
        "run_id": spec.run_id,
        "profile": spec.config["profile"],
        "runs_dir": str(root),
        "data_root": str(Path(data_root).resolve()) if data_root else None,
        "threads": int(threads or 0),
        "gpus": list(gpus) if gpus else None,
        "config": spec.config,
    }
    try:
        papermill.execute_notebook(
            str(template), str(partial), parameters=parameters, kernel_name="python3",
            extra_arguments=KERNEL_ARGUMENTS, progress_bar=False, cwd=str(final.parent),
        )
    except papermill.PapermillExecutionError as exc:
        if exc.ename in WRNLIB_ERROR_NAMES:
            # The kernel raised one of wrnlib's own errors, whose message already states what to do.
            message = exc.evalue if spec.run_id in exc.evalue else f"run {spec.run_id}: {exc.evalue}"
            raise RunError(f"{message} (notebook with the full output: {partial})") from None
        raise RunError(f"run {spec.run_id} failed in notebook {partial}: {exc.ename}: {exc.evalue}") from None
    except OSError as exc:
        if exc.errno in runs.STORAGE_ERRNOS:
            raise runs.store_error(exc, partial) from exc
        raise RunError(f"run {spec.run_id} failed in notebook {partial}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # kernel start failures, dead kernels, timeouts
        raise RunError(f"run {spec.run_id} failed in notebook {partial}: {type(exc).__name__}: {exc}") from None
    try:
        _retitle(partial, spec.run_id)
        os.replace(partial, final)
    except OSError as exc:
        raise runs.store_error(exc, final) from exc


def _retitle(path: Path, run_id: str) -> None:
    """Make the run id the page title; the template's generic heading becomes a subtitle.

    Every run of a template shares its heading, and the book's table of
    contents would otherwise list identical titles.
    """
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            heading, _, rest = cell.source.partition("\n")
            cell.source = f"# {run_id}\n\n**{heading[2:].strip()}**\n{rest}"
            break
    nbformat.write(notebook, path)


class _EpochBars:
    """tqdm bars that follow the history.csv of each running run (the kernels run elsewhere)."""

    def __init__(self, root: Path, enabled: bool) -> None:
        self.root = root
        self.enabled = enabled
        self.bars: dict[str, object] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        if enabled:
            self.thread.start()

    def add(self, spec: RunSpec, position: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        with self.lock:
            self.bars[spec.run_id] = (spec, tqdm(total=spec.config["epochs"], desc=f"  {spec.run_id}",
                                                 unit="epoch", position=position, leave=False))

    def remove(self, run_id: str) -> None:
        with self.lock:
            entry = self.bars.pop(run_id, None)
        if entry:
            entry[1].close()

    def _poll(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                for run_id, (spec, bar) in self.bars.items():
                    done = len(runs.read_history(runs.run_dir(self.root, spec.config["profile"], run_id)))
                    if done != bar.n:
                        bar.n = done
                        bar.refresh()

    def close(self) -> None:
        self.stop.set()
        for run_id in list(self.bars):
            self.remove(run_id)


def _child_kernels() -> list[int]:
    """Return the pids of the Jupyter kernels that this process started.

    Kernels run in sessions of their own, so a Ctrl-C in the terminal does not
    reach them. They are found as child processes in /proc.
    """
    # NOTE: without /proc (macOS) no kernel is found, and an interrupted grid waits for its running runs.
    me = os.getpid()
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
        except OSError:
            continue
        # /proc/PID/stat is "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and b"ipykernel" in cmdline:
            pids.append(int(entry))
    return pids


def _interrupt_kernels(futures: list[Future]) -> None:
    """Interrupt the kernels of running runs, as Jupyter's "interrupt kernel" does, until their threads end.

    SIGINT raises KeyboardInterrupt in the cell a kernel is executing, so each
    run stops within one batch and keeps its last checkpoint. A kernel between
    two cells ignores SIGINT, so it is sent again every second. A second Ctrl-C
    kills the kernels.
    """
    import signal

    try:
        while not all(f.done() for f in futures):
            for pid in _child_kernels():
                os.kill(pid, signal.SIGINT)
            wait(futures, timeout=1.0)
    except KeyboardInterrupt:
        for pid in _child_kernels():
            os.kill(pid, signal.SIGKILL)
        wait(futures)


def execute_grid(profile: Profile | str, runs_dir: str | Path | None = None, data_root: str | Path | None = None,
                 jobs: int = 1, progress: bool = True, project: Path | None = None,
                 only: list[str] | None = None) -> dict:
    """Execute every run of `profile` that is not done, teachers first; return counts by outcome.

    With `jobs` > 1 independent runs execute side by side, each with
    cpu_count // jobs threads. The first failure stops new runs from starting,
    lets running ones finish, and raises RunError; finished runs stay done.
    Ctrl-C interrupts the kernels of running runs and re-raises
    KeyboardInterrupt once their threads have ended.
    """
    from tqdm import tqdm

    profile = get_profile(profile) if isinstance(profile, str) else profile
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    root = runs.runs_root(runs_dir).resolve()
    specs = plan_runs(profile)
    if only:
        wanted = set(only)
        specs = [s for s in specs if s.run_id in wanted]
    todo = [s for s in specs if spec_state(root, s) != "done"]
    skipped = len(specs) - len(todo)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # Each running run gets its own CUDA devices (`devices` of them, 1 by default) from this pool.
    free_gpus = list(range(_cuda_device_count()))
    for spec in todo:
        if free_gpus and spec.config.get("devices", 1) > len(free_gpus):
            raise ConfigError(f"run {spec.run_id} needs {spec.config['devices']} GPUs but this machine has "
                              f"{len(free_gpus)}; lower devices in the profile")
    assigned: dict[str, list[int]] = {}

    finished: set[str] = {s.run_id for s in specs if s.run_id not in {t.run_id for t in todo}}
    pending = list(todo)
    running: dict[Future, RunSpec] = {}
    errors: list[str] = []
    bar = tqdm(total=len(specs), initial=skipped, desc=f"{profile.name} runs", unit="run", disable=not progress,
               position=0)
    epoch_bars = _EpochBars(root, progress)
    started_at = time.perf_counter()
    free_positions = list(range(1, jobs + 1))
    positions: dict[str, int] = {}
    stop = threading.Event()
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                while pending or running:
                    if not errors:
                        for spec in list(pending):
                            if len(running) >= jobs:
                                break
                            need = spec.config.get("devices", 1) if _cuda_device_count() else 0
                            if all(dep in finished for dep in spec.depends_on) and need <= len(free_gpus):
                                pending.remove(spec)
                                positions[spec.run_id] = free_positions.pop(0)
                                assigned[spec.run_id] = [free_gpus.pop(0) for _ in range(need)]
                                epoch_bars.add(spec, positions[spec.run_id])
                                future = pool.submit(execute_run_notebook, spec, root, data_root, threads,
                                                     project, stop, assigned[spec.run_id] or None)
                                running[future] = spec
                    if not running:
                        if pending and not errors:
                            blocked = ", ".join(s.run_id for s in pending)
                            errors.append(f"runs {blocked} wait for teachers outside the selection")
                        break
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in done:
                        spec = running.pop(future)
                        epoch_bars.remove(spec.run_id)
                        free_positions.append(positions.pop(spec.run_id))
                        free_positions.sort()
                        free_gpus = sorted(free_gpus + assigned.pop(spec.run_id))
                        try:
                            future.result()
                        except RunError as exc:
                            errors.append(str(exc))
                            continue
                        finished.add(spec.run_id)
                        bar.update()
            except KeyboardInterrupt:
                # Without this the pool would wait for every running run to end.
                stop.set()
                _interrupt_kernels(list(running))
                raise
    finally:
        epoch_bars.close()
        bar.close()
    if errors:
        done_count = sum(1 for s in specs if spec_state(root, s) == "done")
        raise RunError("; ".join(errors) + f". {done_count} of {len(specs)} runs of profile {profile.name} "
                       "are done and kept; rerun the same command to continue.")
    return {"profile": profile.name, "runs": len(specs), "skipped": skipped, "executed": len(todo),
            "seconds": time.perf_counter() - started_at}


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def profile_as_dict(profile: Profile) -> dict:
    d = asdict(profile)
    d["pairs"] = [asdict(p) for p in profile.pairs]
    return d
