"""Pruning runs on tiny real CIFAR-10 data: one-shot, iterative, resume, prune + KD."""

import json
import shutil

import pytest
import torch

from wrnlib import runs
from wrnlib.distill import KDCriterion, kd_loss
from wrnlib.errors import RunError
from wrnlib.models import WideResNet
from wrnlib.prune import fine_tune_criterion, round_widths, run_pruning
from wrnlib.runs import RunConfig
from wrnlib.train import run_scratch

TIMING_COLUMNS = {"seconds", "val_seconds", "images_per_second"}
COMMON = dict(profile="test", dataset="cifar10", depth=10, seed=0, batch_size=64, val_size=100, train_subset=256,
              test_subset=100, precision="fp32", latency_repeats=2, milestones=[1])
TEACHER_ID = "cifar10-scratch-wrn10-2-s0"


def _prune_config(run_id, **settings):
    config = dict(run_id=run_id, method="prune", width=1, teacher_run_id=TEACHER_ID, pruning_ratio=0.5, epochs=1,
                  epochs_per_round=1, **COMMON)
    config.update(settings)
    return config


def _iterative(run_id, **settings):
    return _prune_config(run_id, schedule="iterative", rounds=2, epochs_per_round=2, epochs=4, **settings)


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_root):
    """A run store holding a real WRN-10-2 teacher trained for one epoch."""
    root = tmp_path_factory.mktemp("runs")
    run_scratch(dict(run_id=TEACHER_ID, method="scratch", width=2, epochs=1, **COMMON), runs_dir=root,
                data_root=data_root)
    return root


def _folder(root, run_id):
    return runs.run_dir(root, "test", run_id)


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def _round_records(metrics):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in metrics["round_accuracy"]]


def _weights(root, run_id):
    return runs.load_model(_folder(root, run_id) / "model.pt").state_dict()


@pytest.fixture(scope="module")
def iterative(store, data_root):
    metrics = run_pruning(_iterative("straight"), runs_dir=store, data_root=data_root)
    return metrics


def test_iterative_metrics_keys(iterative):
    for key in ("criterion", "schedule", "rounds", "epochs_per_round", "pruning_ratio", "widths_before",
                "widths_after", "inner_before", "inner_after", "teacher_test_acc", "test_acc_after_pruning",
                "test_acc", "round_accuracy", "use_kd", "extra_params", "extra_shortcut_layers"):
        assert key in iterative, key
    assert iterative["criterion"] == "l1"
    assert iterative["schedule"] == "iterative"
    assert iterative["rounds"] == 2
    assert iterative["epochs_per_round"] == 2
    assert iterative["pruning_ratio"] == 0.5
    assert iterative["use_kd"] is False
    assert iterative["widths_before"] == [32, 64, 128]
    assert iterative["widths_after"] == [16, 32, 64]
    assert iterative["inner_after"] == [16, 32, 64]
    assert iterative["extra_params"] == 256
    assert iterative["extra_shortcut_layers"] == ["group1"]


def test_iterative_rounds_reach_target_widths(iterative):
    records = iterative["round_accuracy"]
    assert [r["round"] for r in records] == [1, 2]
    assert [r["stream"] for r in records] == [[round_widths(c, 0.5, 2)[i] for c in (32, 64, 128)] for i in (0, 1)]
    assert records[0]["stream"] == [23, 45, 91]
    assert records[-1]["stream"] == [16, 32, 64]
    assert records[0]["params"] > records[1]["params"] == iterative["params"]
    for record in records:
        assert 0.0 <= record["test_acc_after_pruning"] <= 100.0
        assert 0.0 <= record["test_acc"] <= 100.0
        assert record["epochs"] == 2
    assert iterative["test_acc"] == records[-1]["test_acc"]
    assert iterative["test_acc_after_pruning"] == records[0]["test_acc_after_pruning"]


def test_iterative_run_folder(store, iterative):
    folder = _folder(store, "straight")
    model = runs.load_model(folder / "model.pt")
    assert model.arch.stream == (16, 32, 64)
    assert model.group1[0].shortcut.weight.shape == (16, 16, 1, 1)
    history = runs.read_history(folder)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["round"] for r in history] == [1, 1, 2, 2]
    # Every round restarts the schedule: lr 0.1, then x0.2 after the round's first epoch.
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.02, 0.1, 0.02])
    assert not list(folder.rglob("checkpoint.pt"))
    assert not list((folder / "rounds").rglob("model.pt"))
    assert sorted(p.name for p in (folder / "rounds").iterdir()) == ["01", "02"]
    stored = json.loads((folder / "metrics.json").read_text())
    assert stored["round_accuracy"] == iterative["round_accuracy"]


@pytest.mark.parametrize("crash_file,crash_on_write,when", [
    # Round 2 crashes right after its first epoch's checkpoint and history.
    ("rounds/02/history.csv", 1, "after"),
    # Round 1 is trained and its model.pt saved, but its record does not yet hold the test accuracy.
    ("rounds/01/round.json", 2, "before"),
])
def test_resume_mid_round_matches_uninterrupted(store, data_root, iterative, monkeypatch, crash_file,
                                                crash_on_write, when):
    run_id = f"resumed-{crash_on_write}"
    folder = _folder(store, run_id)
    target = folder / crash_file
    writes = {"n": 0}
    real_write = runs.atomic_write_text

    # JSON files are written through atomic_write_text too.
    def crash(path, text):
        if path == target:
            writes["n"] += 1
        if path == target and writes["n"] == crash_on_write and when == "before":
            raise KeyboardInterrupt
        real_write(path, text)
        if path == target and writes["n"] == crash_on_write and when == "after":
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        run_pruning(_iterative(run_id), runs_dir=store, data_root=data_root)
    monkeypatch.setattr(runs, "atomic_write_text", real_write)
    assert not (folder / "metrics.json").exists()
    first_round = (folder / "rounds" / "01" / "history.csv").read_text()

    resumed = run_pruning(_iterative(run_id), runs_dir=store, data_root=data_root)
    # Round 1 was not trained again: its history, timings included, is unchanged.
    assert (folder / "rounds" / "01" / "history.csv").read_text() == first_round
    assert _without_timing(runs.read_history(folder)) == _without_timing(
        runs.read_history(_folder(store, "straight")))
    assert _round_records(resumed) == _round_records(iterative)
    assert resumed["test_acc"] == iterative["test_acc"]
    straight, again = _weights(store, "straight"), _weights(store, run_id)
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_changed_settings_rejected_on_resume(store, data_root, monkeypatch):
    run_id = "changed"
    real_write = runs.atomic_write_text

    def crash_after_first_round_record(path, text):
        real_write(path, text)
        if path.name == "round.json":
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "atomic_write_text", crash_after_first_round_record)
    with pytest.raises(KeyboardInterrupt):
        run_pruning(_iterative(run_id), runs_dir=store, data_root=data_root)
    monkeypatch.setattr(runs, "atomic_write_text", real_write)
    with pytest.raises(RunError, match=r"was made with other settings \(changed: criterion\)"):
        run_pruning(_iterative(run_id, criterion="l2"), runs_dir=store, data_root=data_root)
    shutil.rmtree(_folder(store, run_id))


def test_fine_tune_criterion_wiring():
    teacher = WideResNet(10, 2, 10).eval()
    base = dict(run_id="r", profile="p", dataset="cifar10", method="prune", depth=10, width=1,
                teacher_run_id="t", pruning_ratio=0.5)
    assert fine_tune_criterion(RunConfig(**base), teacher) is None
    cfg = RunConfig(**base, use_kd=True, temperature=3.0, ce_weight=0.3, kd_weight=0.7)
    criterion = fine_tune_criterion(cfg, teacher)
    assert isinstance(criterion, KDCriterion)
    assert criterion.teacher is teacher
    assert (criterion.temperature, criterion.ce_weight, criterion.kd_weight) == (3.0, 0.3, 0.7)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(4, 3, 32, 32, generator=generator)
    logits = torch.randn(4, 10, generator=generator)
    targets = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        expected = kd_loss(logits, teacher(inputs), targets, 3.0, 0.3, 0.7)
    assert torch.allclose(criterion(logits, inputs, targets), expected)


def test_prune_kd_run_uses_teacher(store, data_root):
    plain = run_pruning(_prune_config("oneshot"), runs_dir=store, data_root=data_root)
    with_kd = run_pruning(_prune_config("oneshot-kd", use_kd=True), runs_dir=store, data_root=data_root)
    assert plain["use_kd"] is False
    assert "kd" not in plain
    assert with_kd["use_kd"] is True
    assert with_kd["kd"] == {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
    # Same pruned start (same seed and criterion) ...
    assert with_kd["test_acc_after_pruning"] == plain["test_acc_after_pruning"]
    assert with_kd["round_accuracy"][0]["stream"] == plain["round_accuracy"][0]["stream"] == [16, 32, 64]
    # ... but another loss, so other weights after fine-tuning.
    a, b = _weights(store, "oneshot"), _weights(store, "oneshot-kd")
    assert not torch.equal(a["fc.weight"], b["fc.weight"])
    assert plain["schedule"] == "one-shot"
    assert plain["rounds"] == 1
    assert len(plain["round_accuracy"]) == 1
