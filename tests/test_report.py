"""Report functions on a synthetic results table of the `paper` profile (cifar10 runs only)."""

import math
import re

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from wrnlib import report
from wrnlib.grid import get_profile

PAPER = get_profile("paper")
TEACHER_ACC = {10: 95.0, 4: 94.0, 2: 93.0, 1: 90.0}


def _rounds(final_accs, after_pruning):
    return [{"round": r + 1, "stream": [16, 32, 64], "inner": [16] * 12, "params": 1000 - r, "epochs": 20,
             "test_acc_after_pruning": before, "test_acc": after}
            for r, (before, after) in enumerate(zip(after_pruning, final_accs))]


def _iterative_rounds(teacher_acc, rounds, seed_offset=0.0):
    # Each round costs exactly 1.0 %p before fine-tuning and regains 0.5 %p after it.
    after, before, acc = [], [], teacher_acc
    for _ in range(rounds):
        before.append(acc - 1.0)
        acc = acc - 0.5
        after.append(acc + seed_offset)
    return _rounds(after, before)


def _row(order, run_id, method, width, acc, teacher=None, seed=0, **extra):
    row = {
        "run_id": run_id, "profile": "paper", "dataset": run_id.split("-")[0], "method": method, "depth": 28,
        "width": width, "model": f"WRN-28-{width}", "teacher_run_id": teacher, "seed": seed, "epochs": 200,
        "test_acc": acc, "test_loss": 1.0, "params": 1000 * width, "macs": 1e6 * width, "train_seconds": 10.0,
        "latency_ms_batch1_cpu": 1.0 + width, "order": order, "config_id": run_id.rsplit("-s", 1)[0],
    }
    row.update(extra)
    return row


def _prune(order, pair, tag, acc, seed=0, **settings):
    teacher_width, student_width = pair
    teacher = f"cifar10-scratch-wrn28-{teacher_width}-s{seed}"
    run_id = f"cifar10-prune-wrn28-{teacher_width}-to-{student_width}-{tag}-s{seed}"
    fields = {"criterion": "l1", "schedule": "one-shot", "rounds": 1, "epochs_per_round": 200, "use_kd": False,
              "extra_params": 256 if teacher_width == 2 else 0}
    fields.update(settings)
    return _row(order, run_id, "prune", student_width, acc, teacher, seed, **fields)


@pytest.fixture
def results():
    rows = [_row(i, f"cifar10-scratch-wrn28-{w}-s0", "scratch", w, TEACHER_ACC[w]) for i, w in enumerate((10, 4, 2, 1))]
    for pair, kd in (((10, 2), 94.0), ((4, 2), 93.5), ((2, 1), 91.0)):
        rows.append(_row(len(rows), f"cifar10-kd-wrn28-{pair[0]}-to-{pair[1]}-s0", "kd", pair[1], kd,
                         f"cifar10-scratch-wrn28-{pair[0]}-s0"))
    for pair, acc, after in (((10, 2), 93.8, 20.0), ((4, 2), 93.2, 30.0), ((2, 1), 90.5, 40.0)):
        rows.append(_prune(len(rows), pair, "l1-oneshot", acc, test_acc_after_pruning=after,
                           round_accuracy=_rounds([acc], [after])))
    rows.append(_prune(len(rows), (10, 2), "l2-oneshot", 93.6, criterion="l2", test_acc_after_pruning=22.0,
                       round_accuracy=_rounds([93.6], [22.0])))
    rows.append(_prune(len(rows), (10, 2), "l1-oneshot-kd", 94.4, use_kd=True, test_acc_after_pruning=20.0,
                       round_accuracy=_rounds([94.4], [20.0])))
    for seed, acc, offset in ((0, 94.0, 0.0), (1, 94.2, 1.0)):
        rows.append(_prune(len(rows), (10, 2), "l1-iter10x20", acc, seed=seed, schedule="iterative", rounds=10,
                           epochs_per_round=20, test_acc_after_pruning=94.0,
                           round_accuracy=_iterative_rounds(95.0, 10, offset)))
    rows.append(_prune(len(rows), (10, 2), "l1-iter10x40", 94.5, schedule="iterative", rounds=10, epochs_per_round=40,
                       test_acc_after_pruning=94.0, round_accuracy=_iterative_rounds(95.0, 10)))
    # The seed-1 iterative run needs its own teacher row for the seed to count.
    rows.append(_row(len(rows), "cifar10-scratch-wrn28-10-s1", "scratch", 10, 95.0, seed=1))
    return pd.DataFrame(rows)


def test_pair_rows_use_canonical_pruning(results):
    rows = report.pair_rows(results, "cifar10", PAPER)
    assert [r["prune"] for r in rows] == [93.8, 93.2, 90.5]
    assert [r["after_pruning"] for r in rows] == [20.0, 30.0, 40.0]
    assert rows[2]["extra_params"] == 256
    numbers = report.discussion_numbers(results, PAPER)
    assert numbers["cifar10_prune_minus_kd"] == pytest.approx(((93.8 - 94.0) + (93.2 - 93.5) + (90.5 - 91.0)) / 3)


def test_schedule_table_values(results):
    table = report.schedule_table(results, "cifar10", PAPER)
    assert list(table.columns) == ["Teacher -> student", "One-shot, 200 ep (%)", "Iterative 10 x 20 ep (%)",
                                   "Iterative 10 x 20 - one-shot (%p)", "Iterative 10 x 40 ep (%)",
                                   "Iterative 10 x 40 - one-shot (%p)"]
    first = table.iloc[0]
    assert first["Teacher -> student"] == "WRN-28-10 -> WRN-28-2"
    assert first["One-shot, 200 ep (%)"] == 93.8
    assert first["Iterative 10 x 20 ep (%)"] == pytest.approx(94.1)   # mean of seeds 0 and 1
    assert first["Iterative 10 x 20 - one-shot (%p)"] == pytest.approx(0.3)
    assert first["Iterative 10 x 40 - one-shot (%p)"] == pytest.approx(0.7)
    assert math.isnan(table.iloc[1]["Iterative 10 x 20 ep (%)"])
    assert table.iloc[1]["One-shot, 200 ep (%)"] == 93.2


def test_criterion_table_values(results):
    first = report.criterion_table(results, "cifar10", PAPER).iloc[0]
    assert first["L1, before fine-tune (%)"] == 20.0
    assert first["L2, before fine-tune (%)"] == 22.0
    assert first["L1 + fine-tune (%)"] == 93.8
    assert first["L2 + fine-tune (%)"] == 93.6
    assert first["L2 - L1 (%p)"] == pytest.approx(-0.2)


def test_prune_kd_table_values(results):
    table = report.prune_kd_table(results, "cifar10", PAPER)
    first = table.iloc[0]
    assert first["KD student (%)"] == 94.0
    assert first["Pruning (%)"] == 93.8
    assert first["Pruning + KD (%)"] == 94.4
    assert first["Pruning + KD - pruning (%p)"] == pytest.approx(0.6)
    assert first["Pruning + KD - KD (%p)"] == pytest.approx(0.4)
    assert math.isnan(table.iloc[2]["Pruning + KD (%)"])


def test_pruning_numbers_values(results):
    numbers = report.pruning_numbers(results, PAPER)
    assert numbers["iterative_label"] == "10 round × 20 epoch"
    assert numbers["iterative_epochs"] == 200
    assert numbers["long_iterative_label"] == "10 round × 40 epoch"
    assert numbers["long_iterative_epochs"] == 400
    assert numbers["oneshot_epochs"] == 200
    assert numbers["cifar10_iterative_minus_oneshot"] == pytest.approx(0.3)
    assert numbers["cifar10_iterative_pairs"] == 1
    assert numbers["cifar10_iterative_wins"] == 1
    assert numbers["cifar10_long_iterative_minus_oneshot"] == pytest.approx(0.7)
    assert numbers["cifar10_l2_minus_l1"] == pytest.approx(-0.2)
    assert numbers["cifar10_criterion_pairs"] == 1
    assert numbers["cifar10_prunekd_minus_prune"] == pytest.approx(0.6)
    assert numbers["cifar10_prunekd_minus_kd"] == pytest.approx(0.4)
    assert numbers["cifar10_prunekd_pairs"] == 1
    # Seed 0 loses exactly 1.0 %p per pruning step. Seed 1 finishes each round 1.0 %p higher, so its
    # steps from round 2 on cost 2.0 %p. The mean is (10 x -1.0 + (-1.0 + 9 x -2.0)) / 20.
    assert numbers["cifar10_iterative_round_drop"] == pytest.approx(-1.45)
    assert numbers["cifar10_oneshot_drop"] == pytest.approx(((20 - 95) + (30 - 94) + (40 - 93)) / 3)
    assert math.isnan(numbers["cifar100_iterative_minus_oneshot"])
    assert numbers["cifar100_iterative_pairs"] == 0


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_pruning_numbers_same_keys_without_runs(results, name):
    empty = report.load_results("/nonexistent-runs", name)
    numbers = report.pruning_numbers(empty, name)
    assert set(numbers) == set(report.pruning_numbers(results, PAPER))
    assert math.isnan(numbers["cifar10_l2_minus_l1"])
    assert numbers["cifar100_prunekd_pairs"] == 0
    for table in (report.schedule_table, report.criterion_table, report.prune_kd_table):
        assert len(table(empty, "cifar100", name)) == len(get_profile(name).pairs)


def test_round_accuracy_frame_rows(results):
    frame = report.round_accuracy_frame(results, "cifar10", PAPER)
    iterative = frame[frame["variant"] == "pruning: iterative 10 x 20 ep, l1"]
    assert list(iterative["round"]) == list(range(1, 11))
    assert iterative["pair"].unique().tolist() == ["WRN-28-10 -> WRN-28-2"]
    # Round 1 after fine-tuning: 94.5 (seed 0) and 95.5 (seed 1).
    assert iterative.iloc[0]["acc_after_fine_tune"] == pytest.approx(95.0)
    assert iterative.iloc[0]["acc_after_pruning"] == pytest.approx(94.0)
    assert len(frame[frame["variant"] == "pruning: one-shot, l1"]) == 3
    assert len(frame[frame["variant"] == "pruning + KD: one-shot, l1"]) == 1


def test_plot_round_accuracy_lines(results):
    fig = report.plot_round_accuracy(results, "cifar10", PAPER)
    first, second, _ = fig.axes
    labels = [line.get_label() for line in first.get_lines()]
    assert labels == ["teacher", "one-shot + fine-tune", "iterative 10 x 20 ep: after pruning",
                      "iterative 10 x 20 ep: after fine-tune", "iterative 10 x 40 ep: after pruning",
                      "iterative 10 x 40 ep: after fine-tune"]
    # After fine-tuning, seeds 0 and 1 reach 95.0 - 0.5 r and 96.0 - 0.5 r.
    assert list(first.get_lines()[3].get_ydata()) == pytest.approx([95.5 - 0.5 * r for r in range(1, 11)])
    assert [line.get_label() for line in second.get_lines()] == ["teacher", "one-shot + fine-tune"]


def test_method_labels_name_variants(results):
    methods = report.results_table(results, "cifar10")["Method"].tolist()
    assert "pruning: one-shot, l1" in methods
    assert "pruning: one-shot, l2" in methods
    assert "pruning + KD: one-shot, l1" in methods
    assert "pruning: iterative 10 x 20 ep, l1" in methods
    assert "pruning: iterative 10 x 40 ep, l1" in methods
    assert report.run_label({"method": "kd"}) == "KD"


def test_tradeoff_plot_marks_each_pruning_schedule(results):
    fig = report.plot_tradeoff(results, "cifar10", "params", PAPER)
    collections = {c.get_label(): c for c in fig.axes[0].collections}
    # One point per configuration (seeds averaged): L1 one-shot for three pairs plus one L2 run.
    assert len(collections["one-shot"].get_offsets()) == 4
    assert len(collections["iterative"].get_offsets()) == 2
    assert len(collections["prune+KD"].get_offsets()) == 1
    assert len(collections["KD"].get_offsets()) == 3


def test_prune_variant_of_row(results):
    canonical = results[results["run_id"] == "cifar10-prune-wrn28-10-to-2-l1-oneshot-s0"].iloc[0]
    assert report.prune_variant(canonical, PAPER).canonical
    longer = results[results["run_id"] == "cifar10-prune-wrn28-10-to-2-l1-iter10x40-s0"].iloc[0]
    assert report.prune_variant(longer, PAPER).tag == "l1-iter10x40"
    scratch = results[results["method"] == "scratch"].iloc[0]
    assert report.prune_variant(scratch, PAPER) is None


def test_styled_table_pads_and_aligns_numbers():
    table = pd.DataFrame({"Method": ["scratch"], "Params": ["7,435,354"], "MACs (M)": [996.6]})
    html = report.styled(table, "caption").to_html()
    assert "padding: 0.25em 0.6em" in html
    numeric_cells = re.findall(r"#(T_\w+_row0_col2)\s*\{\s*text-align: right", html)
    assert len(numeric_cells) == 1
    assert "row0_col0 {\n  text-align" not in html
    assert "996.60" in html


def test_profile_table_html_keeps_long_values():
    table = report.profile_table("paper")
    html = table._repr_html_()
    longest = max(table["Value"].astype(str), key=len)
    assert len(longest) > 50
    assert longest.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;") in html
