import errno
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import torch

from wrnlib import runs
from wrnlib.errors import ConfigError, RunError, StoreError
from wrnlib.models import WideResNet
from wrnlib.runs import REQUIRED_METRICS, RunConfig


def test_atomic_write_leaves_no_temp_files(tmp_path):
    runs.atomic_write_json(tmp_path / "a.json", {"x": 1})
    runs.atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "a.json"
    runs.atomic_write_json(target, {"x": 1})
    with pytest.raises(TypeError):
        runs.atomic_write_json(target, {"x": object()})
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_run_state_transitions(tmp_path):
    assert runs.run_state(tmp_path, "p", "r") == "missing"
    folder = runs.run_dir(tmp_path, "p", "r")
    folder.mkdir(parents=True)
    runs.atomic_write_json(folder / "config.json", {})
    assert runs.run_state(tmp_path, "p", "r") == "partial"
    incomplete = {k: 0 for k in REQUIRED_METRICS[:-1]}
    runs.atomic_write_json(folder / "metrics.json", incomplete)
    assert runs.run_state(tmp_path, "p", "r") == "partial"
    runs.atomic_write_json(folder / "metrics.json", {k: 0 for k in REQUIRED_METRICS})
    assert runs.run_state(tmp_path, "p", "r") == "done"


def test_model_round_trip(tmp_path):
    model = WideResNet(10, 2, 100)
    runs.save_model(model, tmp_path / "m.pt")
    loaded = runs.load_model(tmp_path / "m.pt")
    assert loaded.arch == model.arch
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_model_file_needing_code_rejected(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"arch": WideResNet, "state_dict": {}}, path)
    with pytest.raises(RunError, match="weights_only=True"):
        runs.load_model(path)


def test_config_validation():
    base = dict(run_id="r", profile="p", dataset="cifar10", depth=10, width=2)
    RunConfig(method="scratch", **base).validate()
    with pytest.raises(ConfigError, match="unknown method"):
        RunConfig(method="quantize", **base).validate()
    with pytest.raises(ConfigError, match="needs a teacher_run_id"):
        RunConfig(method="kd", **base).validate()
    with pytest.raises(ConfigError, match=r"pruning_ratio must be in \(0, 1\), got 1.2"):
        RunConfig(method="prune", teacher_run_id="t", pruning_ratio=1.2, **base).validate()
    with pytest.raises(ConfigError, match="invalid WRN depth 12"):
        RunConfig(method="scratch", **{**base, "depth": 12}).validate()
    with pytest.raises(ConfigError, match="unknown run setting"):
        RunConfig.from_dict({**base, "method": "scratch", "colour": "red"})


# --------------------------------------------------------------------------
# Full and read-only run stores
# --------------------------------------------------------------------------

def _fail_fsync_with(code):
    def fsync(fd):
        raise OSError(code, os.strerror(code))
    return fsync


def test_disk_full_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    runs.atomic_write_json(target, {"x": 1})
    monkeypatch.setattr(os, "fsync", _fail_fsync_with(errno.ENOSPC))
    with pytest.raises(StoreError) as info:
        runs.atomic_write_json(target, {"x": 2})
    message = str(info.value)
    assert f"cannot write {target}: no space left on its device" in message
    assert "--runs-dir" in message
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value, OSError)
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_read_only_store_is_reported(tmp_path, monkeypatch):
    def read_only_mkstemp(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only_mkstemp)
    target = tmp_path / "run" / "config.json"
    with pytest.raises(StoreError, match=r"cannot write .*config.json: the file system is read-only\. "
                                         r"Pass a writable --runs-dir"):
        runs.atomic_write_json(target, {"x": 1})
    assert list((tmp_path / "run").iterdir()) == []


def test_file_in_place_of_folder_is_reported(tmp_path):
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        runs.make_dirs(blocker / "smoke" / "run")


def test_stale_temp_files_removed(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "history.csv").write_text("epoch\n1\n")
    removed = runs.remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".checkpoint.pt.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_lock_files_alone_count_as_missing(tmp_path):
    folder = runs.run_dir(tmp_path, "p", "r")
    folder.mkdir(parents=True)
    (folder / runs.RUN_LOCK).write_text("")
    (folder / runs.TRAIN_LOCK).write_text("")
    (folder / "r.partial.ipynb").write_text("{}")
    assert runs.run_state(tmp_path, "p", "r") == "missing"
    (folder / "history.csv").write_text("epoch\n1\n")
    assert runs.run_state(tmp_path, "p", "r") == "partial"


# --------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------

def test_lock_records_holder(tmp_path):
    path = tmp_path / "run" / runs.RUN_LOCK
    with runs.RunLock(path, "run r"):
        info = runs.RunLock.holder(path)
        assert info["pid"] == os.getpid()
        assert info["host"] == socket.gethostname()
    assert runs.RunLock.holder(path) is None


def test_second_holder_waits_and_names_first(tmp_path, caplog):
    path = tmp_path / runs.RUN_LOCK
    stop = threading.Event()
    outcome = {}

    def second():
        try:
            runs.RunLock(path, "run r", poll_seconds=0.05, stop=stop).acquire()
            outcome["result"] = "acquired"
        except KeyboardInterrupt:
            outcome["result"] = "stopped"

    with caplog.at_level(logging.WARNING, logger="wrnlib"), runs.RunLock(path, "run r"):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()
        stop.set()
        waiter.join(5)
    assert outcome["result"] == "stopped"
    assert f"run r is locked by pid {os.getpid()} on host {socket.gethostname()}" in caplog.text


def test_lock_freed_when_holder_is_killed(tmp_path):
    path = tmp_path / runs.RUN_LOCK
    script = ("import sys, time; from wrnlib import runs; "
              f"runs.RunLock({str(path)!r}, 'run r').acquire(); print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert runs.RunLock.holder(path)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait(30)
    started = time.monotonic()
    with runs.RunLock(path, "run r", poll_seconds=0.05):
        assert time.monotonic() - started < 1.0


# --------------------------------------------------------------------------
# Files that need code to load, settings no run can use
# --------------------------------------------------------------------------

def test_unsafe_file_names_the_object(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"arch": WideResNet, "state_dict": {}}, path)
    with pytest.raises(RunError) as info:
        runs.load_model(path)
    message = str(info.value)
    assert "needs arbitrary code to load (it contains the Python object wrnlib.models.WideResNet)" in message
    assert "Delete the run folder" in message
    assert "\n" not in message


def test_damaged_model_file_reported(tmp_path):
    path = tmp_path / "model.pt"
    runs.save_model(WideResNet(10, 1, 10), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(RunError, match=r"model file .*model.pt is damaged or not a file written by torch.save"):
        runs.load_model(path)


@pytest.mark.parametrize("change,message", [
    ({"width": 0}, "invalid WRN width 0: the widening factor must be an integer >= 1"),
    ({"depth": 11}, r"invalid WRN depth 11: depth must be 6n\+4"),
    ({"method": "prune", "teacher_run_id": "t", "pruning_ratio": 0.0},
     r"pruning_ratio must be in \(0, 1\), got 0.0"),
    ({"method": "prune", "teacher_run_id": "t", "pruning_ratio": 1},
     r"pruning_ratio must be in \(0, 1\), got 1"),
    ({"dataset": "mnist"}, "unknown data set 'mnist'; choose one of cifar10, cifar100"),
    ({"lr": 0.0}, "lr must be > 0, got 0.0"),
    ({"train_subset": 0}, "train_subset must be >= 1 or None"),
])
def test_invalid_settings_rejected(change, message):
    settings = dict(run_id="r", profile="p", dataset="cifar10", method="scratch", depth=10, width=2)
    settings.update(change)
    with pytest.raises(ConfigError, match=message):
        RunConfig(**settings).validate()


PRUNE_BASE = dict(run_id="r", profile="p", dataset="cifar10", method="prune", depth=10, width=1, teacher_run_id="t",
                  pruning_ratio=0.5)


@pytest.mark.parametrize("settings,message", [
    ({"criterion": "l3"}, "unknown pruning criterion 'l3'; choose one of l1, l2, bn_scale, random"),
    ({"schedule": "gradual"}, "unknown pruning schedule 'gradual'; choose one of one-shot, iterative"),
    ({"rounds": 2, "epochs": 4}, "a one-shot schedule prunes once, so rounds must be 1, got 2"),
    ({"schedule": "iterative", "rounds": 1}, "an iterative schedule needs rounds >= 2, got 1"),
    ({"schedule": "iterative", "rounds": 0}, "rounds must be an integer >= 1, got 0"),
    ({"schedule": "iterative", "rounds": 3, "epochs": 10}, "epochs 10 do not split into 3 equal rounds"),
    ({"schedule": "iterative", "rounds": 10, "epochs_per_round": 40, "epochs": 200},
     "epochs must equal rounds x epochs_per_round = 10 x 40, got epochs 200"),
    ({"pruning_ratio": True}, r"pruning_ratio must be in \(0, 1\), got True"),
    ({"epochs_per_round": "5"}, "epochs_per_round must be an integer >= 1 or None, got '5'"),
    ({"schedule": "iterative", "rounds": 2, "epochs_per_round": 0, "epochs": 0}, "epochs must be >= 1, got 0"),
    ({"schedule": "iterative", "rounds": 2, "epochs_per_round": -1, "epochs": 2},
     "epochs_per_round must be an integer >= 1 or None, got -1"),
])
def test_pruning_config_rejected(settings, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**{**PRUNE_BASE, **settings}).validate()


def test_round_epochs():
    iterative = RunConfig(**{**PRUNE_BASE, "schedule": "iterative", "rounds": 10, "epochs": 400})
    iterative.validate()
    assert iterative.round_epochs == 40
    explicit = RunConfig(**{**PRUNE_BASE, "schedule": "iterative", "rounds": 10, "epochs_per_round": 20,
                            "epochs": 200})
    explicit.validate()
    assert explicit.round_epochs == 20
    assert RunConfig(**{**PRUNE_BASE, "epochs": 7}).round_epochs == 7
    assert RunConfig(run_id="r", profile="p", dataset="cifar10", method="scratch", depth=10, width=1,
                     epochs=5).round_epochs == 5


@pytest.mark.parametrize("name,value", [("latency_repeats", 0), ("throughput_repeats", 0),
                                        ("throughput_repeats", 2.5)])
def test_measurement_repeats_validated(name, value):
    settings = dict(run_id="r", profile="p", dataset="cifar10", method="scratch", depth=10, width=1)
    with pytest.raises(ConfigError, match=f"{name} must be an integer >= 1, got {value}"):
        RunConfig(**settings, **{name: value}).validate()
