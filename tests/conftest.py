"""Shared fixtures: the real CIFAR archives, a per-session cache and small models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROJECT = Path(__file__).resolve().parent.parent


def _find_data_root() -> Path | None:
    env = os.environ.get("WRNLIB_DATA_ROOT")
    candidates = [Path(env)] if env else []
    # A checkout that sits beside a shared data folder (as in CI) needs no setting.
    candidates.append(PROJECT.parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / "cifar10.tar.gz").is_file() or (candidate / "cifar10" / "train").is_dir():
            return candidate.resolve()
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _find_data_root()
    if root is None:
        pytest.fail("the tests need real CIFAR data: set WRNLIB_DATA_ROOT to a folder holding "
                    "cifar10.tar.gz and cifar100.tar.gz (ImageFolder archives) or cifar10/ and cifar100/ trees")
    return root


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    """Point WRNLIB_CACHE at one folder for the whole session, unless the caller set it."""
    if os.environ.get("WRNLIB_CACHE"):
        return Path(os.environ["WRNLIB_CACHE"])
    cache = tmp_path_factory.mktemp("wrnlib-cache")
    os.environ["WRNLIB_CACHE"] = str(cache)
    return cache


@pytest.fixture(autouse=True)
def _single_thread_determinism():
    torch.manual_seed(0)
    yield


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as after training."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, data_root):
    """Reproduce the smoke profile once per session (runs, then the book) with the real command."""
    base = tmp_path_factory.mktemp("smoke")
    runs_dir, output = base / "runs", base / "out"
    command = [sys.executable, "-m", "wrnlib.cli", "reproduce", "--profile", "smoke", "--data-root",
               str(data_root), "--runs-dir", str(runs_dir), "--output", str(output)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"runs": runs_dir, "html": output / "_build" / "html", "command": command, "stdout": proc.stdout}
