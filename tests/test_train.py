import errno
import os
import platform
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from wrnlib import runs, train
from wrnlib.data import prepare_data
from wrnlib.distill import run_distillation
from wrnlib.errors import ConfigError, RunError, StoreError
from wrnlib.models import WideResNet
from wrnlib.runs import REQUIRED_METRICS, RunConfig
from wrnlib.train import StepResults, fit, prepare_run_folder, resolve_precision, run_scratch

TIMING_COLUMNS = {"seconds", "val_seconds", "images_per_second"}


@pytest.fixture(scope="module")
def tiny_data(data_root):
    return prepare_data("cifar10", data_root, val_size=100, train_subset=256, test_subset=100, seed=0,
                        download=False)


def _config(**overrides):
    settings = dict(run_id="resume-test", profile="test", dataset="cifar10", method="scratch", depth=10,
                    width=1, epochs=3, milestones=[2], batch_size=64, val_size=100, train_subset=256,
                    test_subset=100, precision="fp32", dropout=0.0)
    settings.update(overrides)
    return RunConfig(**settings)


def _train(cfg, data, folder):
    torch.manual_seed(cfg.seed)
    model = WideResNet(cfg.depth, cfg.width, 10)
    return fit(model, data, cfg, folder, device=torch.device("cpu")), model


def _without_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in history]


def test_history_written_per_epoch(tmp_path, tiny_data):
    result, _ = _train(_config(epochs=2), tiny_data, tmp_path)
    rows = runs.read_history(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
                            "images_per_second"}
    assert rows[0]["lr"] == pytest.approx(0.1)
    assert rows[1]["lr"] == pytest.approx(0.1)
    assert 0.0 <= result["test_acc"] <= 100.0
    assert result["train_seconds"] == pytest.approx(sum(r["seconds"] for r in rows))


def test_learning_rate_steps_at_milestone(tmp_path, tiny_data):
    _train(_config(epochs=3, milestones=[2], lr_gamma=0.2), tiny_data, tmp_path)
    lrs = [r["lr"] for r in runs.read_history(tmp_path)]
    assert lrs == pytest.approx([0.1, 0.1, 0.02])


def test_resume_after_interruption_matches_uninterrupted(tmp_path, tiny_data, monkeypatch):
    cfg = _config(epochs=3)
    reference, reference_model = _train(cfg, tiny_data, tmp_path / "straight")

    # Interrupt the second run right after epoch 1 has been checkpointed.
    calls = {"n": 0}
    real_write = runs.atomic_write_text

    def crash_after_first_epoch(path, text):
        real_write(path, text)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "atomic_write_text", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, tiny_data, tmp_path / "resumed")
    monkeypatch.setattr(runs, "atomic_write_text", real_write)
    assert [r["epoch"] for r in runs.read_history(tmp_path / "resumed")] == [1]

    resumed, resumed_model = _train(cfg, tiny_data, tmp_path / "resumed")
    assert resumed["resumed_from_epoch"] == 1
    history = runs.read_history(tmp_path / "resumed")
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert _without_timing(history) == _without_timing(runs.read_history(tmp_path / "straight"))
    assert resumed["test_acc"] == reference["test_acc"]
    assert resumed["test_loss"] == reference["test_loss"]
    for key, value in reference_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key


def test_non_finite_loss_stops_run(tmp_path, tiny_data):
    cfg = _config(epochs=1, lr=1e12, momentum=0.0, nesterov=False)
    with pytest.raises(RunError, match=r"became (nan|inf) at epoch 1, step \d+, learning rate 1e\+12"):
        _train(cfg, tiny_data, tmp_path)


def test_checkpoint_of_other_architecture_rejected(tmp_path, tiny_data):
    _train(_config(epochs=1), tiny_data, tmp_path)
    torch.manual_seed(0)
    with pytest.raises(RunError, match="another architecture"):
        fit(WideResNet(10, 2, 10), tiny_data, _config(epochs=2), tmp_path, device=torch.device("cpu"))


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) in ("bf16", "fp32")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", cpu)


def test_same_seed_gives_identical_history(tmp_path, tiny_data):
    cfg = _config(epochs=2)
    _train(cfg, tiny_data, tmp_path / "a")
    _train(cfg, tiny_data, tmp_path / "b")
    first, second = runs.read_history(tmp_path / "a"), runs.read_history(tmp_path / "b")
    assert set(first[0]) >= TIMING_COLUMNS
    assert len(first) == 2
    assert _without_timing(first) == _without_timing(second)


class _TouchOnLoad:
    """Pickles as a call of Path.touch: loading it without weights_only creates `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_checkpoint_needing_code_rejected(tmp_path, tiny_data):
    _train(_config(epochs=1), tiny_data, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    marker = tmp_path / "code-ran"
    blob = torch.load(checkpoint, weights_only=True)
    blob["history"] = _TouchOnLoad(marker)
    torch.save(blob, checkpoint)

    with pytest.raises(RunError) as info:
        _train(_config(epochs=2), tiny_data, tmp_path / "run")
    message = str(info.value)
    assert re.search(r"needs arbitrary code to load \(it contains the Python object [\w.]+\)", message)
    assert "Delete it to restart run resume-test from epoch 0" in message
    assert not marker.exists()
    # The payload is real: an unsafe load runs it.
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


def test_damaged_checkpoint_reported(tmp_path, tiny_data):
    _train(_config(epochs=1), tiny_data, tmp_path)
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(RunError, match=r"checkpoint .*checkpoint.pt is damaged or not a file written by "
                                       r"torch.save .*Delete it to restart run resume-test from epoch 0"):
        _train(_config(epochs=2), tiny_data, tmp_path)


def test_checkpoint_of_other_class_count_rejected(tmp_path, tiny_data):
    torch.manual_seed(0)
    fit(WideResNet(10, 1, 100), tiny_data, _config(epochs=1), tmp_path, device=torch.device("cpu"))
    with pytest.raises(RunError, match="was saved by a model with 100 classes, but run resume-test trains a "
                                       "model with 10 classes"):
        _train(_config(epochs=2), tiny_data, tmp_path)


def test_changed_settings_rejected_on_resume(tmp_path):
    cfg = _config(epochs=3)
    folder = prepare_run_folder(cfg, tmp_path)
    (folder / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(RunError, match=r"was made with other settings \(changed: epochs, lr\)"):
        prepare_run_folder(_config(epochs=4, lr=0.05), tmp_path)


# --------------------------------------------------------------------------
# Whole runs through the API
# --------------------------------------------------------------------------

def _scratch_config(**overrides):
    settings = dict(run_id="api-run", profile="test", dataset="cifar10", method="scratch", depth=10, width=1,
                    epochs=3, milestones=[2], batch_size=64, val_size=100, train_subset=256, test_subset=100,
                    precision="fp32", latency_repeats=2)
    settings.update(overrides)
    return settings


def test_teacher_of_other_class_count_rejected(tmp_path, data_root):
    teacher_dir = runs.run_dir(tmp_path, "test", "cifar100-teacher")
    runs.save_model(WideResNet(10, 2, 100), teacher_dir / "model.pt")
    runs.atomic_write_json(teacher_dir / "metrics.json", {**{k: 0 for k in REQUIRED_METRICS},
                                                          "dataset": "cifar100"})
    config = _scratch_config(run_id="kd-run", method="kd", teacher_run_id="cifar100-teacher")
    with pytest.raises(RunError) as info:
        run_distillation(config, runs_dir=tmp_path, data_root=data_root)
    message = str(info.value)
    assert "run kd-run trains on cifar10 (10 classes)" in message
    assert "teacher run cifar100-teacher is a 100-class model (trained on cifar100)" in message
    assert not runs.run_dir(tmp_path, "test", "kd-run").exists()


def test_disk_full_mid_run_keeps_last_epoch(tmp_path, data_root, monkeypatch):
    real_save = torch.save

    def save_until_disk_full(obj, fh, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            fh.write(b"the first bytes of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    with pytest.raises(StoreError, match=r"cannot write .*checkpoint.pt: no space left on its device"):
        run_scratch(_scratch_config(), runs_dir=tmp_path, data_root=data_root)
    monkeypatch.setattr(torch, "save", real_save)

    folder = runs.run_dir(tmp_path, "test", "api-run")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "config.json", "history.csv",
                                                         runs.TRAIN_LOCK]
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in runs.read_history(folder)] == [1]
    assert runs.run_state(tmp_path, "test", "api-run") == "partial"

    metrics = run_scratch(_scratch_config(), runs_dir=tmp_path, data_root=data_root)
    assert [r["epoch"] for r in runs.read_history(folder)] == [1, 2, 3]
    assert metrics["epochs"] == 3
    assert runs.run_state(tmp_path, "test", "api-run") == "done"
    assert not (folder / "checkpoint.pt").exists()


def test_read_only_store_leaves_nothing(tmp_path, data_root, monkeypatch):
    store = tmp_path / "store"
    real_mkdir, real_open = os.mkdir, os.open

    def read_only_in_store(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(store)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "mkdir", read_only_in_store(real_mkdir))
    monkeypatch.setattr(os, "open", read_only_in_store(real_open))
    with pytest.raises(StoreError, match=r"the file system is read-only\. Pass a writable --runs-dir"):
        run_scratch(_scratch_config(), runs_dir=store, data_root=data_root)
    assert not store.exists()


def test_history_reports_images_per_second(tmp_path, tiny_data):
    _train(_config(epochs=2), tiny_data, tmp_path)
    rows = runs.read_history(tmp_path)
    n_train = tiny_data.train_y.numel()
    for row in rows:
        assert row["seconds"] > 0
        assert row["images_per_second"] > 0
        assert row["images_per_second"] == pytest.approx(n_train / row["seconds"])


@pytest.mark.parametrize("requested", ["bf16", "fp32", "auto"])
def test_fit_reports_precision_used(tmp_path, tiny_data, requested):
    result, _ = _train(_config(epochs=1, precision=requested), tiny_data, tmp_path)
    assert result["precision"] == resolve_precision(requested, torch.device("cpu"))
    assert result["compile"] is False


def test_bf16_training_changes_weights_finitely(tmp_path, tiny_data):
    torch.manual_seed(0)
    model = WideResNet(10, 1, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, tiny_data, _config(epochs=1, precision="bf16"), tmp_path, device=torch.device("cpu"))
    assert result["precision"] == "bf16"
    assert all(torch.isfinite(v.float()).all() for v in model.state_dict().values())
    assert not torch.equal(before["stem.weight"], model.state_dict()["stem.weight"])
    assert model.stem.weight.dtype == torch.float32  # autocast keeps the float32 master weights


def test_step_results_first_non_finite():
    steps = StepResults([torch.tensor(2.3), torch.tensor(float("inf")), torch.tensor(float("nan"))], [4, 4, 2],
                        torch.tensor(0))
    assert steps.first_non_finite() == (1, float("inf"))
    assert steps.images == 10
    finite = StepResults([torch.tensor(2.0), torch.tensor(1.0)], [4, 2], torch.tensor(0))
    assert finite.first_non_finite() is None
    assert finite.loss_sum() == pytest.approx(10.0)
    assert StepResults([], [], torch.tensor(0)).loss_sum() == 0.0


def test_compile_setting_must_be_boolean():
    with pytest.raises(ConfigError, match="compile must be true or false, got 'yes'"):
        _config(compile="yes").validate()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend (TorchInductor) needs a C++ compiler")
def test_compile_flag_trains_one_step(tmp_path, tiny_data):
    # One epoch of one batch: compilation dominates (tens of seconds on 2 cores).
    cfg = _config(epochs=1, compile=True, batch_size=256, precision="fp32")
    result, model = _train(cfg, tiny_data, tmp_path)
    assert result["compile"] is True
    assert [r["epoch"] for r in runs.read_history(tmp_path)] == [1]
    assert all(torch.isfinite(v.float()).all() for v in model.state_dict().values())
    # The run saves the plain module's weights, never the compiled wrapper's.
    assert not any(k.startswith("_orig_mod.") for k in model.state_dict())


def test_compile_failure_names_the_setting(tmp_path, tiny_data, monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    def failing_compile(model, enabled):
        def forward(inputs):
            raise TorchDynamoException("backend compiler failed")
        return forward if enabled else model

    monkeypatch.setattr(train, "compile_model", failing_compile)
    with pytest.raises(RunError, match=r"torch.compile failed \(TorchDynamoException: backend compiler failed\)"
                                       r"\. Set compile to false"):
        _train(_config(epochs=1, compile=True), tiny_data, tmp_path)


def test_resume_accepts_config_without_new_setting(tmp_path):
    cfg = _config()
    folder = runs.run_dir(tmp_path, cfg.profile, cfg.run_id)
    folder.mkdir(parents=True)
    old = cfg.to_dict()
    del old["compile"]
    runs.atomic_write_json(folder / "config.json", old)
    (folder / "checkpoint.pt").write_bytes(b"placeholder")
    assert prepare_run_folder(cfg, tmp_path) == folder
    with pytest.raises(RunError, match=r"changed: compile"):
        prepare_run_folder(_config(compile=True), tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is a glibc function")
def test_keep_freed_cpu_memory_applies_on_glibc():
    assert train.keep_freed_cpu_memory() is True
    assert train.keep_freed_cpu_memory() is True  # a second call is a cached no-op
