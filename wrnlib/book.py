"""Assemble and build the Jupyter Book of one profile.

The book's sources (`_config.yml`, `_toc.yml`, `book/*.md`) stay clean in the
project. A build copies them into a staging folder and adds the executed
notebook of every finished run (`book/runs/`). It then executes
`notebooks/summary.ipynb` with papermill into `book/summary.ipynb`, which
writes the figures to `book/figures/` and glues every number the chapters
quote. Last it runs `jupyter-book build --all -W -n --keep-going`, so a missing
glue key or a broken reference fails the build. Jupyter Book never executes
notebooks itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import runs
from .errors import ConfigError, RunError
from .grid import KERNEL_ARGUMENTS, executed_notebook, get_profile, notebook_path, plan_runs, spec_state

__all__ = ["build_book", "stage_book"]

BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")


def stage_book(profile: str, runs_dir: str | Path | None = None, stage: Path | None = None,
               project: Path | None = None) -> Path:
    """Copy the book sources and the profile's executed notebooks into `stage`; execute the summary."""
    import papermill

    get_profile(profile)
    project = project or runs.project_root()
    for name in BOOK_SOURCES:
        if not (project / name).exists():
            raise ConfigError(f"book source {project / name} not found; run wrnlib from a checkout of "
                              "wrn-compress or set WRNLIB_PROJECT to one")
    root = runs.runs_root(runs_dir).resolve()
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    shutil.copy2(project / "_config.yml", stage / "_config.yml")
    shutil.copy2(project / "_toc.yml", stage / "_toc.yml")
    shutil.copytree(project / "book", stage / "book",
                    ignore=shutil.ignore_patterns("runs", "figures", "summary.ipynb", "_build"))

    run_pages = stage / "book" / "runs"
    run_pages.mkdir()
    copied = 0
    for spec in plan_runs(profile):
        if spec_state(root, spec) == "done":
            shutil.copy2(executed_notebook(root, spec), run_pages / f"{spec.run_id}.ipynb")
            copied += 1
    if copied == 0:
        (run_pages / "no-runs.md").write_text(
            "# 실행된 run 없음\n\n이 profile에는 아직 끝난 run이 없다. `wrnlib grid --profile "
            f"{profile}`로 run을 실행한 뒤 책을 다시 만든다.\n", encoding="utf-8")

    book_dir = stage / "book"
    try:
        papermill.execute_notebook(
            str(notebook_path(project, "summary")), str(book_dir / "summary.ipynb"),
            parameters={"profile": profile, "runs_dir": str(root), "figures_dir": str(book_dir / "figures")},
            kernel_name="python3", extra_arguments=KERNEL_ARGUMENTS, progress_bar=False,
            cwd=str(book_dir),
        )
    except papermill.PapermillExecutionError as exc:
        raise RunError(f"the summary notebook failed ({book_dir / 'summary.ipynb'}): "
                       f"{exc.ename}: {exc.evalue}") from None
    return stage


def build_book(profile: str, runs_dir: str | Path | None = None, output: str | Path | None = None,
               project: Path | None = None) -> Path:
    """Stage and build the book of `profile`; return the path of its index.html.

    The HTML goes to `<output>/_build/html` (output defaults to the project
    folder). Raises RunError with Sphinx's warnings when the build fails.
    """
    project = project or runs.project_root()
    output = Path(output).resolve() if output else project
    build_root = output / "_build"
    stage = stage_book(profile, runs_dir, build_root / "source", project)
    for stale in (build_root / "html", build_root / ".doctrees", build_root / "jupyter_execute"):
        if stale.exists():
            shutil.rmtree(stale)
    # The same interpreter as wrnlib, so the build imports the same packages (no PATH lookup).
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(stage),
               "--path-output", str(output), "--all", "-W", "-n", "--keep-going"]
    proc = subprocess.run(command, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    (build_root / "book-build.log").write_text(log, encoding="utf-8")
    index = build_root / "html" / "index.html"
    if proc.returncode != 0 or not index.is_file():
        plain = re.sub(r"\x1b\[[0-9;]*m", "", log)  # Sphinx colours its warnings
        warnings = [line for line in plain.splitlines() if "WARNING" in line or "ERROR" in line]
        detail = "\n".join(warnings[-20:]) or log[-3000:]
        raise RunError(f"the Jupyter Book build failed (exit {proc.returncode}); full log in "
                       f"{build_root / 'book-build.log'}:\n{detail}")
    return index
