"""Crashes, Ctrl-C and concurrent commands against real `wrnlib run` processes.

Each test starts `python -m wrnlib.cli run` on a small profile registered
through WRNLIB_PROFILES (real images, papermill, a real kernel), disturbs it,
runs the same command again and compares the result with an uninterrupted run.
"""

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time

import pytest
import torch
from PIL import Image

from wrnlib import runs

pytestmark = pytest.mark.slow

RUN_ID = "cifar10-scratch-wrn10-1-s0"
EPOCHS = 6
PROFILE = {"name": "crash", "datasets": ["cifar10"], "depth": 10, "pairs": [[2, 1, 0.5]], "epochs": EPOCHS,
           "milestones": [4], "train_subset": 400, "val_size": 100, "test_subset": 200, "batch_size": 50,
           "latency_repeats": 3}
TIMING_COLUMNS = {"seconds", "val_seconds", "images_per_second"}
INTERRUPTED = "wrnlib run: interrupted; finished epochs are checkpointed, rerun the same command to resume"


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_root):
    path = tmp_path_factory.mktemp("profiles") / "profiles.json"
    path.write_text(json.dumps(PROFILE))
    # One thread gives every process the same arithmetic and keeps a shared machine responsive.
    return {**os.environ, "WRNLIB_PROFILES": str(path), "WRNLIB_DATA_ROOT": str(data_root), "OMP_NUM_THREADS": "1"}


def _start(env, runs_dir, *extra):
    return subprocess.Popen([sys.executable, "-m", "wrnlib.cli", "run", RUN_ID, "--profile", "crash",
                             "--runs-dir", str(runs_dir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc, timeout=900):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _folder(runs_dir):
    return runs_dir / "crash" / RUN_ID


def _wait_for_epochs(proc, folder, count, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = runs.read_history(folder)
        if len(rows) >= count:
            return rows
        if proc.poll() is not None:
            pytest.fail(f"wrnlib run exited with {proc.returncode} before epoch {count}: {proc.stderr.read()}")
        time.sleep(0.02)
    pytest.fail(f"no epoch {count} after {timeout} s")


def _lock_is_free(path, timeout=30):
    """Return True once no process holds the flock lock on `path`, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.1)
        finally:
            os.close(fd)
    return False


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    runs_dir = tmp_path_factory.mktemp("reference")
    status, _, err = _finish(_start(env, runs_dir))
    assert status == 0, err
    return _folder(runs_dir)


def _assert_same_result(folder, reference):
    history = runs.read_history(folder)
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
    assert _without_timing(history) == _without_timing(runs.read_history(reference))
    metrics, expected = runs.read_metrics(folder), runs.read_metrics(reference)
    for key in ("test_acc", "test_loss", "final_val_acc", "params"):
        assert metrics[key] == expected[key], key
    model, expected_model = runs.load_model(folder / "model.pt"), runs.load_model(reference / "model.pt")
    for key, value in expected_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not (folder / "checkpoint.pt").exists()
    assert not list(folder.glob(".*.tmp"))


def test_kill_9_resumes_to_same_result(tmp_path, env, reference):
    proc = _start(env, tmp_path)
    folder = _folder(tmp_path)
    _wait_for_epochs(proc, folder, 1)
    # A power cut: the training kernel and the command die at once.
    os.kill(runs.RunLock.holder(folder / runs.TRAIN_LOCK)["pid"], signal.SIGKILL)
    proc.kill()
    proc.communicate()

    before = runs.read_history(folder)
    saved_epoch = torch.load(folder / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= len(before) < EPOCHS
    # history.csv is written after the checkpoint, so it may lag it by the one epoch in between.
    assert saved_epoch in (len(before), len(before) + 1)
    assert runs.run_state(tmp_path, "crash", RUN_ID) == "partial"

    status, out, err = _finish(_start(env, tmp_path))
    assert status == 0, err
    assert f"run {RUN_ID} done" in out
    _assert_same_result(folder, reference)
    # Finished epochs were resumed, not trained again: their wall-clock columns are unchanged.
    assert runs.read_history(folder)[:len(before)] == before


def test_kill_9_of_command_ends_its_kernel(tmp_path, env, reference):
    proc = _start(env, tmp_path)
    folder = _folder(tmp_path)
    _wait_for_epochs(proc, folder, 1)
    proc.kill()
    proc.communicate()
    # The kernel polls for its parent every second and exits when it is gone.
    assert _lock_is_free(folder / runs.TRAIN_LOCK)

    status, _, err = _finish(_start(env, tmp_path))
    assert status == 0, err
    _assert_same_result(folder, reference)


def test_ctrl_c_stops_cleanly_and_resumes(tmp_path, env, reference):
    proc = _start(env, tmp_path)
    folder = _folder(tmp_path)
    _wait_for_epochs(proc, folder, 1)
    proc.send_signal(signal.SIGINT)
    status, out, err = _finish(proc, timeout=120)

    assert status == 130
    assert [line for line in err.splitlines() if line.strip()] == [INTERRUPTED]
    assert _lock_is_free(folder / runs.TRAIN_LOCK, timeout=5)
    before = runs.read_history(folder)
    assert 1 <= len(before) < EPOCHS
    assert not (folder / "metrics.json").exists()

    status, _, err = _finish(_start(env, tmp_path))
    assert status == 0, err
    _assert_same_result(folder, reference)
    assert runs.read_history(folder)[:len(before)] == before


def test_ctrl_c_stops_grid_within_an_epoch(tmp_path, env):
    proc = subprocess.Popen([sys.executable, "-m", "wrnlib.cli", "grid", "--profile", "crash", "--runs-dir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    folder = tmp_path / "crash" / "cifar10-scratch-wrn10-2-s0"
    _wait_for_epochs(proc, folder, 1)
    proc.send_signal(signal.SIGINT)
    status, _, err = _finish(proc, timeout=120)

    assert status == 130
    assert err.rstrip().endswith(INTERRUPTED.replace("wrnlib run", "wrnlib grid"))
    assert "Traceback" not in err
    # The kernel was interrupted: the grid did not wait for the run to end.
    assert not (folder / "metrics.json").exists()
    assert len(runs.read_history(folder)) < EPOCHS
    assert _lock_is_free(folder / runs.TRAIN_LOCK, timeout=5)


def test_second_command_waits_for_the_first(tmp_path, env, reference):
    folder = _folder(tmp_path)
    first = _start(env, tmp_path)
    deadline = time.monotonic() + 120
    while (runs.RunLock.holder(folder / runs.RUN_LOCK) or {}).get("pid") != first.pid:
        assert time.monotonic() < deadline, "the first command never took the run lock"
        time.sleep(0.05)
    second = _start(env, tmp_path)

    status, _, err = _finish(first)
    assert status == 0, err
    finished_at = (folder / "metrics.json").stat().st_mtime_ns
    status, out, err = _finish(second)
    assert status == 0, err
    assert f"run {RUN_ID} is locked by pid {first.pid} on host {socket.gethostname()}" in err
    assert f"run {RUN_ID} was finished by another process meanwhile; skipped" in err
    assert (folder / "metrics.json").stat().st_mtime_ns == finished_at
    _assert_same_result(folder, reference)


def test_archive_of_wrong_class_count_leaves_nothing(tmp_path, env):
    tree = tmp_path / "tree" / "cifar10"
    for split in ("train", "test"):
        for name in ("cat", "dog", "ship"):
            (tree / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tree / split / name / "0000.png")
    data_root = tmp_path / "data"
    data_root.mkdir()
    with tarfile.open(data_root / "cifar10.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="cifar10")

    status, _, err = _finish(_start(env, tmp_path / "runs", "--data-root", str(data_root)))
    assert status == 1
    assert "has 3 class folders under train/, but cifar10 has 10 classes" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert runs.run_state(tmp_path / "runs", "crash", RUN_ID) == "missing"
