"""The benchmark scripts: their command-line interfaces, outputs and BENCHMARKS.md sections."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.common import (command_line, count_forward_macs, hook_forward_macs, section_header,
                               update_section)
from benchmarks.precision_parity import summarise
from wrnlib.grid import get_profile
from wrnlib.models import WideResNet

PROJECT = Path(__file__).resolve().parent.parent
THROUGHPUT_KEYS = {"wrnlib_images_per_second", "reference_images_per_second", "ratio", "precision", "threads",
                   "device"}


def run_module(module, *args, data_root=None):
    extra = ["--data-root", str(data_root), "--no-download"] if data_root else []
    return subprocess.run([sys.executable, "-m", module, *args, *extra], capture_output=True, text=True,
                          timeout=600, cwd=PROJECT)


def test_throughput_json_interface(data_root):
    proc = run_module("benchmarks.train_throughput", "--model", "wrn-10-1", "--batches", "2", "--block", "1",
                      "--warmup", "1", "--batch-size", "16", "--json", data_root=data_root)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert THROUGHPUT_KEYS <= set(result)
    assert result["wrnlib_images_per_second"] > 0
    assert result["reference_images_per_second"] > 0
    assert result["ratio"] == pytest.approx(result["wrnlib_images_per_second"]
                                            / result["reference_images_per_second"])
    assert result["precision"] in ("bf16", "fp32")
    assert result["threads"] == torch.get_num_threads()
    assert result["device"] == "cpu"
    assert result["model"] == "WRN-10-1"
    assert len(result["wrnlib_block_images_per_second"]) == 2
    assert len(result["reference_block_images_per_second"]) == 2
    block_ratios = sorted(w / r for w, r in zip(result["wrnlib_block_images_per_second"],
                                                result["reference_block_images_per_second"]))
    assert result["median_block_ratio"] == pytest.approx(sum(block_ratios) / 2)


def test_throughput_table_writes_own_section(tmp_path, data_root):
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\n## Other\n\nkept text\n", encoding="utf-8")
    proc = run_module("benchmarks.train_throughput", "--model", "wrn-10-1", "--batches", "1", "--warmup", "0",
                      "--batch-size", "8", "--precision", "fp32", "--output", str(output), "--note", "test note",
                      "--section", "Throughput test", data_root=data_root)
    assert proc.returncode == 0, proc.stderr
    assert "WRN-10-1" in proc.stdout
    text = output.read_text(encoding="utf-8")
    assert "## Other\n\nkept text\n" in text
    assert text.count("## Throughput test\n") == 1
    assert "## Training throughput" not in text
    assert "| WRN-10-1 | 8 | fp32 |" in text
    assert "median block ratio" in text
    assert "- Note: test note" in text
    assert "python -m benchmarks.train_throughput --model wrn-10-1" in text


@pytest.mark.parametrize("args,message", [
    (["--model", "wrn-10-1", "wrn-10-2", "--json"], "--json measures one model, got 2"),
    (["--model", "wrn-11-2", "--json"], "invalid WRN depth 11"),
    (["--model", "resnet50", "--json"], "invalid model name 'resnet50'"),
    (["--device", "tpu", "--json"], "invalid device 'tpu'"),
    (["--section", " "], "--section must be a non-empty, one-line heading, got ' '"),
])
def test_throughput_rejects_bad_input(args, message):
    proc = run_module("benchmarks.train_throughput", *args)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--batches", "0"], "argument --batches: must be >= 1, got 0"),
    (["--reference-workers", "-1"], "argument --reference-workers: must be >= 0, got -1"),
    (["--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
])
def test_throughput_rejects_bad_options(args, message):
    proc = run_module("benchmarks.train_throughput", *args)
    assert proc.returncode == 2
    assert message in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on a machine without CUDA")
def test_gpu_epoch_without_cuda_explains():
    proc = run_module("benchmarks.gpu_epoch", "--json")
    assert proc.returncode == 1
    assert "sees no CUDA device; use --device cpu" in proc.stderr


def test_gpu_epoch_on_cpu_reports_flops(data_root):
    proc = run_module("benchmarks.gpu_epoch", "--device", "cpu", "--model", "wrn-10-1", "--images", "64",
                      "--batch-size", "32", "--warmup", "1", "--matmul-size", "128", "--json",
                      data_root=data_root)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["images"] == 64
    assert result["flops_per_epoch_estimate"] == 3 * result["forward_macs"] * 2 * 64
    assert result["achieved_flops_per_second"] == pytest.approx(
        result["flops_per_epoch_estimate"] / result["epoch_seconds"])
    assert result["utilisation"] == pytest.approx(
        result["achieved_flops_per_second"] / result["matmul_flops_per_second"])
    assert result["matmul_flops_per_second"] > 0
    assert 1.5 < result["train_loss"] < 3.5  # near ln(10) after two steps on mixed classes


def test_gpu_epoch_rejects_too_many_images(data_root):
    proc = run_module("benchmarks.gpu_epoch", "--device", "cpu", "--model", "wrn-10-1", "--images", "60000",
                      "--json", data_root=data_root)
    assert proc.returncode == 1
    assert "--images 60000 exceeds the 50000 training images" in proc.stderr


def test_forward_macs_hooks_match_torchinfo():
    model = WideResNet(16, 2, 10)
    torchinfo_macs, source = count_forward_macs(model)
    assert source == "torchinfo"
    hooked = hook_forward_macs(model)
    # The hooks leave out BatchNorm, which torchinfo counts as a few MACs per channel.
    assert hooked <= torchinfo_macs
    assert hooked == pytest.approx(torchinfo_macs, rel=0.01)


def test_command_line_leaves_out_local_paths():
    argv = ["--model", "wrn-16-2", "--output", "/tmp/x.md", "--data-root=/data", "--save-json", "r.json", "--json"]
    assert command_line("benchmarks.train_throughput", argv) == \
        "python -m benchmarks.train_throughput --model wrn-16-2 --json"
    assert command_line("benchmarks.step_profile", ["--note", "a b"]) == \
        "python -m benchmarks.step_profile --note 'a b'"


def test_section_header_line_order():
    env = {"cpu_model": "Test CPU", "cpu_count": 2, "torch_threads": 1, "cpu_flags": ["avx512_bf16"],
           "device": "cpu", "python_version": "3.11.0", "torch_version": "2.14.1", "torchvision_version": "0.29.1",
           "onednn_version": "3.12.0"}
    lines = section_header("benchmarks/x.py", "python -m benchmarks.x", env, extra=["- Device: cpu"], note="idle")
    assert lines[0].startswith("Written by `benchmarks/x.py` on ")
    assert lines[0].endswith(". Command:")
    assert lines[1:4] == ["", "    python -m benchmarks.x", ""]
    assert lines[4] == "- CPU: Test CPU, 2 logical CPUs, PyTorch threads: 1"
    assert lines[-2:] == ["- Device: cpu", "- Note: idle"]
    assert section_header("benchmarks/x.py", "c", env)[-1].startswith("- Python 3.11.0, torch 2.14.1")


def test_update_section_replaces_only_its_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n\n## A\n\nold a\n\n## B\n\nold b\n\n### B detail\n\nb2\n\n## C\n\nc\n",
                    encoding="utf-8")
    update_section(path, "B", "new b")
    text = path.read_text(encoding="utf-8")
    assert text == "# Benchmarks\n\nintro\n\n## A\n\nold a\n\n## B\n\nnew b\n\n## C\n\nc\n"


def test_update_section_appends_and_creates(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    update_section(path, "First", "one")
    update_section(path, "Second", "two")
    update_section(path, "First", "uno")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n")
    assert text.index("## First\n\nuno\n") < text.index("## Second\n\ntwo\n")
    assert "one" not in text


def test_parity_summary_statistics():
    rows = [
        {"model": "WRN-10-1", "seed": s, "precision": p, "test_acc": acc}
        for s, p, acc in [(0, "bf16", 50.0), (1, "bf16", 52.0), (2, "bf16", 54.0),
                          (0, "fp32", 51.0), (1, "fp32", 52.0), (2, "fp32", 53.0)]
    ]
    rows += [{"model": "WRN-10-2", "seed": s, "precision": p, "test_acc": acc}
             for s, p, acc in [(0, "bf16", 60.0), (1, "bf16", 60.5), (0, "fp32", 70.0), (1, "fp32", 70.5)]]
    first, second = summarise(rows)
    assert first["model"] == "WRN-10-1"
    assert first["bf16_mean"] == pytest.approx(52.0)
    assert first["bf16_std"] == pytest.approx(2.0)
    assert first["fp32_std"] == pytest.approx(1.0)
    assert first["difference"] == pytest.approx(0.0)
    assert first["paired_difference_std"] == pytest.approx(1.0)
    assert first["within_seed_spread"] is True
    assert second["difference"] == pytest.approx(-10.0)
    assert second["within_seed_spread"] is False


def test_parity_runs_both_precisions(data_root, tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    proc = run_module("benchmarks.precision_parity", "--models", "wrn-10-1", "--seeds", "0", "1", "--profile",
                      "smoke", "--output", str(output), data_root=data_root)
    assert proc.returncode == 0, proc.stderr
    text = output.read_text(encoding="utf-8")
    assert "## Accuracy parity: bf16 and fp32" in text
    smoke = get_profile("smoke")
    assert (f"with the smoke profile's settings ({smoke.train_subset:,} training images, {smoke.epochs} epochs, "
            f"batch {smoke.batch_size}, {smoke.test_subset:,} test images)") in text
    for seed in (0, 1):
        for precision in ("bf16", "fp32"):
            assert f"| WRN-10-1 | {seed} | {precision} |" in text


def test_parity_rejects_repeated_seeds():
    proc = run_module("benchmarks.precision_parity", "--seeds", "1", "1")
    assert proc.returncode == 1
    assert "--seeds must be distinct, got [1, 1]" in proc.stderr


def test_step_profile_splits_phases(data_root):
    proc = run_module("benchmarks.step_profile", "--model", "wrn-10-1", "--precision", "fp32", "--batches", "2",
                      "--warmup", "1", "--batch-size", "8", "--json", data_root=data_root)
    assert proc.returncode == 0, proc.stderr
    keep, default = json.loads(proc.stdout)
    assert keep["malloc"] == "keep freed"
    assert default["malloc"] == "glibc default"
    for result in (keep, default):
        assert result["model"] == "WRN-10-1"
        assert result["precision"] == "fp32"
        assert result["wall_ms"] > 0
        assert result["system_ms"] >= 0
        assert set(result["phases_ms"]) == {"augment and normalise", "forward and loss", "backward",
                                            "optimizer step"}
        assert all(ms > 0 for ms in result["phases_ms"].values())
        assert result["operators_ms"]["convolution"] > 0
        assert result["operators_ms"]["batch norm"] > 0
