import subprocess
import sys

import pytest


def wrnlib(*args, env=None):
    return subprocess.run([sys.executable, "-m", "wrnlib.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_status_lists_every_run(tmp_path):
    proc = wrnlib("status", "--profile", "smoke", "--runs-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "cifar10-scratch-wrn10-2-s0" in proc.stdout
    assert "cifar100-prune-wrn10-2-to-1-l1-oneshot-s0" in proc.stdout
    assert "cifar10-prune-wrn10-2-to-1-l1-iter2x1-s0" in proc.stdout
    assert "0 done, 0 partial, 10 missing" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["status", "--profile", "huge"], "unknown profile 'huge': choose one of smoke, quick, paper"),
    (["run", "nope", "--profile", "smoke"], "unknown run id 'nope' in profile smoke"),
    (["grid", "--profile", "smoke", "--data-root", "/nonexistent/cifar"], "data root /nonexistent/cifar does not exist"),
    (["grid", "--profile", "smoke", "--jobs", "0"], "--jobs must be >= 1, got 0"),
])
def test_user_errors_exit_1_without_traceback(tmp_path, args, message):
    proc = wrnlib(*args, "--runs-dir", str(tmp_path))
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_student_before_teacher_names_the_command(tmp_path, data_root):
    proc = wrnlib("run", "cifar10-kd-wrn10-2-to-1-s0", "--profile", "smoke", "--runs-dir", str(tmp_path),
                  "--data-root", str(data_root))
    assert proc.returncode == 1
    assert "needs its teacher run cifar10-scratch-wrn10-2-s0" in proc.stderr
    assert "wrnlib run cifar10-scratch-wrn10-2-s0 --profile smoke" in proc.stderr
    assert not (tmp_path / "smoke" / "cifar10-kd-wrn10-2-to-1-s0").exists()


def test_debug_shows_traceback(tmp_path):
    proc = wrnlib("status", "--profile", "huge", "--debug", "--runs-dir", str(tmp_path))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
