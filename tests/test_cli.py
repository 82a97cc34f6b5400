import errno
import json
import os
import subprocess
import sys

import pytest

from wrnlib.cli import main


def wrnlib(*args, env=None):
    return subprocess.run([sys.executable, "-m", "wrnlib.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_status_lists_every_run(tmp_path):
    proc = wrnlib("status", "--profile", "smoke", "--runs-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "cifar10-scratch-wrn10-2-s0" in proc.stdout
    assert "cifar100-prune-wrn10-2-to-1-l1-oneshot-s0" in proc.stdout
    assert "cifar10-prune-wrn10-2-to-1-l1-iter2x1-s0" in proc.stdout
    assert "0 done, 0 partial, 10 missing" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["status", "--profile", "huge"], "unknown profile 'huge': choose one of smoke, quick, paper"),
    (["run", "nope", "--profile", "smoke"], "unknown run id 'nope' in profile smoke"),
    (["grid", "--profile", "smoke", "--data-root", "/nonexistent/cifar"], "data root /nonexistent/cifar does not exist"),
    (["grid", "--profile", "smoke", "--jobs", "0"], "--jobs must be >= 1, got 0"),
])
def test_user_errors_exit_1_without_traceback(tmp_path, args, message):
    proc = wrnlib(*args, "--runs-dir", str(tmp_path))
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_student_before_teacher_names_the_command(tmp_path, data_root):
    proc = wrnlib("run", "cifar10-kd-wrn10-2-to-1-s0", "--profile", "smoke", "--runs-dir", str(tmp_path),
                  "--data-root", str(data_root))
    assert proc.returncode == 1
    assert "needs its teacher run cifar10-scratch-wrn10-2-s0" in proc.stderr
    assert "wrnlib run cifar10-scratch-wrn10-2-s0 --profile smoke" in proc.stderr
    assert not (tmp_path / "smoke" / "cifar10-kd-wrn10-2-to-1-s0").exists()


def test_debug_shows_traceback(tmp_path):
    proc = wrnlib("status", "--profile", "huge", "--debug", "--runs-dir", str(tmp_path))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def _assert_clean_error(proc, message):
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_data_root_that_is_a_file(tmp_path):
    not_a_folder = tmp_path / "cifar10.tar.gz"
    not_a_folder.write_bytes(b"")
    proc = wrnlib("run", "cifar10-scratch-wrn10-1-s0", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs"),
                  "--data-root", str(not_a_folder))
    _assert_clean_error(proc, f"data root {not_a_folder} does not exist or is not a folder")
    assert not (tmp_path / "runs").exists()


def test_run_store_that_is_a_file(tmp_path):
    store = tmp_path / "runs"
    store.write_text("")
    proc = wrnlib("status", "--profile", "smoke", "--runs-dir", str(store))
    _assert_clean_error(proc, f"run store {store} is a file, not a folder")


@pytest.mark.parametrize("runs_dir,output,message", [
    ("store", "store/book", "is inside the run store"),
    ("store", "store", "is inside the run store"),
    ("out/_build/runs", "out", "which every book build deletes"),
])
def test_book_output_overlapping_run_store(tmp_path, runs_dir, output, message):
    proc = wrnlib("book", "--profile", "smoke", "--runs-dir", str(tmp_path / runs_dir),
                  "--output", str(tmp_path / output))
    _assert_clean_error(proc, message)
    assert not (tmp_path / output / "_build").exists()


@pytest.mark.parametrize("change,message", [
    ({"depth": 12}, r"invalid WRN depth 12: depth must be 6n+4"),
    ({"pairs": [[2, 0, 0.5]]}, "invalid WRN width 0: the widening factor must be >= 1"),
    ({"pairs": [[2, 1, 0.0]]}, "pair 2 -> 1 has pruning ratio 0.0; it must be in (0, 1)"),
])
def test_bad_profile_settings_exit_1(tmp_path, change, message):
    profile = {"name": "mine", "datasets": ["cifar10"], "depth": 10, "pairs": [[2, 1, 0.5]], "epochs": 1}
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({**profile, **change}))
    env = {**os.environ, "WRNLIB_PROFILES": str(path)}
    proc = wrnlib("run", "cifar10-scratch-wrn10-1-s0", "--profile", "mine", "--runs-dir", str(tmp_path / "runs"),
                  env=env)
    _assert_clean_error(proc, message)
    assert f"profile 'mine' in {path}" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_read_only_run_store_in_cli(tmp_path, data_root, monkeypatch, capsys):
    store = tmp_path / "store"
    real_mkdir = os.mkdir

    def read_only_mkdir(path, *args, **kwargs):
        if str(path).startswith(str(store)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    status = main(["run", "cifar10-scratch-wrn10-1-s0", "--profile", "smoke", "--runs-dir", str(store),
                   "--data-root", str(data_root)])
    err = capsys.readouterr().err
    assert status == 1
    assert "wrnlib run: error: cannot write" in err
    assert "the file system is read-only. Pass a writable --runs-dir" in err
    assert "Traceback" not in err
    assert not store.exists()


def test_book_warns_about_unfinished_runs(tmp_path, capsys):
    from wrnlib.cli import _warn_unfinished_runs

    _warn_unfinished_runs("smoke", tmp_path)
    message = capsys.readouterr().err
    assert message.startswith(f"warning: 0 of 10 runs of profile smoke are done in run store {tmp_path};")
    assert "wrnlib grid --profile smoke" in message
