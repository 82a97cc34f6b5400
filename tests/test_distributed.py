"""Data-parallel training: two gloo ranks on loopback against one process with the whole batch."""

import os
import subprocess
import sys

import pytest
import torch

from wrnlib import distributed, runs
from wrnlib.errors import ConfigError
from wrnlib.models import WideResNet
from wrnlib.runs import RunConfig
from wrnlib.train import _data_parallel, run_scratch

TIMING_COLUMNS = {"seconds", "val_seconds", "images_per_second"}


@pytest.mark.parametrize("batch,world,expected", [
    (64, 2, [(0, 32), (32, 64)]),
    (5, 2, [(0, 3), (3, 5)]),
    (7, 3, [(0, 3), (3, 5), (5, 7)]),
    (1, 2, [(0, 1), (1, 1)]),
])
def test_shard_bounds_cover_batch(batch, world, expected):
    assert [distributed.shard_bounds(batch, r, world) for r in range(world)] == expected


def test_not_distributed_by_default():
    assert distributed.current() is None
    assert distributed.is_writer()
    assert distributed.all_reduce_sum([1.5, 2.0], torch.device("cpu")) == [1.5, 2.0]


def _settings(run_id, **overrides):
    # One step per epoch: the weights are compared after three SGD steps. Longer runs drift apart by
    # float rounding (the ranks sum gradients in another order), which says nothing about correctness.
    settings = dict(run_id=run_id, profile="ddp", dataset="cifar10", method="scratch", depth=10, width=1,
                    epochs=3, milestones=[2], batch_size=64, val_size=64, train_subset=64, test_subset=64,
                    precision="fp32", freeze_bn=True, latency_repeats=1, throughput_repeats=1)
    settings.update(overrides)
    return settings


def test_sync_bn_needs_cuda():
    cfg = RunConfig(**_settings("r", devices=2, sync_bn=True))
    rank = distributed.RankInfo(rank=0, world_size=2, local_rank=0, backend="gloo")
    with pytest.raises(ConfigError, match="sync_bn needs CUDA devices"):
        _data_parallel(WideResNet(10, 1, 10), cfg, torch.device("cpu"), rank)


def test_devices_setting_checked():
    with pytest.raises(ConfigError, match="devices must be an integer >= 1"):
        RunConfig(**_settings("r", devices=0)).validate()
    with pytest.raises(ConfigError, match="batch_size 2 is split over 4 devices"):
        RunConfig(**_settings("r", devices=4, batch_size=2)).validate()


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path, data_root):
    root = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    # One process with the whole batch, through the same entry point torchrun uses.
    single = _settings("single")
    runs.atomic_write_json(runs.run_dir(root, "ddp", "single") / "config.json", single)
    proc = subprocess.run([sys.executable, "-m", "wrnlib.train", "--config",
                           str(runs.run_dir(root, "ddp", "single") / "config.json"), "--data-root", str(data_root)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Two gloo ranks with half of every batch each, launched the way the grid launches them.
    metrics = run_scratch(_settings("pair", devices=2), runs_dir=root, data_root=data_root, threads=1)
    assert metrics["run_id"] == "pair"

    one = torch.load(runs.run_dir(root, "ddp", "single") / "model.pt", weights_only=True)["state_dict"]
    two = torch.load(runs.run_dir(root, "ddp", "pair") / "model.pt", weights_only=True)["state_dict"]
    torch.manual_seed(0)
    initial = WideResNet(10, 1, 10).state_dict()
    assert not torch.equal(one["stem.weight"], initial["stem.weight"]), "training must have moved the weights"
    for key in one:
        assert torch.allclose(one[key].float(), two[key].float(), atol=1e-5, rtol=1e-5), key

    history_one = runs.read_history(runs.run_dir(root, "ddp", "single"))
    history_two = runs.read_history(runs.run_dir(root, "ddp", "pair"))
    assert [r["epoch"] for r in history_two] == [1, 2, 3]
    for a, b in zip(history_one, history_two):
        for column in set(a) - TIMING_COLUMNS:
            assert a[column] == pytest.approx(b[column], rel=1e-5, abs=1e-5), column

    # Only rank 0 wrote: one checkpoint-free run folder with one metrics.json.
    folder = runs.run_dir(root, "ddp", "pair")
    assert not list(folder.glob(".*.tmp"))
    assert runs.read_metrics(folder)["test_acc"] == pytest.approx(runs.read_metrics(
        runs.run_dir(root, "ddp", "single"))["test_acc"], abs=1e-6)
