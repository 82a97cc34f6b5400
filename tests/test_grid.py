import dataclasses
import json

import pytest

from wrnlib.errors import ConfigError
from wrnlib.grid import PROFILES, PROFILES_ENV, PruneVariant, find_run, get_profile, plan_runs
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
    # Every pruning variant of a pair starts from the same teacher with the same ratio.
    pruning = sorted({(s.config["teacher_run_id"], s.config["pruning_ratio"]) for s in seed0
                      if s.config["method"] == "prune"})
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


def test_built_in_lookup_checks_profile_file(tmp_path, monkeypatch):
    path = _profile_file(tmp_path, monkeypatch, {**TINY, "name": "quick"})
    with pytest.raises(ConfigError, match="belongs to a built-in profile") as info:
        get_profile("quick")
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


def _prune_specs(name, dataset="cifar10", seed=0):
    return [s for s in plan_runs(name) if s.method == "prune" and s.config["dataset"] == dataset
            and s.config["seed"] == seed]


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_run_ids_unique(name):
    ids = [s.run_id for s in plan_runs(name)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_canonical_pruning_for_every_pair(name):
    profile = get_profile(name)
    for dataset in profile.datasets:
        for pair in profile.pairs:
            run_id = (f"{dataset}-prune-wrn{profile.depth}-{pair.teacher_width}-to-{pair.student_width}"
                      "-l1-oneshot-s0")
            spec = find_run(name, run_id)
            assert spec.config["schedule"] == "one-shot"
            assert spec.config["criterion"] == "l1"
            assert spec.config["use_kd"] is False
            assert spec.config["epochs"] == profile.epochs
            assert spec.config["milestones"] == list(profile.milestones)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_pruning_runs_depend_on_teacher(name):
    profile = get_profile(name)
    for spec in plan_runs(name):
        if spec.method != "prune":
            continue
        teacher = (f"{spec.config['dataset']}-scratch-wrn{profile.depth}-"
                   f"{spec.run_id.split('-prune-wrn')[1].split('-')[1]}-s{spec.config['seed']}")
        assert spec.depends_on == (teacher,)
        assert spec.config["teacher_run_id"] == teacher


def test_paper_pruning_variants():
    specs = _prune_specs("paper")
    tags = sorted(s.run_id.split("-to-2-")[1] for s in specs if "-10-to-2-" in s.run_id)
    assert tags == ["l1-iter10x20-s0", "l1-iter10x40-s0", "l1-oneshot-kd-s0", "l1-oneshot-s0", "l2-oneshot-s0"]
    assert len(specs) == 3 * 5
    iterative = find_run("paper", "cifar100-prune-wrn28-2-to-1-l1-iter10x20-s2").config
    assert iterative["schedule"] == "iterative"
    assert iterative["rounds"] == 10
    assert iterative["epochs_per_round"] == 20
    assert iterative["epochs"] == 200
    assert iterative["milestones"] == [6, 12, 16]
    longer = find_run("paper", "cifar10-prune-wrn28-4-to-2-l1-iter10x40-s1").config
    assert longer["epochs"] == 400
    assert longer["milestones"] == [12, 24, 32]
    kd = find_run("paper", "cifar10-prune-wrn28-10-to-2-l1-oneshot-kd-s0").config
    assert kd["use_kd"] is True
    assert kd["schedule"] == "one-shot"
    assert find_run("paper", "cifar10-prune-wrn28-10-to-2-l2-oneshot-s0").config["criterion"] == "l2"


def test_quick_variants_only_for_narrow_pair():
    specs = _prune_specs("quick")
    extra = sorted(s.run_id for s in specs if not s.run_id.endswith("-l1-oneshot-s0"))
    assert extra == ["cifar10-prune-wrn10-2-to-1-l1-iter3x1-s0", "cifar10-prune-wrn10-2-to-1-l1-oneshot-kd-s0",
                     "cifar10-prune-wrn10-2-to-1-l2-oneshot-s0"]
    iterative = find_run("quick", "cifar100-prune-wrn10-2-to-1-l1-iter3x1-s0").config
    assert (iterative["rounds"], iterative["epochs_per_round"], iterative["epochs"]) == (3, 1, 3)


def test_smoke_has_iterative_and_prune_kd():
    prune_ids = sorted(s.run_id for s in plan_runs("smoke") if s.method == "prune")
    assert prune_ids == ["cifar10-prune-wrn10-2-to-1-l1-iter2x1-s0", "cifar10-prune-wrn10-2-to-1-l1-oneshot-kd-s0",
                         "cifar10-prune-wrn10-2-to-1-l1-oneshot-s0", "cifar100-prune-wrn10-2-to-1-l1-oneshot-s0"]
    iterative = find_run("smoke", "cifar10-prune-wrn10-2-to-1-l1-iter2x1-s0").config
    assert (iterative["rounds"], iterative["epochs_per_round"], iterative["epochs"]) == (2, 1, 2)


def test_iterative_variant_defaults():
    variant = PruneVariant(schedule="iterative")
    assert (variant.rounds, variant.epochs_per_round) == (10, 20)
    assert variant.tag == "l1-iter10x20"
    assert PruneVariant().tag == "l1-oneshot"
    assert PruneVariant().canonical
    assert not PruneVariant(use_kd=True).canonical


def test_duplicate_variant_rejected():
    profile = dataclasses.replace(get_profile("smoke"), prune_variants=(PruneVariant(), PruneVariant(), ))
    with pytest.raises(ConfigError, match="plans run cifar10-prune-wrn10-2-to-1-l1-oneshot-s0 twice"):
        plan_runs(profile)


def test_missing_canonical_variant_rejected():
    profile = dataclasses.replace(get_profile("smoke"), prune_variants=(PruneVariant(criterion="l2"),))
    with pytest.raises(ConfigError, match="profile smoke has no canonical pruning variant"):
        plan_runs(profile)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_measurement_repeats_reach_every_run(name):
    profile = get_profile(name)
    assert profile.throughput_repeats >= 1
    for spec in plan_runs(name):
        assert spec.config["latency_repeats"] == profile.latency_repeats
        assert spec.config["throughput_repeats"] == profile.throughput_repeats
