import numpy as np
import pytest
import torch

from wrnlib.measure import count_macs, count_parameters, export_onnx, measure_latency
from wrnlib.models import WideResNet


def test_wrn28_10_macs_within_one_percent():
    macs = count_macs(WideResNet(28, 10, 10))
    assert abs(macs - 5.24e9) / 5.24e9 < 0.01


@pytest.mark.parametrize("width,expected", [(4, 846e6), (2, 214e6), (1, 55e6)])
def test_smaller_wrn28_macs(width, expected):
    assert abs(count_macs(WideResNet(28, width, 10)) - expected) / expected < 0.01


def test_count_parameters_excludes_buffers():
    model = WideResNet(10, 1, 10)
    buffers = sum(b.numel() for b in model.buffers())
    assert buffers > 0
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_latency_reports_median_and_p90():
    model = WideResNet(10, 1, 10)
    threads = torch.get_num_threads()
    result = measure_latency(model, batch_size=2, threads=1, device="cpu", repeats=5)
    assert result["median_ms"] > 0
    assert result["p90_ms"] >= result["median_ms"]
    assert result["threads"] == 1
    assert torch.get_num_threads() == threads
    assert model.training


def test_onnx_export_matches_pytorch(tmp_path):
    import onnxruntime as ort

    model = WideResNet(10, 2, 100).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": x})[0]
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x)).numpy()
    assert onnx_out.shape == (3, 100)
    assert np.abs(onnx_out - torch_out).max() < 1e-4
