"""The grid on a Ray cluster: one Ray task per run, teachers before their students.

Each run becomes a Ray task that executes the run's notebook with papermill,
exactly as `wrnlib grid` does on one machine. A student's task takes its
teacher's task as an argument, so Ray starts it only after the teacher has
finished. A task asks for `devices` GPUs when the cluster has GPUs (Ray then
sets CUDA_VISIBLE_DEVICES for it) and for `cpus_per_run` CPUs.

Requirements: every node has wrnlib installed (`pip install wrnlib[cluster]`)
and sees the run store, the data root and the project checkout at the same
paths, e.g. on a shared NFS mount, because a student's node reads the
teacher's model.pt that another node wrote. Run locks rely on fcntl locks
working across the nodes' mounts; where they do not, Ray's dependency order
still keeps a run from being executed twice by one grid.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict
from pathlib import Path

from . import runs
from .errors import ConfigError, RunError
from .grid import RunSpec, execute_run_notebook, get_profile, plan_runs, spec_state

__all__ = ["execute_grid_ray"]


def _ray():
    # Ray reports anonymous usage statistics over the network unless told not to.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray cluster mode needs Ray: pip install 'wrnlib[cluster]' (or pip install ray)") \
            from None
    return ray


def _run_on_node(spec_fields: dict, root: str, data_root: str | None, threads: int, project: str | None,
                 *teachers: dict) -> dict:
    """Execute one run's notebook on this node; return where it ran."""
    ray = _ray()
    spec = RunSpec(**spec_fields)
    gpu_ids = [int(g) for g in ray.get_gpu_ids()]
    # Ray has already narrowed CUDA_VISIBLE_DEVICES to this task's GPUs, so they count from 0.
    gpus = list(range(len(gpu_ids))) or None
    execute_run_notebook(spec, root, data_root, threads, Path(project) if project else None, gpus=gpus)
    return {"run_id": spec.run_id, "host": socket.gethostname(), "gpus": gpu_ids}


def execute_grid_ray(profile, runs_dir: str | Path | None = None, data_root: str | Path | None = None,
                     address: str | None = None, cpus_per_run: int = 1, progress: bool = True,
                     project: Path | None = None, init_options: dict | None = None) -> dict:
    """Execute every run of `profile` that is not done as Ray tasks; return counts and where runs ran.

    `address` is a running cluster's address ("auto" joins the local node's
    cluster); None starts a Ray instance on this machine, unless one is already
    initialised in this process. The first failed run cancels the runs not yet
    started and raises RunError; finished runs stay done.
    """
    from tqdm import tqdm

    ray = _ray()
    profile = get_profile(profile) if isinstance(profile, str) else profile
    if cpus_per_run < 1:
        raise ConfigError(f"--cpus-per-run must be >= 1, got {cpus_per_run}")
    root = runs.runs_root(runs_dir).resolve()
    project = (project or runs.project_root()).resolve()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **(init_options or {}))
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0

    specs = plan_runs(profile)
    todo = [s for s in specs if spec_state(root, s) != "done"]
    task = ray.remote(_run_on_node)
    refs: dict[str, object] = {}
    for spec in todo:
        teachers = [refs[dep] for dep in spec.depends_on if dep in refs]
        options = {"num_cpus": cpus_per_run, "num_gpus": spec.config.get("devices", 1) if has_gpus else 0,
                   "max_retries": 0}
        refs[spec.run_id] = task.options(**options).remote(
            asdict(spec), str(root), str(Path(data_root).resolve()) if data_root else None, cpus_per_run,
            str(project), *teachers)

    started = time.perf_counter()
    placed: dict[str, dict] = {}
    waiting = {ref: run_id for run_id, ref in refs.items()}
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc=f"{profile.name} runs (Ray)", unit="run",
               disable=not progress)
    try:
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            run_id = waiting.pop(ready[0])
            try:
                placed[run_id] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                for ref in waiting:
                    ray.cancel(ref, force=True)
                cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
                raise RunError(f"run {run_id} failed on the Ray cluster: {cause}. Finished runs are kept; "
                               "rerun the same command to continue.") from None
            bar.update()
    finally:
        bar.close()
    return {"profile": profile.name, "runs": len(specs), "skipped": len(specs) - len(todo),
            "executed": len(todo), "seconds": time.perf_counter() - started, "placed": placed}
