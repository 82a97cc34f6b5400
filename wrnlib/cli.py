"""The `wrnlib` command: reproduce, grid, run, book, status.

User errors (bad paths, unknown names, failed runs, a full or read-only run
store) print one message and exit with status 1; `--debug` shows the traceback
instead. Ctrl-C exits with 130 and leaves every run resumable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .errors import ConfigError, WrnlibError

__all__ = ["main"]


def _add_common(parser: argparse.ArgumentParser, data: bool = True) -> None:
    from .grid import DEFAULT_PROFILE, PROFILES

    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        help=f"grid size: {', '.join(PROFILES)}, or a profile defined in the JSON file named by "
                             f"$WRNLIB_PROFILES (default: {DEFAULT_PROFILE})")
    parser.add_argument("--runs-dir", default=None,
                        help="run store root (default: $WRNLIB_RUNS, else runs/ in the project)")
    if data:
        parser.add_argument("--data-root", default=None,
                            help="folder holding cifar10/ or cifar10.tar.gz (likewise cifar100), or "
                                 "torchvision's files (default: $WRNLIB_DATA_ROOT, else a download into "
                                 "data/ in the cache folder: $WRNLIB_CACHE, else ~/.cache/wrnlib)")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs executed side by side; each gets cpu_count/jobs threads and, on a machine "
                             "with GPUs, GPUs of its own (default: 1)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="execute the runs as Ray tasks: alone, on a Ray instance started on this machine; "
                             "with ADDRESS (e.g. auto or HOST:6379), on that cluster. Needs wrnlib[cluster] and "
                             "a run store every node sees at the same path")
    parser.add_argument("--cpus-per-run", type=int, default=1,
                        help="with --ray: CPUs each run asks Ray for, and its torch threads (default: 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wrnlib",
        description="Compress Wide-ResNets on CIFAR by knowledge distillation and node pruning, "
                    "and publish the results as a Jupyter Book.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("reproduce", help="execute every missing run of a profile, then build the book")
    _add_common(p)
    _add_jobs(p)
    p.add_argument("--output", default=None, help="folder that receives _build/html (default: the project)")

    p = sub.add_parser("grid", help="execute every missing run of a profile (teachers first)")
    _add_common(p)
    _add_jobs(p)

    p = sub.add_parser("run", help="execute one run of a profile through its notebook, as the grid would")
    p.add_argument("run_id", help="run id, as listed by `wrnlib status`")
    _add_common(p)

    p = sub.add_parser("book", help="build the book of a profile from the run store")
    _add_common(p, data=False)
    p.add_argument("--output", default=None, help="folder that receives _build/html (default: the project)")

    p = sub.add_parser("status", help="list the runs of a profile with their state and results")
    _add_common(p, data=False)
    return parser


def _data_root(args) -> str | None:
    root = args.data_root or os.environ.get("WRNLIB_DATA_ROOT")
    if root and not Path(root).expanduser().is_dir():
        raise WrnlibError(f"data root {root} does not exist or is not a folder. Pass an existing folder with "
                          "--data-root (or WRNLIB_DATA_ROOT), e.g. one holding cifar10.tar.gz.")
    return root


def _runs_root(args) -> Path:
    """Return the run store root, rejecting a path that is a file."""
    from .runs import runs_root

    root = runs_root(args.runs_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"run store {root} is a file, not a folder. Pass a folder with --runs-dir "
                          "(or WRNLIB_RUNS); it is created if missing.")
    return root


def _check_book_output(args) -> None:
    """Reject a book output folder that overlaps the run store.

    A build deletes and rewrites `<output>/_build`, so a run store inside it
    would be deleted, and book files inside the run store would mix with runs.
    """
    from .runs import project_root

    root = _runs_root(args).resolve()
    output = Path(args.output).expanduser().resolve() if args.output else project_root()
    build = output / "_build"
    if root == build or build in root.parents:
        raise ConfigError(f"the run store {root} lies inside {build}, which every book build deletes. "
                          "Pass another --output or --runs-dir.")
    if output == root or root in output.parents:
        raise ConfigError(f"the book output folder {output} is inside the run store {root}. Pass an --output "
                          "outside it.")


def cmd_grid(args) -> None:
    from .grid import execute_grid

    if args.ray:
        from .cluster import execute_grid_ray

        if args.jobs != 1:
            raise WrnlibError("--jobs does not apply with --ray: Ray runs as many runs at once as the cluster's "
                              "CPUs and GPUs allow; use --cpus-per-run to size each run")
        address = None if args.ray == "local" else args.ray
        summary = execute_grid_ray(args.profile, _runs_root(args), _data_root(args), address=address,
                                   cpus_per_run=args.cpus_per_run)
        hosts = sorted({p["host"] for p in summary["placed"].values()})
        where = f" on {', '.join(hosts)}" if hosts else ""
    else:
        summary = execute_grid(args.profile, _runs_root(args), _data_root(args), jobs=args.jobs)
        where = ""
    print(f"profile {summary['profile']}: {summary['executed']} run(s) executed{where}, {summary['skipped']} "
          f"already done, {summary['seconds']:.0f} s")


def cmd_book(args) -> None:
    from .book import build_book

    _check_book_output(args)
    root = _runs_root(args)
    _warn_unfinished_runs(args.profile, root)
    started = time.perf_counter()
    index = build_book(args.profile, root, args.output)
    print(f"book of profile {args.profile} built in {time.perf_counter() - started:.0f} s: {index}")


def _warn_unfinished_runs(profile: str, root: Path) -> None:
    """Print a warning to stderr when some of the profile's runs are not done in the run store `root`.

    The book still builds (its tables show only finished runs), but a book of zero runs usually
    means a wrong --runs-dir or --profile.
    """
    from .grid import plan_runs, spec_state

    specs = plan_runs(profile)
    done = sum(1 for spec in specs if spec_state(root, spec) == "done")
    if done < len(specs):
        print(f"warning: {done} of {len(specs)} runs of profile {profile} are done in run store {root}; "
              f"the book shows only those. Run `wrnlib grid --profile {profile}` (with the same --runs-dir) "
              "to make the rest.", file=sys.stderr)


def cmd_reproduce(args) -> None:
    _check_book_output(args)
    started = time.perf_counter()
    cmd_grid(args)
    cmd_book(args)
    print(f"reproduce finished in {time.perf_counter() - started:.0f} s")


def cmd_run(args) -> None:
    from . import runs
    from .grid import execute_run_notebook, find_run, spec_state

    spec = find_run(args.profile, args.run_id)
    root = _runs_root(args)
    data_root = _data_root(args)
    if spec_state(root, spec) == "done":
        print(f"run {spec.run_id} is already done ({runs.run_dir(root, args.profile, spec.run_id)}); "
              "delete that folder to run it again")
        return
    for dep in spec.depends_on:
        dep_spec = find_run(args.profile, dep)
        if spec_state(root, dep_spec) != "done":
            raise WrnlibError(f"run {spec.run_id} needs its teacher run {dep}, which is not done. "
                              f"Run it first: wrnlib run {dep} --profile {args.profile}")
    started = time.perf_counter()
    path = execute_run_notebook(spec, root, data_root)
    metrics = runs.read_metrics(path.parent)
    print(f"run {spec.run_id} done in {time.perf_counter() - started:.0f} s: test accuracy "
          f"{metrics['test_acc']:.2f} %, notebook {path}")


def cmd_status(args) -> None:
    from . import runs
    from .grid import get_profile, plan_runs, spec_state

    profile = get_profile(args.profile)
    root = _runs_root(args)
    specs = plan_runs(profile)
    width = max(len(s.run_id) for s in specs)
    print(f"profile {profile.name}: {profile.description}")
    print(f"run store: {root / profile.name}")
    print(f"{'run':<{width}}  {'state':<8}  {'test acc':>8}  {'time (s)':>9}  where (host, device)")
    counts = {"done": 0, "partial": 0, "missing": 0}
    for spec in specs:
        state = spec_state(root, spec)
        counts[state] += 1
        metrics = runs.read_metrics(runs.run_dir(root, profile.name, spec.run_id)) or {}
        acc = f"{metrics['test_acc']:.2f}" if "test_acc" in metrics else "-"
        seconds = f"{metrics['train_seconds']:.0f}" if "train_seconds" in metrics else "-"
        if state == "partial":
            epochs = len(runs.read_history(runs.run_dir(root, profile.name, spec.run_id)))
            seconds = f"{epochs}/{spec.config['epochs']} ep"
        where = f"{metrics['host']}, {metrics['device']}" if "host" in metrics else "-"
        if metrics.get("devices", 1) > 1:
            where += f" x{metrics['devices']}"
        print(f"{spec.run_id:<{width}}  {state:<8}  {acc:>8}  {seconds:>9}  {where}")
    print(f"{counts['done']} done, {counts['partial']} partial, {counts['missing']} missing")


COMMANDS = {"reproduce": cmd_reproduce, "grid": cmd_grid, "run": cmd_run, "book": cmd_book, "status": cmd_status}


class _StderrHandler(logging.StreamHandler):
    """A log handler that writes to whatever sys.stderr is when a record is emitted."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging() -> None:
    """Show wrnlib's log messages (lock waits, skipped runs) on stderr."""
    logger = logging.getLogger("wrnlib")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("wrnlib: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    from .runs import STORAGE_ERRNOS, store_error

    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        COMMANDS[args.command](args)
    except WrnlibError as exc:
        if args.debug:
            raise
        print(f"wrnlib {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A full disk or a read-only folder met outside the run store's own writes (papermill, the book).
        if args.debug or exc.errno not in STORAGE_ERRNOS:
            raise
        print(f"wrnlib {args.command}: error: {store_error(exc, exc.filename or 'a file')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"\nwrnlib {args.command}: interrupted; finished epochs are checkpointed, rerun the same "
              "command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
