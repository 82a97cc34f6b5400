"""The smoke profile end to end: real images, papermill runs, a -W Jupyter Book build."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from wrnlib.grid import plan_runs
from wrnlib.runs import REQUIRED_METRICS, read_history
from wrnlib.train import resolve_precision

pytestmark = pytest.mark.slow


def _page_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_every_run_done_with_required_metrics(smoke):
    for spec in plan_runs("smoke"):
        folder = smoke["runs"] / "smoke" / spec.run_id
        metrics = json.loads((folder / "metrics.json").read_text())
        missing = [k for k in REQUIRED_METRICS if k not in metrics]
        assert not missing, (spec.run_id, missing)
        assert metrics["method"] == spec.config["method"]
        assert (folder / f"{spec.run_id}.ipynb").is_file()
        assert (folder / "history.csv").is_file()
        assert (folder / "model.pt").is_file()
        assert not (folder / "checkpoint.pt").exists()


def test_runs_record_precision_and_speed(smoke):
    expected_precision = resolve_precision("auto", torch.device("cpu"))
    for spec in plan_runs("smoke"):
        folder = smoke["runs"] / "smoke" / spec.run_id
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["precision"] == expected_precision, spec.run_id
        assert metrics["compile"] is False, spec.run_id
        history = read_history(folder)
        assert len(history) == spec.config["epochs"], spec.run_id
        for row in history:
            assert row["seconds"] > 0, spec.run_id
            assert row["images_per_second"] == pytest.approx(metrics["train_images"] / row["seconds"])


def test_pruned_run_reports_extra_shortcut(smoke):
    metrics = json.loads((smoke["runs"] / "smoke" / "cifar10-prune-wrn10-2-to-1-l1-oneshot-s0" /
                          "metrics.json").read_text())
    assert metrics["extra_params"] == 256
    assert metrics["extra_shortcut_layers"] == ["group1"]
    assert metrics["widths_after"] == [16, 32, 64]


def test_iterative_and_prune_kd_runs(smoke):
    folder = smoke["runs"] / "smoke"
    iterative = json.loads((folder / "cifar10-prune-wrn10-2-to-1-l1-iter2x1-s0" / "metrics.json").read_text())
    assert iterative["schedule"] == "iterative"
    assert [r["round"] for r in iterative["round_accuracy"]] == [1, 2]
    assert iterative["round_accuracy"][-1]["stream"] == [16, 32, 64]
    assert iterative["widths_after"] == [16, 32, 64]
    with_kd = json.loads((folder / "cifar10-prune-wrn10-2-to-1-l1-oneshot-kd-s0" / "metrics.json").read_text())
    assert with_kd["use_kd"] is True
    assert with_kd["kd"]["kd_weight"] == 0.9


def test_book_pruning_chapter(smoke):
    html = _page_text(smoke["html"] / "book" / "pruning.html")
    assert "summary.ipynb::" not in html
    assert html.count("<table") == 6
    assert len(re.findall(r"<img ", html)) == 2
    text = re.sub(r"<[^>]+>", "", html)
    assert "cifar10: one-shot vs iterative node pruning" in text
    assert re.search(r"iterative − one-shot은 평균\s+[+-]\d+\.\d\d %p", text)
    # cifar100 has no iterative run in the smoke profile, so its difference is NaN and its count 0.
    assert re.search(r"CIFAR-100에서는 iterative − one-shot이 평균\s+\+nan %p\s+\(0 쌍", text)


def test_pruned_run_timed_against_native_twin(smoke):
    folder = smoke["runs"] / "smoke" / "cifar10-prune-wrn10-2-to-1-l1-oneshot-s0"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["native_model"] == "WRN-10-1"
    for backend in ("cpu", "ort"):
        for batch in (1, 256):
            ratio = metrics[f"pruned_to_native_latency_ratio_batch{batch}_{backend}"]
            assert ratio > 0
            assert ratio == pytest.approx(metrics[f"latency_ms_batch{batch}_{backend}"]
                                          / metrics[f"native_latency_ms_batch{batch}_{backend}"])
    assert (folder / "model.onnx").is_file()
    assert metrics["onnx_max_abs_diff"] < 1e-4


def test_every_run_measured_on_cpu_and_onnx_runtime(smoke):
    for spec in plan_runs("smoke"):
        metrics = json.loads((smoke["runs"] / "smoke" / spec.run_id / "metrics.json").read_text())
        assert metrics["latency_ms_batch1_ort"] > 0, spec.run_id
        assert metrics["throughput_ips_batch256_cpu_all_threads"] > 0, spec.run_id
        assert metrics["forward_peak_rss_mb_batch256_cpu"] > metrics["forward_peak_rss_mb_batch1_cpu"] > 0
        assert metrics["measurement_env"]["threads_all"] >= 1
        assert metrics["flops"] == 2 * metrics["macs"]
        has_twin = "pruned_to_native_latency_ratio_batch1_cpu" in metrics
        assert has_twin == (spec.config["method"] == "prune"), spec.run_id


def test_drone_chapter_glues_measurements(smoke):
    drone = _page_text(smoke["html"] / "book" / "drone.html")
    assert "summary.ipynb::" not in drone
    # The drone table, two compression tables, pruned vs native and four measurement tables.
    assert drone.count("<table") == 8
    assert "Pruned model / native twin latency" in drone
    assert 'src="../_images/cifar100_drone_fps.png"' in drone
    text = re.sub(r"<[^>]+>", "", drone)
    assert re.search(r"ONNX Runtime으로는\s+\d+ 개가", text)
    assert re.search(r"1,000,000 프레임", text)


def test_book_has_every_run_page_with_a_figure(smoke):
    for spec in plan_runs("smoke"):
        page = smoke["html"] / "book" / "runs" / f"{spec.run_id}.html"
        assert page.is_file(), page
        html = _page_text(page)
        assert len(re.findall(r"<img ", html)) >= 1, spec.run_id
        assert "&lt;Figure size" not in html
        assert "<Figure size" not in html
        assert f"<h1>{spec.run_id}" in html
        # Only papermill's injected cell sets the run id; the template's default cell is removed.
        plain = re.sub(r"<[^>]+>", "", html)
        assert len(re.findall(r"\brun_id = ", plain)) == 1, spec.run_id


def test_book_results_tables_and_language(smoke):
    results = _page_text(smoke["html"] / "book" / "results.html")
    assert results.count("<table") >= 2
    assert "cifar10: results" in results
    assert "cifar100: results" in results
    assert 'lang="ko"' in results
    assert "miniature" in results
    for page in smoke["html"].rglob("*.html"):
        text = _page_text(page)
        assert "&lt;Figure size" not in text, page


def test_book_numbers_are_glued(smoke):
    discussion = _page_text(smoke["html"] / "book" / "discussion.html")
    assert "summary.ipynb::" not in discussion
    text = re.sub(r"<[^>]+>", "", discussion)
    assert re.search(r"KD는 scratch\s+대비 [+-]\d+\.\d\d %p", text)


def test_second_reproduce_skips_finished_runs(smoke):
    proc = subprocess.run(smoke["command"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 run(s) executed, 10 already done" in proc.stdout
