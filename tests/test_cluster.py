"""The smoke grid as Ray tasks on a local Ray instance started on loopback by the test."""

import json
import os

import pytest

from wrnlib import runs
from wrnlib.grid import plan_runs

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray", reason="the cluster mode needs Ray (pip install 'wrnlib[cluster]')")


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


def test_ray_grid_matches_single_process_grid(local_ray, smoke, tmp_path, data_root):
    from wrnlib.cluster import execute_grid_ray

    summary = execute_grid_ray("smoke", tmp_path / "runs", data_root, cpus_per_run=1, progress=False)
    expected_ids = [spec.run_id for spec in plan_runs("smoke")]
    assert summary["executed"] == len(expected_ids)
    assert sorted(summary["placed"]) == sorted(expected_ids)

    for run_id in expected_ids:
        ray_metrics = runs.read_metrics(runs.run_dir(tmp_path / "runs", "smoke", run_id))
        single = json.loads((smoke["runs"] / "smoke" / run_id / "metrics.json").read_text())
        assert ray_metrics is not None, run_id
        assert set(ray_metrics) == set(single), run_id
        assert ray_metrics["host"] == summary["placed"][run_id]["host"]
        assert (runs.run_dir(tmp_path / "runs", "smoke", run_id) / f"{run_id}.ipynb").is_file()

    # Students started only after their teachers had finished: the teacher's model.pt existed then.
    again = execute_grid_ray("smoke", tmp_path / "runs", data_root, progress=False)
    assert again["executed"] == 0
    assert again["skipped"] == len(expected_ids)


def test_ray_failure_names_the_run(local_ray, tmp_path):
    from wrnlib.cluster import execute_grid_ray
    from wrnlib.errors import RunError

    with pytest.raises(RunError, match=r"run cifar10\S+ failed on the Ray cluster: .*no-data-here does not exist"):
        execute_grid_ray("smoke", tmp_path / "runs", tmp_path / "no-data-here", progress=False)
    assert not list((tmp_path / "runs").rglob("metrics.json"))
