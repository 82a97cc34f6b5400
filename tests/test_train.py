import pytest
import torch

from wrnlib import runs
from wrnlib.data import prepare_data
from wrnlib.errors import RunError
from wrnlib.models import WideResNet
from wrnlib.runs import RunConfig
from wrnlib.train import fit, resolve_precision

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
