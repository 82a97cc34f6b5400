import json

import pytest
import torch

from wrnlib import runs
from wrnlib.errors import ConfigError, RunError
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


@pytest.mark.parametrize("name,value", [("latency_repeats", 0), ("throughput_repeats", 0),
                                        ("throughput_repeats", 2.5)])
def test_measurement_repeats_validated(name, value):
    settings = dict(run_id="r", profile="p", dataset="cifar10", method="scratch", depth=10, width=1)
    with pytest.raises(ConfigError, match=f"{name} must be an integer >= 1, got {value}"):
        RunConfig(**settings, **{name: value}).validate()
