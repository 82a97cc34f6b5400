"""Profiles, the run list of a profile, and its execution through papermill.

A profile is one named size of the whole study. Every profile has the same
shape: for each data set, scratch runs of every teacher and student width,
then for each (teacher, student) pair a KD run and a one-shot node-pruning run
whose pruning ratio turns the teacher's width into the student's. Runs execute
in dependency order (a teacher before its students), each as its template
notebook through papermill.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import runs
from .errors import ConfigError, RunError

__all__ = ["PROFILES", "Profile", "RunSpec", "execute_grid", "execute_run_notebook", "get_profile", "plan_runs"]

NOTEBOOK_FOR_METHOD = {"scratch": "train", "kd": "distill", "prune": "prune"}

# Kernel command-line options: keep the kernel's own start-up warnings (it
# listens on loopback TCP) out of the grid's progress output.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


@dataclass(frozen=True)
class Pair:
    """A compression target: teacher width -> student width, and the pruning ratio that maps one to the other."""

    teacher_width: int
    student_width: int
    pruning_ratio: float


# The study's three targets: 28-10 -> 28-2 (ratio 0.8), 28-4 -> 28-2 and 28-2 -> 28-1 (ratio 0.5).
STUDY_PAIRS = (Pair(10, 2, 0.8), Pair(4, 2, 0.5), Pair(2, 1, 0.5))


@dataclass(frozen=True)
class Profile:
    """Settings of one profile; every number a run uses comes from here."""

    name: str
    description: str
    datasets: tuple[str, ...]
    depth: int
    pairs: tuple[Pair, ...]
    epochs: int                      # scratch and KD training, and pruning fine-tuning
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
    latency_repeats: int = 30
    # torch.compile for training. Off in every profile: on a 2-core CPU it was no
    # faster than eager mode and took 20-45 s to compile (BENCHMARKS.md).
    # NOTE: not yet measured on a GPU; WITH_COMPILE=1 benchmarks/gpu_check.sh does.
    compile: bool = False
    miniature: bool = True
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
            ("epochs (scratch, KD, pruning fine-tune)", str(self.epochs)),
            ("learning rate", f"{self.lr}, x{self.lr_gamma} at epochs {', '.join(map(str, self.milestones))}"),
            ("optimizer", f"SGD, Nesterov momentum {self.momentum}, weight decay {self.weight_decay}"),
            ("batch size", str(self.batch_size)),
            ("training images", subset),
            ("validation images (from the training set)", val),
            ("test images", test),
            ("seeds", ", ".join(map(str, self.seeds))),
            ("KD", "T = 4, ce_weight = 0.1, kd_weight = 0.9"),
            ("pruning", "one-shot, L1 criterion"),
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
        train_subset=3000,
        val_size=500,
        test_subset=2000,
        latency_repeats=20,
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
        miniature=False,
    ),
}

DEFAULT_PROFILE = "quick"


def get_profile(name: str) -> Profile:
    """Return the named profile or raise ConfigError listing the valid names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}") from None


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
        "compile": profile.compile,
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
                prune_id = (f"{dataset}-prune-wrn{d}-{pair.teacher_width}-to-{pair.student_width}"
                            f"-l1-oneshot-s{seed}")
                cfg = runs.RunConfig(run_id=prune_id, dataset=dataset, method="prune", depth=d,
                                     width=pair.student_width, seed=seed, teacher_run_id=teacher,
                                     pruning_ratio=pair.pruning_ratio, criterion="l1", schedule="one-shot",
                                     **common)
                specs.append(RunSpec(prune_id, "prune", cfg.to_dict(), (teacher,)))
    for spec in specs:
        runs.RunConfig.from_dict(spec.config)
    return specs


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


def execute_run_notebook(spec: RunSpec, runs_dir: str | Path | None = None, data_root: str | Path | None = None,
                         threads: int | None = None, project: Path | None = None) -> Path:
    """Execute one run's template notebook with papermill; return the executed notebook's path.

    The notebook is written under a temporary name and renamed when it has run
    to the end, so a run folder contains an executed notebook only for a run
    that finished. Raises RunError naming the run, the notebook and the error.
    """
    import papermill

    project = project or runs.project_root()
    root = runs.runs_root(runs_dir).resolve()
    template = notebook_path(project, spec.notebook)
    final = executed_notebook(root, spec)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f"{spec.run_id}.partial.ipynb")
    parameters = {
        "run_id": spec.run_id,
        "profile": spec.config["profile"],
        "runs_dir": str(root),
        "data_root": str(Path(data_root).resolve()) if data_root else None,
        "threads": int(threads or 0),
        "config": spec.config,
    }
    try:
        papermill.execute_notebook(
            str(template), str(partial), parameters=parameters, kernel_name="python3",
            extra_arguments=KERNEL_ARGUMENTS, progress_bar=False, cwd=str(final.parent),
        )
    except papermill.PapermillExecutionError as exc:
        raise RunError(f"run {spec.run_id} failed in notebook {partial}: {exc.ename}: {exc.evalue}") from None
    except Exception as exc:  # kernel start failures, dead kernels, timeouts
        raise RunError(f"run {spec.run_id} failed in notebook {partial}: {type(exc).__name__}: {exc}") from None
    _retitle(partial, spec.run_id)
    os.replace(partial, final)
    return final


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


def execute_grid(profile: Profile | str, runs_dir: str | Path | None = None, data_root: str | Path | None = None,
                 jobs: int = 1, progress: bool = True, project: Path | None = None,
                 only: list[str] | None = None) -> dict:
    """Execute every run of `profile` that is not done, teachers first; return counts by outcome.

    With `jobs` > 1 independent runs execute side by side, each with
    cpu_count // jobs threads. The first failure stops new runs from starting,
    lets running ones finish, and raises RunError; finished runs stay done.
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
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            if not errors:
                for spec in list(pending):
                    if len(running) >= jobs:
                        break
                    if all(dep in finished for dep in spec.depends_on):
                        pending.remove(spec)
                        positions[spec.run_id] = free_positions.pop(0)
                        epoch_bars.add(spec, positions[spec.run_id])
                        future = pool.submit(execute_run_notebook, spec, root, data_root, threads, project)
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
                try:
                    future.result()
                except RunError as exc:
                    errors.append(str(exc))
                    continue
                finished.add(spec.run_id)
                bar.update()
    epoch_bars.close()
    bar.close()
    if errors:
        done_count = sum(1 for s in specs if spec_state(root, s) == "done")
        raise RunError("; ".join(errors) + f". {done_count} of {len(specs)} runs of profile {profile.name} "
                       "are done and kept; rerun the same command to continue.")
    return {"profile": profile.name, "runs": len(specs), "skipped": skipped, "executed": len(todo),
            "seconds": time.perf_counter() - started_at}


def profile_as_dict(profile: Profile) -> dict:
    d = asdict(profile)
    d["pairs"] = [asdict(p) for p in profile.pairs]
    return d
