import json

import pytest

from wrnlib.errors import ConfigError
from wrnlib.grid import PROFILES, PROFILES_ENV, find_run, get_profile, plan_runs
from wrnlib.models import WideResNet
from wrnlib.prune import prune_model


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_teachers_run_before_students(name):
    specs = plan_runs(name)
    seen = set()
    for spec in specs:
        assert all(dep in seen for dep in spec.depends_on), spec.run_id
        seen.add(spec.run_id)
    assert len(seen) == len(specs)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_method_and_dataset_present(name):
    specs = plan_runs(name)
    assert {s.config["method"] for s in specs} == {"scratch", "kd", "prune"}
    assert {s.config["dataset"] for s in specs} == {"cifar10", "cifar100"}


def test_paper_profile_is_the_study():
    specs = plan_runs("paper")
    profile = get_profile("paper")
    assert profile.depth == 28
    assert profile.epochs == 200
    assert list(profile.milestones) == [60, 120, 160]
    seed0 = [s for s in specs if s.config["seed"] == 0 and s.config["dataset"] == "cifar10"]
    scratch = sorted(s.config["width"] for s in seed0 if s.config["method"] == "scratch")
    assert scratch == [1, 2, 4, 10]
    pruning = sorted((s.config["teacher_run_id"], s.config["pruning_ratio"]) for s in seed0
                     if s.config["method"] == "prune")
    assert pruning == [("cifar10-scratch-wrn28-10-s0", 0.8), ("cifar10-scratch-wrn28-2-s0", 0.5),
                       ("cifar10-scratch-wrn28-4-s0", 0.5)]
    assert profile.train_subset is None


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_pruning_ratio_gives_student_widths(name):
    profile = get_profile(name)
    for pair in profile.pairs:
        teacher = WideResNet(profile.depth, pair.teacher_width, 10)
        pruned = prune_model(teacher, pair.pruning_ratio)
        k = pair.student_width
        assert pruned.arch.stream == (16 * k, 32 * k, 64 * k)


def test_unknown_profile_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown profile 'huge': choose one of smoke, quick, paper"):
        get_profile("huge")


def test_unknown_run_lists_valid_ids():
    with pytest.raises(ConfigError, match="unknown run id 'nope' in profile smoke. Valid run ids: cifar10-"):
        find_run("smoke", "nope")


TINY = {"name": "tiny", "datasets": ["cifar10"], "depth": 10, "pairs": [[2, 1, 0.5]], "epochs": 5,
        "train_subset": 300, "val_size": 100, "test_subset": 100}


def _profile_file(tmp_path, monkeypatch, content):
    path = tmp_path / "profiles.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    monkeypatch.setenv(PROFILES_ENV, str(path))
    return path


def test_profile_file_registers_profile(tmp_path, monkeypatch):
    _profile_file(tmp_path, monkeypatch, [TINY])
    profile = get_profile("tiny")
    assert profile.depth == 10
    assert profile.milestones == (2, 3, 4)
    assert [s.run_id for s in plan_runs("tiny")] == [
        "cifar10-scratch-wrn10-2-s0", "cifar10-scratch-wrn10-1-s0", "cifar10-kd-wrn10-2-to-1-s0",
        "cifar10-prune-wrn10-2-to-1-l1-oneshot-s0"]
    assert find_run("tiny", "cifar10-scratch-wrn10-1-s0").config["train_subset"] == 300


def test_unknown_profile_lists_file_profiles(tmp_path, monkeypatch):
    _profile_file(tmp_path, monkeypatch, TINY)
    with pytest.raises(ConfigError, match="choose one of smoke, quick, paper, tiny"):
        get_profile("huge")


@pytest.mark.parametrize("change,message", [
    ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"depth": 12}, r"invalid WRN depth 12: depth must be 6n\+4"),
    ({"depth": "28"}, "field 'depth' must be int, got '28'"),
    ({"pairs": [[0, 1, 0.5]]}, "invalid WRN width 0"),
    ({"pairs": [[2, 1, 1.5]]}, r"pruning ratio 1.5; it must be in \(0, 1\)"),
    ({"pairs": [[4, 3, 0.5]]}, r"turns width 4 into \[32, 64, 128\] channels per group, not the \[48, 96, 192\]"),
    ({"name": "quick"}, "belongs to a built-in profile"),
    ({"name": "a/b"}, "field 'name' must be a name of letters"),
    ({"datasets": ["mnist"]}, "unknown data set 'mnist'"),
])
def test_profile_file_errors(tmp_path, monkeypatch, change, message):
    path = _profile_file(tmp_path, monkeypatch, {**TINY, **change})
    with pytest.raises(ConfigError, match=message) as info:
        get_profile("tiny")
    assert str(path) in str(info.value)


def test_profile_file_missing_field(tmp_path, monkeypatch):
    _profile_file(tmp_path, monkeypatch, {k: v for k, v in TINY.items() if k != "depth"})
    with pytest.raises(ConfigError, match=r"missing field\(s\) \['depth'\]"):
        get_profile("tiny")


def test_profile_file_not_json(tmp_path, monkeypatch):
    path = _profile_file(tmp_path, monkeypatch, "{name: tiny")
    with pytest.raises(ConfigError, match=f"profile file {path} is not valid JSON"):
        get_profile("tiny")


def test_profile_file_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path / "nowhere.json"))
    with pytest.raises(ConfigError, match="cannot read the profile file"):
        get_profile("tiny")
