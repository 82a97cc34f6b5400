import pytest

from wrnlib.errors import ConfigError
from wrnlib.grid import PROFILES, find_run, get_profile, plan_runs
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


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_measurement_repeats_reach_every_run(name):
    profile = get_profile(name)
    assert profile.throughput_repeats >= 1
    for spec in plan_runs(name):
        assert spec.config["latency_repeats"] == profile.latency_repeats
        assert spec.config["throughput_repeats"] == profile.throughput_repeats
