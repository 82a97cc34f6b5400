import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from wrnlib import runs
from wrnlib.errors import RunError
from wrnlib.measure import (
    THROUGHPUT_BATCH,
    OnnxParityError,
    available_cpus,
    check_onnx_parity,
    count_macs,
    count_nonzero_parameters,
    count_parameters,
    export_onnx,
    measure_latency,
    measure_latency_interleaved,
    measure_model,
    measure_onnx_latency,
    measure_peak_memory_cpu,
)
from wrnlib.models import WideResNet

LATENCY_KEYS = {"median_ms", "p90_ms", "min_ms", "batch_size", "threads", "device", "backend", "repeats",
                "warmup", "images_per_second"}


def test_wrn28_10_macs_within_one_percent():
    macs = count_macs(WideResNet(28, 10, 10))
    assert abs(macs - 5.24e9) / 5.24e9 < 0.01


@pytest.mark.parametrize("width,expected", [(4, 846e6), (2, 214e6), (1, 55e6)])
def test_smaller_wrn28_macs(width, expected):
    assert abs(count_macs(WideResNet(28, width, 10)) - expected) / expected < 0.01


def test_count_macs_returns_int():
    macs = count_macs(WideResNet(10, 1, 10), input_size=(1, 3, 32, 32))
    assert type(macs) is int
    assert macs == 12_502_122


def test_count_parameters_excludes_buffers():
    model = WideResNet(10, 1, 10)
    buffers = sum(b.numel() for b in model.buffers())
    assert buffers > 0
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_nonzero_count_drops_zeroed_weights():
    model = WideResNet(10, 1, 10)
    weight = model.group2[0].conv1.weight
    assert int(torch.count_nonzero(weight)) == weight.numel()
    before = count_nonzero_parameters(model)
    with torch.no_grad():
        weight.zero_()
    assert count_nonzero_parameters(model) == before - weight.numel()
    assert count_parameters(model) == 77_850


def test_latency_reports_median_and_p90():
    model = WideResNet(10, 1, 10)
    threads = torch.get_num_threads()
    result = measure_latency(model, batch_size=2, threads=1, device="cpu", repeats=5)
    assert set(result) == LATENCY_KEYS
    assert result["median_ms"] > 0
    assert result["p90_ms"] >= result["median_ms"] >= result["min_ms"]
    assert result["threads"] == 1
    assert result["repeats"] == 5
    assert result["backend"] == "pytorch"
    assert result["images_per_second"] == pytest.approx(2 * 1000.0 / result["median_ms"])
    assert torch.get_num_threads() == threads
    assert model.training


@pytest.mark.parametrize("settings,message", [
    ({"batch_size": 0}, "invalid batch_size 0"),
    ({"threads": 0}, "invalid threads 0"),
    ({"repeats": 0}, "invalid repeats 0"),
    ({"warmup": -1}, "invalid warmup -1"),
    ({"device": "gpu"}, "invalid device 'gpu'"),
    ({"device": "meta"}, "unsupported device 'meta'"),
])
def test_latency_rejects_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        measure_latency(WideResNet(10, 1, 10), **{"repeats": 1, **settings})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_latency_on_missing_gpu_says_so():
    with pytest.raises(ValueError, match="torch.cuda.is_available"):
        measure_latency(WideResNet(10, 1, 10), device="cuda", repeats=1)


def test_interleaved_timing_alternates_models():
    models = {"a": WideResNet(10, 1, 10), "b": WideResNet(10, 1, 10)}
    calls = []
    for name, model in models.items():
        model.register_forward_hook(lambda module, args, output, name=name: calls.append(name))
    results = measure_latency_interleaved(models, batch_size=1, threads=1, repeats=4, warmup=1)
    # One warm-up each, then rounds whose first model rotates: ab, ba, ab, ba.
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert set(results) == {"a", "b"}
    assert all(set(r) == LATENCY_KEYS and r["repeats"] == 4 for r in results.values())


def test_peak_memory_measured_and_grows_with_batch():
    model = WideResNet(10, 1, 10)
    memory = measure_peak_memory_cpu(model, (1, THROUGHPUT_BATCH))
    small, large = memory[1], memory[THROUGHPUT_BATCH]
    assert small["forward_mb"] > 0
    # At batch 256 the stem alone outputs 256 x 16 x 32 x 32 float32 values (16.8 MB).
    assert large["forward_mb"] > 16.8
    assert large["forward_mb"] > small["forward_mb"]
    assert large["process_peak_mb"] > large["forward_mb"]
    assert "peak RSS of a fresh child process" in large["method"]
    again = measure_peak_memory_cpu(model, (THROUGHPUT_BATCH,))[THROUGHPUT_BATCH]
    assert abs(again["forward_mb"] - large["forward_mb"]) < 0.05 * large["forward_mb"]


def test_peak_memory_reads_saved_model(tmp_path):
    path = tmp_path / "model.pt"
    runs.save_model(WideResNet(10, 1, 10), path)
    memory = measure_peak_memory_cpu(path, (2,))
    assert set(memory) == {2}
    assert memory[2]["forward_mb"] > 0


def test_peak_memory_rejects_other_inputs(tmp_path):
    with pytest.raises(ValueError, match="cannot measure the memory of a Linear"):
        measure_peak_memory_cpu(torch.nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="not found"):
        measure_peak_memory_cpu(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="invalid batch_size 0"):
        measure_peak_memory_cpu(WideResNet(10, 1, 10), (0,))


def test_peak_memory_child_failure_reported(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    with pytest.raises(RunError, match="failed in its child process"):
        measure_peak_memory_cpu(broken, (1,))


def test_memory_child_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "wrnlib.measure", "peak-rss", "m.pt", "one", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "BATCH_SIZE and THREADS must be integers" in proc.stderr


def test_onnx_export_matches_pytorch(tmp_path):
    import onnxruntime as ort

    model = WideResNet(10, 2, 100).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": x})[0]
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x)).numpy()
    assert onnx_out.shape == (3, 100)
    assert np.abs(onnx_out - torch_out).max() < 1e-4
    assert check_onnx_parity(model, path) < 1e-4


def test_onnx_parity_failure_raises(tmp_path):
    path = export_onnx(WideResNet(10, 1, 10), tmp_path / "a.onnx")
    torch.manual_seed(1)
    other = WideResNet(10, 1, 10)
    with torch.no_grad():
        other.fc.bias.fill_(1.0)
    with pytest.raises(OnnxParityError, match="more than the tolerance 0.0001"):
        check_onnx_parity(other, path)


def test_onnx_latency_keys(tmp_path):
    path = export_onnx(WideResNet(10, 1, 10), tmp_path / "m.onnx")
    result = measure_onnx_latency(path, batch_size=2, threads=1, repeats=3, warmup=1)
    assert set(result) == LATENCY_KEYS
    assert result["backend"] == "onnxruntime"
    assert result["threads"] == 1
    assert result["p90_ms"] >= result["median_ms"] > 0
    with pytest.raises(ValueError, match="invalid threads 0"):
        measure_onnx_latency(path, threads=0)
    with pytest.raises(FileNotFoundError, match="missing.onnx not found"):
        measure_onnx_latency(tmp_path / "missing.onnx")


def test_measure_model_records_every_figure(tmp_path):
    torch.manual_seed(0)
    model, native = WideResNet(10, 1, 10), WideResNet(10, 1, 10)
    weights = tmp_path / "model.pt"
    runs.save_model(model, weights)
    metrics = measure_model(model, weights, tmp_path / "model.onnx", latency_repeats=3, throughput_repeats=1,
                            native=native, cuda=False)
    assert metrics["params"] == 77_850
    assert metrics["nonzero_params"] == count_nonzero_parameters(model)
    assert metrics["flops"] == 2 * metrics["macs"] == 2 * 12_502_122
    assert metrics["model_size_mb"] == pytest.approx(weights.stat().st_size / 1e6)
    assert (tmp_path / "model.onnx").is_file()
    assert metrics["onnx_opset"] == 17
    assert metrics["onnx_max_abs_diff"] < 1e-4
    for backend in ("cpu", "ort"):
        for threads in ("", "_all_threads"):
            for key in ("latency_ms_batch1", "latency_p90_ms_batch1", "latency_ms_batch256",
                        "throughput_ips_batch256"):
                assert metrics[f"{key}_{backend}{threads}"] > 0, (key, backend, threads)
        for batch in (1, 256):
            ratio = metrics[f"pruned_to_native_latency_ratio_batch{batch}_{backend}"]
            assert ratio == pytest.approx(metrics[f"latency_ms_batch{batch}_{backend}"]
                                          / metrics[f"native_latency_ms_batch{batch}_{backend}"])
    assert metrics["throughput_ips_batch256_cpu"] == pytest.approx(256_000 / metrics["latency_ms_batch256_cpu"])
    assert metrics["forward_peak_rss_mb_batch256_cpu"] > metrics["forward_peak_rss_mb_batch1_cpu"] > 0
    assert "peak RSS" in metrics["memory_method_cpu"]
    assert not any(key.endswith("_cuda") for key in metrics)
    env = metrics["measurement_env"]
    assert env["threads_all"] == available_cpus()
    assert env["torch_version"] == torch.__version__
    assert env["onnxruntime_version"]
    assert env["cpu_model"]
    json.dumps(metrics)


def test_measure_model_without_twin_has_no_ratio():
    metrics = measure_model(WideResNet(10, 1, 10), latency_repeats=1, throughput_repeats=1, cuda=False)
    assert "model_size_mb" not in metrics
    assert not any(key.startswith(("native_", "pruned_to_native")) for key in metrics)
    assert metrics["latency_ms_batch1_cpu"] > 0


@pytest.mark.parametrize("settings,message", [
    ({"latency_repeats": 0}, "invalid latency_repeats 0"),
    ({"throughput_repeats": 1.5}, "invalid throughput_repeats 1.5"),
])
def test_measure_model_rejects_bad_repeats(settings, message):
    with pytest.raises(ValueError, match=message):
        measure_model(WideResNet(10, 1, 10), **settings)


def test_parity_failure_fails_measurement_and_stops_children(monkeypatch):
    import wrnlib.measure as measure

    started = []

    class RecordingProbes(measure._MemoryProbes):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    def failing_parity(model, path, *args, **kwargs):
        raise OnnxParityError(f"ONNX model {path} differs from PyTorch")

    monkeypatch.setattr(measure, "_MemoryProbes", RecordingProbes)
    monkeypatch.setattr(measure, "check_onnx_parity", failing_parity)
    with pytest.raises(OnnxParityError, match="differs from PyTorch"):
        measure_model(WideResNet(10, 1, 10), latency_repeats=1, throughput_repeats=1, cuda=False)
    assert len(started) == 1
    assert all(child.poll() is not None for child in started[0].children.values())


def test_pruned_shortcut_adds_measured_memory():
    from wrnlib.prune import prune_model

    pruned = prune_model(WideResNet(10, 2, 10), 0.5)
    native = WideResNet(10, 1, 10)
    assert count_parameters(pruned) - count_parameters(native) == 256
    pruned_mb = measure_peak_memory_cpu(pruned, (THROUGHPUT_BATCH,))[THROUGHPUT_BATCH]["forward_mb"]
    native_mb = measure_peak_memory_cpu(native, (THROUGHPUT_BATCH,))[THROUGHPUT_BATCH]["forward_mb"]
    # The extra 16->16 1x1 shortcut output at batch 256 is 256 x 16 x 32 x 32 float32 values (16.8 MB),
    # alive next to the residual branch in the first group, where activations are largest.
    assert pruned_mb - native_mb > 10.0
