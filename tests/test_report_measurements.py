"""Measurement report helpers on a synthetic results table with known measurements."""

import math

import numpy as np
import pandas as pd
import pytest

from wrnlib import report, runs

TEACHER = "cifar10-scratch-wrn10-2-s0"


def _run(run_id, method, width, test_acc, latency, latency_ort, ips, ips_ort, seed=0, **extra):
    row = {
        "run_id": run_id, "dataset": "cifar10", "method": method, "width": width, "depth": 10, "seed": seed,
        "model": f"WRN-10-{width}", "teacher_run_id": None if method == "scratch" else TEACHER,
        "test_acc": test_acc, "params": 1000 * width, "nonzero_params": 1000 * width, "macs": 2e6 * width,
        "model_size_mb": 0.1 * width, "onnx_size_mb": 0.1 * width, "train_seconds": 10.0,
        "latency_ms_batch1_cpu": latency, "latency_ms_batch1_ort": latency_ort,
        "latency_ms_batch1_cpu_all_threads": latency, "latency_ms_batch1_ort_all_threads": latency_ort,
        "throughput_ips_batch256_cpu": ips, "throughput_ips_batch256_ort": ips_ort,
        "throughput_ips_batch256_cpu_all_threads": ips, "throughput_ips_batch256_ort_all_threads": ips_ort,
        "forward_peak_rss_mb_batch1_cpu": 5.0, "forward_peak_rss_mb_batch256_cpu": 100.0 * width,
        "process_peak_rss_mb_batch1_cpu": 505.0,
        "measurement_env": {"cpu_model": "Test CPU", "threads_all": 2, "torch_version": "2.x",
                            "onnxruntime_version": "1.x", "onnx_opset": 17, "load_average_1min": 0.5 + seed},
        "config_id": run_id.rsplit("-s", 1)[0],
    }
    row.update(extra)
    return row


def _prune(run_id, test_acc, ratio, **extra):
    return _run(run_id, "prune", 1, test_acc, 2.0 * ratio, 0.5 * ratio, 1000.0, 4000.0, native_model="WRN-10-1",
                extra_params=256, native_latency_ms_batch1_cpu=2.0,
                pruned_to_native_latency_ratio_batch1_cpu=ratio, pruned_to_native_latency_ratio_batch256_cpu=ratio,
                pruned_to_native_latency_ratio_batch1_ort=ratio, pruned_to_native_latency_ratio_batch256_ort=ratio,
                **extra)


@pytest.fixture
def results():
    rows = [
        _run(TEACHER, "scratch", 2, 60.0, 10.0, 4.0, 250.0, 1000.0),
        _run("cifar10-scratch-wrn10-1-s0", "scratch", 1, 50.0, 2.0, 0.5, 1000.0, 4000.0),
        _run("cifar10-kd-wrn10-2-to-1-s0", "kd", 1, 54.0, 2.5, 0.5, 1250.0, 4000.0),
        _run("cifar10-kd-wrn10-2-to-1-s1", "kd", 1, 56.0, 1.5, 0.5, 750.0, 4000.0, seed=1),
        _prune("cifar10-prune-wrn10-2-to-1-l1-oneshot-s0", 52.0, 1.25, schedule="one-shot", use_kd=False),
        _prune("cifar10-prune-wrn10-2-to-1-l1-iterative-s0", 53.0, 0.9, schedule="iterative", rounds=2, epochs_per_round=1,
               use_kd=False),
        _prune("cifar10-prune-wrn10-2-to-1-l1-oneshot-kd-s0", 57.0, 1.1, schedule="one-shot", use_kd=True),
    ]
    frame = pd.DataFrame(rows)
    frame["order"] = range(len(frame))
    return frame


@pytest.mark.parametrize("method,schedule,use_kd,is_teacher,expected", [
    ("scratch", None, None, True, "teacher"),
    ("scratch", math.nan, math.nan, False, "scratch"),
    ("kd", None, None, False, "KD"),
    ("prune", "one-shot", False, False, "one-shot"),
    ("prune", "iterative", False, False, "iterative"),
    ("prune", "iterative", True, False, "prune+KD"),
    ("prune", math.nan, math.nan, False, "one-shot"),
    ("prune", "one-shot", np.bool_(True), False, "prune+KD"),
])
def test_method_label_cases(method, schedule, use_kd, is_teacher, expected):
    assert report.method_label(method, schedule, use_kd, is_teacher) == expected


def test_method_label_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'quantize'"):
        report.method_label("quantize")


def test_labels_come_from_metrics(results):
    labels = dict(zip(report.add_labels(results)["run_id"], report.add_labels(results)["label"]))
    assert labels[TEACHER] == "teacher"
    assert labels["cifar10-scratch-wrn10-1-s0"] == "scratch"
    assert labels["cifar10-kd-wrn10-2-to-1-s1"] == "KD"
    assert labels["cifar10-prune-wrn10-2-to-1-l1-oneshot-s0"] == "one-shot"
    assert labels["cifar10-prune-wrn10-2-to-1-l1-iterative-s0"] == "iterative"
    assert labels["cifar10-prune-wrn10-2-to-1-l1-oneshot-kd-s0"] == "prune+KD"


def test_results_table_averages_seeds(results):
    table = report.results_table(results, "cifar10")
    assert list(table["Method"]) == ["teacher", "scratch", "KD", "pruning: one-shot, l1",
                                     "pruning: iterative 2 x 1 ep, l1", "pruning + KD: one-shot, l1"]
    kd = table[table["Method"] == "KD"].iloc[0]
    assert kd["Seeds"] == 2
    assert kd["Test acc (%)"] == "55.00 ± 1.41"


def test_config_means_average_measurements(results):
    means = report.config_means(results).set_index("config_id")
    kd = means.loc["cifar10-kd-wrn10-2-to-1"]
    assert kd["seeds"] == 2
    assert kd["latency_ms_batch1_cpu"] == pytest.approx(2.0)
    assert kd["throughput_ips_batch256_cpu"] == pytest.approx(1000.0)
    assert math.isnan(means.loc["cifar10-scratch-wrn10-1"]["pruned_to_native_latency_ratio_batch1_cpu"])


def test_drone_table_frame_rates_and_backlog(results):
    table = report.drone_table(results).set_index("Method")
    teacher = table.loc["teacher"]
    assert teacher["PyTorch b1 (fps)"] == pytest.approx(100.0)
    assert teacher["ORT b1 (fps)"] == pytest.approx(250.0)
    assert teacher["Keeps up with 30 fps (PyTorch)"] == "yes"
    assert teacher["1M frames, PyTorch b256 (h)"] == pytest.approx(1e6 / 250.0 / 3600.0)
    assert teacher["1M frames, ORT b256 (h)"] == pytest.approx(1e6 / 1000.0 / 3600.0)
    slow = report.drone_table(results, camera_fps=200.0).set_index("Method")
    assert slow.loc["teacher"]["Keeps up with 200 fps (PyTorch)"] == "no"
    assert slow.loc["teacher"]["Keeps up with 200 fps (ORT)"] == "yes"


def test_drone_table_names_other_backlog(results):
    table = report.drone_table(results, backlog_frames=500_000)
    assert "0.5M frames, ORT b256 (h)" in table.columns
    assert "0.5M frames, ORT b256 (h)" in report.drone_table(results.iloc[:0], backlog_frames=500_000).columns
    assert "250,000 frames, ORT b256 (h)" in report.drone_table(results, backlog_frames=250_000).columns
    numbers = report.drone_numbers(results, backlog_frames=500_000)
    assert numbers["drone_backlog_frames"] == 500_000
    assert numbers["drone_backlog_slowest_hours"] == pytest.approx(5e5 / 250.0 / 3600.0)


def test_drone_numbers_pick_extremes(results):
    numbers = report.drone_numbers(results)
    assert numbers["drone_models"] == 6
    assert numbers["drone_realtime_models"] == 6
    assert numbers["drone_slowest_model"] == "WRN-10-2 (teacher, cifar10)"
    assert numbers["drone_slowest_fps"] == pytest.approx(100.0)
    assert numbers["drone_backlog_slowest_hours"] == pytest.approx(1e6 / 250.0 / 3600.0)
    assert numbers["drone_backlog_speedup"] == pytest.approx(4.0)
    assert numbers["drone_cifar10_best_realtime_model_ort"] == "WRN-10-2 (teacher)"
    assert numbers["drone_cifar10_best_realtime_acc_ort"] == 60.0
    # At 300 fps the teacher (250 fps with ONNX Runtime) no longer keeps up.
    faster_camera = report.drone_numbers(results, camera_fps=300.0)
    assert faster_camera["drone_ort_realtime_models"] == 5
    assert faster_camera["drone_cifar10_best_realtime_model_ort"] == "WRN-10-1 (pruning + KD: one-shot, l1)"
    assert faster_camera["drone_cifar10_best_realtime_acc_ort"] == 57.0
    assert numbers["drone_cifar100_best_realtime_model"] == "none"
    assert math.isnan(numbers["drone_cifar100_best_realtime_acc"])


def test_compression_table_accuracy_lost_and_speedup(results):
    table = report.compression_table(results, "cifar10", "smoke").set_index("Method")
    assert list(table.index) == ["KD", "pruning: one-shot, l1", "pruning: iterative 2 x 1 ep, l1", "pruning + KD: one-shot, l1"]
    kd = table.loc["KD"]
    assert kd["Acc lost (%p)"] == 5.0
    assert kd["Speed-up b1 PyTorch (x)"] == 5.0
    assert kd["Speed-up b1 ORT (x)"] == 8.0
    assert kd["Throughput gain b256 PyTorch (x)"] == 4.0
    assert table.loc["pruning + KD: one-shot, l1"]["Acc lost (%p)"] == 3.0
    numbers = report.compression_numbers(results, "smoke")
    assert numbers["drone_cifar10_kd_acc_lost"] == 5.0
    assert numbers["drone_cifar10_prune_acc_lost"] == pytest.approx((8.0 + 7.0 + 3.0) / 3)
    assert math.isnan(numbers["drone_cifar100_kd_speedup"])


def test_pruned_native_table_and_counts(results):
    table = report.pruned_native_table(results)
    assert list(table["Method"]) == ["pruning: one-shot, l1", "pruning: iterative 2 x 1 ep, l1", "pruning + KD: one-shot, l1"]
    assert list(table["Ratio b1 PyTorch"]) == [1.25, 0.9, 1.1]
    assert list(table["Extra params"]) == ["256"] * 3
    assert list(table["Native twin"]) == ["WRN-10-1"] * 3
    numbers = report.pruned_native_numbers(results)
    assert numbers["prune_native_runs"] == 3
    assert numbers["prune_native_slower_b1"] == 2
    assert numbers["prune_native_ratio_b1_min"] == 0.9
    assert numbers["prune_native_ratio_b1_max"] == 1.25


def test_footprint_and_speed_tables(results):
    footprint = report.footprint_table(results, "cifar10").set_index("Method")
    assert footprint.loc["teacher"]["Params"] == "2,000"
    assert footprint.loc["teacher"]["FLOPs (M)"] == 8.0
    assert footprint.loc["teacher"]["Forward memory b256 (MB)"] == 200.0
    speed = report.speed_table(results, "cifar10").set_index("Method")
    assert speed.loc["teacher"]["PyTorch b1, 1 thr (ms)"] == 10.0
    assert speed.loc["teacher"]["ORT b256, 1 thr (img/s)"] == "1,000"
    assert report.speed_table(results, "cifar100").empty


def test_measurement_env_numbers(results):
    numbers = report.measurement_env_numbers(results)
    assert numbers["measure_cpu_model"] == "Test CPU"
    assert numbers["measure_threads_all"] == "2"
    assert numbers["measure_max_load"] == 1.5
    assert numbers["measure_runtime_rss_mb"] == 500.0


def test_old_runs_without_measurements_give_nan(results):
    old = results.drop(columns=["latency_ms_batch1_ort", "throughput_ips_batch256_ort", "measurement_env"])
    table = report.drone_table(old)
    assert table["ORT b1 (fps)"].isna().all()
    assert set(table["Keeps up with 30 fps (ORT)"]) == {"n/a"}
    assert report.measurement_env_numbers(old)["measure_cpu_model"] == "n/a"


def test_empty_results_glue_every_key(results):
    empty = pd.DataFrame(columns=list(runs.REQUIRED_METRICS) + ["order", "config_id"])
    for function in (report.drone_numbers, report.pruned_native_numbers, report.measurement_env_numbers):
        full, none = function(results), function(empty)
        assert set(full) == set(none), function.__name__
    assert set(report.compression_numbers(results, "smoke")) == set(report.compression_numbers(empty, "smoke"))
    assert report.drone_numbers(empty)["drone_models"] == 0
    assert report.drone_table(empty).empty
    assert report.pruned_native_table(empty).empty


def test_seeds_note_per_profile():
    assert report.seeds_note("paper") == "mean ± std over 3 seeds"
    assert report.seeds_note("quick") == "1 seed per configuration, so no std"


def test_tradeoff_plot_has_one_marker_per_label(results):
    fig = report.plot_tradeoff(results, "cifar10", "latency", "smoke")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["teacher (scratch)", "scratch", "KD", "one-shot", "iterative", "prune+KD", "Pareto front"]
    with pytest.raises(ValueError, match="unknown trade-off axis 'speed'"):
        report.plot_tradeoff(results, "cifar10", "speed", "smoke")


def test_pair_curves_show_loss_and_accuracy(results, tmp_path):
    for run_id in results["run_id"]:
        history = [{"epoch": e, "val_loss": 2.0 - e / 10, "val_acc": 10.0 * e} for e in (1, 2)]
        runs.atomic_write_text(tmp_path / "smoke" / run_id / "history.csv", runs.history_to_csv(history))
    fig = report.plot_pair_curves(results, "cifar10", tmp_path, "smoke")
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_ylabel() == "validation loss"
    assert acc_ax.get_ylabel() == "validation accuracy (%)"
    # Seed 0 only: teacher, scratch, KD and three pruning runs.
    assert len(loss_ax.get_lines()) == len(acc_ax.get_lines()) == 6
    labels = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert labels == ["teacher (WRN-10-2)", "scratch (WRN-10-1)", "KD", "pruning: one-shot, l1",
                      "pruning: iterative 2 x 1 ep, l1", "pruning + KD: one-shot, l1"]
    ticks = [tick for tick in loss_ax.get_xticks() if 1 <= tick <= 2]
    assert ticks == [1.0, 2.0]


def test_drone_fps_plot_draws_both_runtimes(results):
    fig = report.plot_drone_fps(results, "cifar10", "smoke")
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 6
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "WRN-10-2 (teacher)"


def test_run_page_table_lists_measurements(results):
    metrics = dict(results.iloc[4])
    metrics.update({"profile": "smoke", "epochs": 1, "test_loss": 1.0, "device": "cpu", "torch_version": "2.x",
                    "git_commit": "abc", "pruned_to_native_latency_ratio_batch1_cpu": 1.25})
    table = report.run_metrics_table(metrics)
    assert table.loc["method", "Value"] == "pruning: one-shot, l1"
    assert table.loc["pruned / native latency, batch 1, 1 CPU thread", "Value"] == "1.250"
    assert table.loc["ONNX Runtime latency, batch 1, 1 thread (ms, median)", "Value"] == "0.625"
