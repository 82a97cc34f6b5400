"""Tables, figures and derived numbers for the notebooks and the book.

Everything here reads the run store; nothing is typed in by hand. Accuracies
are in %, differences between accuracies in percentage points (%p), MACs in
millions (M) and latencies in milliseconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from . import runs
from .grid import CANONICAL_PRUNING, Pair, Profile, PruneVariant, get_profile

# Notebooks display the settings and metrics tables as plain DataFrames. Without this option pandas
# cuts their long text cells (pairs, pruning variants, hardware) to 50 characters with "...".
pd.set_option("display.max_colwidth", None)

__all__ = [
    "CAMERA_FPS",
    "BACKLOG_FRAMES",
    "add_labels",
    "compression_numbers",
    "compression_table",
    "config_means",
    "discussion_numbers",
    "drone_numbers",
    "drone_table",
    "add_labels",
    "criterion_table",
    "footprint_table",
    "iterative_variants",
    "load_history",
    "load_results",
    "measurement_env_numbers",
    "method_label",
    "pair_table",
    "plot_drone_fps",
    "plot_round_accuracy",
    "plot_run_rounds",
    "prune_kd_table",
    "prune_variant",
    "pruning_numbers",
    "round_accuracy_frame",
    "run_label",
    "run_round_table",
    "schedule_table",
    "plot_history",
    "plot_pair_curves",
    "plot_tradeoff",
    "profile_label",
    "profile_table",
    "pruned_native_numbers",
    "pruned_native_table",
    "results_table",
    "seeds_note",
    "speed_table",
]

CAMERA_FPS = 30             # frames per second of the on-board camera the drone chapter assumes
BACKLOG_FRAMES = 1_000_000  # frames in the recorded backlog of the drone chapter

# Labels of non-pruning methods in `run_label`.
METHOD_LABELS = {"scratch": "scratch", "kd": "KD", "prune": "pruning: one-shot, l1"}
# Labels of `method_label`, in legend order, with their plot marker and colour.
LABELS = ("teacher", "scratch", "KD", "one-shot", "iterative", "prune+KD")
MARKERS = {"teacher": ("s", "black"), "scratch": ("o", "tab:blue"), "KD": ("^", "tab:orange"),
           "one-shot": ("D", "tab:green"), "iterative": ("v", "tab:red"), "prune+KD": ("P", "tab:purple")}


# --------------------------------------------------------------------------
# Method labels
# --------------------------------------------------------------------------

def _is_true(value) -> bool:
    # Missing metrics arrive as NaN, which bool() would call true.
    return value is True or (isinstance(value, (bool, np.bool_)) and bool(value)) or value in ("true", "True")


def method_label(method: str, schedule=None, use_kd=None, is_teacher: bool = False) -> str:
    """Return the label of a run: teacher, scratch, KD, one-shot, iterative or prune+KD.

    A pruning run fine-tuned with KD is "prune+KD" whatever its schedule;
    otherwise its `schedule` names it ("one-shot" when missing).
    """
    if method == "scratch":
        return "teacher" if is_teacher else "scratch"
    if method == "kd":
        return "KD"
    if method == "prune":
        if _is_true(use_kd):
            return "prune+KD"
        return "iterative" if schedule == "iterative" else "one-shot"
    raise ValueError(f"unknown method {method!r} in the results: expected scratch, kd or prune")


def teacher_widths(results: pd.DataFrame) -> set[int]:
    """Return the widths trained from scratch only as teachers, never as a student's width."""
    if results.empty:
        return set()
    distilled = results[results["method"] != "scratch"]
    teacher_ids = set(distilled["teacher_run_id"].dropna().astype(str))
    teachers = results[(results["method"] == "scratch") & results["run_id"].isin(teacher_ids)]
    return {int(w) for w in teachers["width"]} - {int(w) for w in distilled["width"]}


def add_labels(results: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of `results` with `label` (`method_label`) and `run_label` columns.

    `run_label` is `run_label(row)` for pruning runs (it names the variant) and
    `label` for the others, so tables can tell a teacher from a scratch student.
    """
    labelled = results.copy()
    if labelled.empty:
        labelled["label"] = pd.Series(dtype=object)
        labelled["run_label"] = pd.Series(dtype=object)
        return labelled
    teachers = teacher_widths(labelled)
    schedule = labelled["schedule"] if "schedule" in labelled else pd.Series(None, index=labelled.index)
    use_kd = labelled["use_kd"] if "use_kd" in labelled else pd.Series(None, index=labelled.index)
    labelled["label"] = [
        method_label(m, s, k, is_teacher=(m == "scratch" and int(w) in teachers))
        for m, s, k, w in zip(labelled["method"], schedule, use_kd, labelled["width"])
    ]
    # Tables name a pruning run by its variant and every other run by its role (teacher, scratch, KD).
    labelled["run_label"] = [
        run_label(row) if row["method"] == "prune" else label
        for (_, row), label in zip(labelled.iterrows(), labelled["label"])
    ]
    return labelled


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

def load_results(runs_dir: str | Path | None, profile: str) -> pd.DataFrame:
    """Return one row per finished run of `profile` (metrics.json complete), in plan order."""
    from .grid import plan_runs

    root = runs.runs_root(runs_dir)
    rows = []
    for order, spec in enumerate(plan_runs(profile)):
        metrics = runs.read_metrics(runs.run_dir(root, profile, spec.run_id))
        if metrics is None:
            continue
        row = dict(metrics)
        row["order"] = order
        row["config_id"] = spec.run_id.rsplit("-s", 1)[0]
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(runs.REQUIRED_METRICS) + ["order", "config_id"])
    return frame


def load_history(runs_dir: str | Path | None, profile: str, run_id: str) -> pd.DataFrame:
    """Return the per-epoch history of one run as a DataFrame."""
    rows = runs.read_history(runs.run_dir(runs.runs_root(runs_dir), profile, run_id))
    return pd.DataFrame(rows)


def profile_label(profile: Profile | str) -> str:
    """Return e.g. "quick profile (miniature: WRN-10, 2,000 training images)"."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    if not profile.miniature:
        return f"{profile.name} profile (WRN-{profile.depth}, full training set, {profile.epochs} epochs)"
    images = "all" if profile.train_subset is None else f"{profile.train_subset:,}"
    epochs = f"{profile.epochs} epoch" + ("" if profile.epochs == 1 else "s")
    return f"{profile.name} profile (miniature: WRN-{profile.depth}, {images} training images, {epochs})"


def profile_table(profile: Profile | str) -> pd.DataFrame:
    """Return the settings of a profile as a two-column table."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    return pd.DataFrame(profile.settings_rows(), columns=["Setting", "Value"]).set_index("Setting")


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------

def styled(table: pd.DataFrame, caption: str, precision: int = 2):
    """Return `table` as a pandas Styler with a caption, no index column and fixed decimals."""
    # The book theme gives these tables no cell padding, so neighbouring numeric columns (parameters,
    # MACs) would run together. Cells do not wrap, so model names such as WRN-10-10 stay on one line,
    # and numbers are right-aligned to line up their digits.
    cell_padding = [
        {"selector": "", "props": [("font-size", "0.85em")]},
        {"selector": "th, td", "props": [("padding", "0.25em 0.6em")]},
        {"selector": "td", "props": [("white-space", "nowrap")]},
    ]
    styler = table.style.format(precision=precision, na_rep="n/a").hide(axis="index").set_caption(caption)
    styler = styler.set_table_styles(cell_padding)
    numeric = table.select_dtypes("number").columns
    return styler.set_properties(subset=list(numeric), **{"text-align": "right"})


def _mean_std(values: pd.Series, digits: int = 2) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _teacher_label(results: pd.DataFrame, teacher_run_id) -> str:
    if not isinstance(teacher_run_id, str):
        return ""
    match = results[results["run_id"] == teacher_run_id]
    return match["model"].iloc[0] if not match.empty else teacher_run_id


def results_table(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Return the results of one data set, one row per configuration (seeds averaged)."""
    columns = ["Method", "Model", "Teacher", "Test acc (%)", "Seeds", "Params", "MACs (M)",
               "Latency b1 CPU 1 thread (ms)", "Train time (s)"]
    subset = results[results["dataset"] == dataset] if not results.empty else results
    if subset.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    subset = add_labels(results)
    subset = subset[subset["dataset"] == dataset]
    for _, group in subset.sort_values("order").groupby("config_id", sort=False):
        first = group.iloc[0]
        rows.append({
            "Method": first["run_label"],
            "Model": first["model"],
            "Teacher": _teacher_label(results, first["teacher_run_id"]),
            "Test acc (%)": _mean_std(group["test_acc"]),
            "Seeds": len(group),
            "Params": f"{int(first['params']):,}",
            "MACs (M)": f"{first['macs'] / 1e6:,.1f}",
            "Latency b1 CPU 1 thread (ms)": _mean_std(group["latency_ms_batch1_cpu"]),
            "Train time (s)": _mean_std(group["train_seconds"], 0),
        })
    return pd.DataFrame(rows, columns=columns)


def _mean_acc(results: pd.DataFrame, **match) -> float:
    subset = results
    for key, value in match.items():
        subset = subset[subset[key] == value]
    return float(subset["test_acc"].mean()) if not subset.empty else math.nan


def pair_rows(results: pd.DataFrame, dataset: str, profile: Profile | str) -> list[dict]:
    """Return per (teacher, student) pair the mean accuracies of every method, as numbers.

    Node pruning here is the canonical variant (one-shot, L1, no KD); `schedule_table`,
    `criterion_table` and `prune_kd_table` compare the other variants.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    subset = results[results["dataset"] == dataset] if not results.empty else results
    rows = []
    for pair in profile.pairs:
        if subset.empty:
            teacher = scratch = kd = pruned = after_pruning = math.nan
            extra_params = math.nan
        else:
            teacher = _mean_acc(subset, method="scratch", width=pair.teacher_width)
            scratch = _mean_acc(subset, method="scratch", width=pair.student_width)
            students = subset[subset["teacher_run_id"].astype(str).str.contains(
                f"-wrn{profile.depth}-{pair.teacher_width}-s")]
            kd = _mean_acc(students, method="kd", width=pair.student_width)
            prune_runs = _prune_runs(subset, profile, pair, CANONICAL_PRUNING)
            pruned = float(prune_runs["test_acc"].mean()) if not prune_runs.empty else math.nan
            after_pruning = (float(prune_runs["test_acc_after_pruning"].mean())
                             if not prune_runs.empty and "test_acc_after_pruning" in prune_runs else math.nan)
            extra_params = (float(prune_runs["extra_params"].iloc[0])
                            if not prune_runs.empty and "extra_params" in prune_runs else math.nan)
        rows.append({
            "pair": f"WRN-{profile.depth}-{pair.teacher_width} -> WRN-{profile.depth}-{pair.student_width}",
            "teacher_width": pair.teacher_width,
            "student_width": pair.student_width,
            "pruning_ratio": pair.pruning_ratio,
            "teacher": teacher,
            "scratch": scratch,
            "kd": kd,
            "prune": pruned,
            "after_pruning": after_pruning,
            "extra_params": extra_params,
        })
    return rows


def pair_table(results: pd.DataFrame, dataset: str, profile: Profile | str) -> pd.DataFrame:
    """Return KD vs node pruning per pair, with differences in %p."""
    table = []
    for row in pair_rows(results, dataset, profile):
        table.append({
            "Teacher -> student": row["pair"],
            "Pruning ratio": row["pruning_ratio"],
            "Teacher acc (%)": row["teacher"],
            "Scratch student (%)": row["scratch"],
            "KD student (%)": row["kd"],
            "Pruned, before fine-tune (%)": row["after_pruning"],
            "Pruned + fine-tune (%)": row["prune"],
            "KD - scratch (%p)": row["kd"] - row["scratch"],
            "Pruning - scratch (%p)": row["prune"] - row["scratch"],
            "Pruning - KD (%p)": row["prune"] - row["kd"],
            "Extra params vs native": row["extra_params"],
        })
    return pd.DataFrame(table).round(2)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def discussion_numbers(results: pd.DataFrame, profile: Profile | str) -> dict:
    """Return the numbers the discussion chapter quotes, keyed by glue name.

    Differences are means over the profile's pairs in %p; NaN where a run is missing.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    numbers: dict = {}
    for dataset in profile.datasets:
        rows = pair_rows(results, dataset, profile)
        kd_gain = _nanmean([r["kd"] - r["scratch"] for r in rows])
        prune_gain = _nanmean([r["prune"] - r["scratch"] for r in rows])
        prune_vs_kd = _nanmean([r["prune"] - r["kd"] for r in rows])
        drop = _nanmean([r["after_pruning"] - r["teacher"] for r in rows])
        wins = sum(1 for r in rows if r["prune"] > r["kd"])
        numbers[f"{dataset}_kd_minus_scratch"] = kd_gain
        numbers[f"{dataset}_prune_minus_scratch"] = prune_gain
        numbers[f"{dataset}_prune_minus_kd"] = prune_vs_kd
        numbers[f"{dataset}_pruning_drop"] = drop
        numbers[f"{dataset}_prune_wins"] = wins
        numbers[f"{dataset}_pair_count"] = len(rows)
        if math.isnan(prune_vs_kd):
            better = "n/a"
        elif prune_vs_kd > 0:
            better = "node pruning"
        else:
            better = "KD"
        numbers[f"{dataset}_better_method"] = better
    extra = [r["extra_params"] for d in profile.datasets for r in pair_rows(results, d, profile)
             if not math.isnan(r["extra_params"]) and r["extra_params"] > 0]
    numbers["non_native_pruned_extra_params"] = int(max(extra)) if extra else 0
    return numbers


def drone_table(results: pd.DataFrame, camera_fps: float = CAMERA_FPS,
                backlog_frames: int = BACKLOG_FRAMES) -> pd.DataFrame:
    """Return, per configuration, frame rates on 1 CPU thread and the time to clear a backlog.

    Frame rates are 1000 / batch-1 latency (ms) with PyTorch and with ONNX
    Runtime; the backlog time is `backlog_frames` / batch-256 throughput.
    Every figure uses one intra-op thread; a quantity a run did not measure
    is NaN (shown as n/a).
    """
    names = _drone_columns(camera_fps, backlog_frames)
    columns = ["Dataset", "Method", "Model", "Test acc (%)", "PyTorch b1 (fps)", "ORT b1 (fps)",
               names["keeps_up"], names["keeps_up_ort"], names["backlog"], names["backlog_ort"]]
    if results.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for _, row in config_means(results).iterrows():
        torch_fps = 1000.0 / row["latency_ms_batch1_cpu"]
        ort_fps = 1000.0 / row["latency_ms_batch1_ort"]
        rows.append([
            row["dataset"], row["run_label"], row["model"], row["test_acc"],
            torch_fps, ort_fps, _keeps_up(torch_fps, camera_fps), _keeps_up(ort_fps, camera_fps),
            backlog_frames / row["throughput_ips_batch256_cpu"] / 3600.0,
            backlog_frames / row["throughput_ips_batch256_ort"] / 3600.0,
        ])
    return pd.DataFrame(rows, columns=columns)


def _drone_columns(camera_fps: float, backlog_frames: int) -> dict[str, str]:
    frames = f"{backlog_frames / 1e6:g}M" if backlog_frames % 100_000 == 0 else f"{backlog_frames:,}"
    return {
        "keeps_up": f"Keeps up with {camera_fps:g} fps (PyTorch)",
        "keeps_up_ort": f"Keeps up with {camera_fps:g} fps (ORT)",
        "backlog": f"{frames} frames, PyTorch b256 (h)",
        "backlog_ort": f"{frames} frames, ORT b256 (h)",
    }


def _keeps_up(fps: float, camera_fps: float) -> str:
    if math.isnan(fps):
        return "n/a"
    return "yes" if fps >= camera_fps else "no"


def _best_realtime(table: pd.DataFrame, fps_column: str, camera_fps: float) -> tuple[str, float]:
    fast = table[table[fps_column] >= camera_fps]
    if fast.empty:
        return "none", math.nan
    best = fast.loc[fast["Test acc (%)"].idxmax()]
    return f"{best['Model']} ({best['Method']})", float(best["Test acc (%)"])


def drone_numbers(results: pd.DataFrame, camera_fps: float = CAMERA_FPS,
                  backlog_frames: int = BACKLOG_FRAMES, datasets: tuple[str, ...] = ("cifar10", "cifar100")) -> dict:
    """Return the numbers the drone chapter quotes, keyed by glue name.

    Frame rates are on 1 CPU thread at batch 1; backlog hours use the
    batch-256 throughput on 1 thread. Keys of quantities without runs hold
    NaN, 0 or "n/a", so every profile glues every key.
    """
    table = drone_table(results, camera_fps, backlog_frames)
    names = _drone_columns(camera_fps, backlog_frames)
    numbers = {"drone_camera_fps": camera_fps, "drone_backlog_frames": backlog_frames,
               "drone_models": int(len(table))}
    numbers["drone_realtime_models"] = int((table[names["keeps_up"]] == "yes").sum())
    numbers["drone_ort_realtime_models"] = int((table[names["keeps_up_ort"]] == "yes").sum())

    def extreme(column: str, pick: str) -> tuple[str, float]:
        values = table[column].dropna() if not table.empty else pd.Series(dtype=float)
        if values.empty:
            return "n/a", math.nan
        row = table.loc[values.idxmax() if pick == "max" else values.idxmin()]
        return f"{row['Model']} ({row['Method']}, {row['Dataset']})", float(row[column])

    numbers["drone_fastest_model"], numbers["drone_fastest_fps"] = extreme("PyTorch b1 (fps)", "max")
    numbers["drone_slowest_model"], numbers["drone_slowest_fps"] = extreme("PyTorch b1 (fps)", "min")
    numbers["drone_speedup"] = numbers["drone_fastest_fps"] / numbers["drone_slowest_fps"]
    numbers["drone_ort_fastest_model"], numbers["drone_ort_fastest_fps"] = extreme("ORT b1 (fps)", "max")
    numbers["drone_ort_slowest_model"], numbers["drone_ort_slowest_fps"] = extreme("ORT b1 (fps)", "min")
    ratio = (table["ORT b1 (fps)"] / table["PyTorch b1 (fps)"]).dropna() if not table.empty else pd.Series(dtype=float)
    numbers["drone_ort_over_pytorch_median"] = float(ratio.median()) if not ratio.empty else math.nan
    numbers["drone_ort_faster_models"] = int((ratio > 1.0).sum())
    numbers["drone_backlog_fastest_model"], numbers["drone_backlog_fastest_hours"] = extreme(names["backlog"], "min")
    numbers["drone_backlog_slowest_model"], numbers["drone_backlog_slowest_hours"] = extreme(names["backlog"], "max")
    numbers["drone_backlog_speedup"] = numbers["drone_backlog_slowest_hours"] / numbers["drone_backlog_fastest_hours"]
    numbers["drone_backlog_ort_fastest_model"], numbers["drone_backlog_ort_fastest_hours"] = \
        extreme(names["backlog_ort"], "min")
    numbers["drone_backlog_ort_slowest_model"], numbers["drone_backlog_ort_slowest_hours"] = \
        extreme(names["backlog_ort"], "max")
    for dataset in datasets:
        part = table[table["Dataset"] == dataset] if not table.empty else table
        for suffix, column in (("", "PyTorch b1 (fps)"), ("_ort", "ORT b1 (fps)")):
            model, acc = _best_realtime(part, column, camera_fps) if not part.empty else ("none", math.nan)
            numbers[f"drone_{dataset}_best_realtime_model{suffix}"] = model
            numbers[f"drone_{dataset}_best_realtime_acc{suffix}"] = acc
    return numbers


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------

def _pyplot():
    # Imported on use: pyplot picks the inline backend inside a kernel and Agg on a headless shell.
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: pd.DataFrame, title: str = "", val_is_test: bool = False):
    """Plot loss and accuracy per epoch (train and validation) and return the Figure."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    val_name = "test (used as validation)" if val_is_test else "validation"
    if not history.empty:
        ax_loss.plot(history["epoch"], history["train_loss"], "o-", label="train")
        ax_loss.plot(history["epoch"], history["val_loss"], "s-", label=val_name)
        ax_acc.plot(history["epoch"], history["train_acc"], "o-", label="train")
        ax_acc.plot(history["epoch"], history["val_acc"], "s-", label=val_name)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return indices of the points no other point beats (smaller or equal x, larger or equal y), by x."""
    order = np.lexsort((-y, x))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.array(front, dtype=int)


TRADEOFF_AXES = {
    "params": ("params", "parameters", 1.0),
    "macs": ("macs", "MACs (millions)", 1e-6),
    "latency": ("latency_ms_batch1_cpu", "batch-1 latency on 1 CPU thread (ms)", 1.0),
}


def plot_tradeoff(results: pd.DataFrame, dataset: str, axis: str, profile: Profile | str):
    """Plot test accuracy against params, MACs or latency, one marker per method, Pareto front drawn.

    Node pruning is shown by its canonical variant (one-shot, L1, no KD) only;
    the other variants have the same layout and so the same cost.
    """
    plt = _pyplot()
    profile = get_profile(profile) if isinstance(profile, str) else profile
    if axis not in TRADEOFF_AXES:
        raise ValueError(f"unknown trade-off axis {axis!r}: choose one of {', '.join(TRADEOFF_AXES)}")
    column, label, scale = TRADEOFF_AXES[axis]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    subset = add_labels(results)
    subset = subset[subset["dataset"] == dataset] if not subset.empty else subset
    if not subset.empty:
        grouped = subset.groupby("config_id", sort=False).agg(
            x=(column, "mean"), y=("test_acc", "mean"), kind=("label", "first"), model=("model", "first"))
        grouped["x"] = grouped["x"] * scale
        for kind in [k for k in LABELS if k in set(grouped["kind"])]:
            part = grouped[grouped["kind"] == kind]
            marker, color = MARKERS[kind]
            name = "teacher (scratch)" if kind == "teacher" else kind
            ax.scatter(part["x"], part["y"], marker=marker, color=color, s=50, label=name, zorder=3)
        front = pareto_front(grouped["x"].to_numpy(float), grouped["y"].to_numpy(float))
        ax.plot(grouped["x"].to_numpy()[front], grouped["y"].to_numpy()[front], "--", color="gray",
                label="Pareto front", zorder=2)
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy vs {axis} [{profile.name}{' miniature' if profile.miniature else ''}]")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_pair_curves(results: pd.DataFrame, dataset: str, runs_dir: str | Path | None, profile: Profile | str):
    """Plot validation loss and accuracy per epoch of each pair's runs, one column per pair.

    A column shows the teacher, the scratch student and every compressed
    student of that pair (first seed only), labelled as in `run_label` (pruning variants by name).
    """
    plt = _pyplot()
    profile = get_profile(profile) if isinstance(profile, str) else profile
    fig, axes = plt.subplots(2, len(profile.pairs), figsize=(4.2 * len(profile.pairs), 6.4), squeeze=False)
    subset = add_labels(results)
    subset = subset[subset["dataset"] == dataset] if not subset.empty else subset
    for column, pair in enumerate(profile.pairs):
        ax_loss, ax_acc = axes[0][column], axes[1][column]
        ax_loss.set_title(f"WRN-{profile.depth}-{pair.teacher_width} -> {pair.student_width}", fontsize=10)
        if not subset.empty:
            teacher_id = f"-wrn{profile.depth}-{pair.teacher_width}-s"
            is_teacher = (subset["method"] == "scratch") & (subset["width"] == pair.teacher_width)
            is_scratch = (subset["method"] == "scratch") & (subset["width"] == pair.student_width)
            is_student = (subset["width"] == pair.student_width) & \
                subset["teacher_run_id"].astype(str).str.contains(teacher_id, regex=False)
            chosen = subset[is_teacher | is_scratch | is_student]
            for _, row in chosen[chosen["seed"] == chosen["seed"].min()].sort_values("order").iterrows():
                history = load_history(runs_dir, profile.name, row["run_id"])
                if history.empty:
                    continue
                kind = "teacher" if row["method"] == "scratch" and row["width"] == pair.teacher_width \
                    else row["label"]
                marker, color = MARKERS[kind]
                style = "--" if kind == "teacher" else "-"
                # Pruning variants share a marker but not a name (e.g. "pruning: one-shot, l2").
                name = f"{kind} ({row['model']})" if kind in ("teacher", "scratch") else row["run_label"]
                ax_loss.plot(history["epoch"], history["val_loss"], style, marker=marker, color=color, label=name)
                ax_acc.plot(history["epoch"], history["val_acc"], style, marker=marker, color=color, label=name)
            ax_acc.legend(fontsize=7)
        curve = "test (used as validation)" if profile.val_size == 0 else "validation"
        ax_loss.set_ylabel(f"{curve} loss")
        ax_acc.set_ylabel(f"{curve} accuracy (%)")
        for ax in (ax_loss, ax_acc):
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    fig.suptitle(f"{dataset}: curves per pair [{profile.name}{' miniature' if profile.miniature else ''}]")
    fig.tight_layout()
    return fig


def run_metrics_table(metrics: dict) -> pd.DataFrame:
    """Return the headline numbers of one run as a two-column table."""
    rows = [
        ("run id", metrics["run_id"]),
        ("dataset", metrics["dataset"]),
        ("method", run_label(metrics)),
        ("model", metrics.get("model", f"WRN-{metrics['depth']}-{metrics['width']}")),
        ("teacher run", metrics.get("teacher_run_id") or "-"),
        ("seed", metrics["seed"]),
        ("epochs", metrics["epochs"]),
        ("training images", f"{metrics.get('train_images', 0):,}"),
        ("test images", f"{metrics.get('test_images', 0):,}"),
        ("test accuracy (%)", f"{metrics['test_acc']:.2f}"),
        ("test loss", f"{metrics['test_loss']:.4f}"),
        ("parameters", f"{metrics['params']:,}"),
        ("MACs (M)", f"{metrics['macs'] / 1e6:,.2f}"),
        ("weights file (MB)", f"{metrics.get('model_size_mb', math.nan):.2f}"),
        ("training time (s)", f"{metrics['train_seconds']:.1f}"),
        ("precision", metrics.get("precision", "-")),
        ("latency, batch 1, 1 CPU thread (ms, median)", f"{metrics['latency_ms_batch1_cpu']:.3f}"),
        *_measurement_rows(metrics),
        ("device", metrics["device"]),
        ("torch", metrics["torch_version"]),
        ("git commit", metrics["git_commit"]),
    ]
    return pd.DataFrame(rows, columns=["Metric", "Value"]).set_index("Metric")


# --------------------------------------------------------------------------
# Node-pruning variants: schedules, criteria, prune + KD
# --------------------------------------------------------------------------

def _field(row, key: str, default=None):
    """Return row[key] for a dict or a pandas row, with `default` for a missing key or NaN."""
    value = row.get(key, default) if hasattr(row, "get") else default
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value


def prune_variant(row, profile: Profile | str) -> PruneVariant | None:
    """Return the pruning variant of a run (metrics dict or results row), or None for other methods.

    A one-shot run that fine-tunes for the profile's epochs maps to a variant
    with `epochs_per_round=None`, as in the profile's `prune_variants`.
    """
    if _field(row, "method") != "prune":
        return None
    profile = get_profile(profile) if isinstance(profile, str) else profile
    schedule = _field(row, "schedule", "one-shot")
    rounds = int(_field(row, "rounds", 1))
    epochs_per_round = _field(row, "epochs_per_round")
    if epochs_per_round is not None:
        epochs_per_round = int(epochs_per_round)
    if schedule == "one-shot" and epochs_per_round in (None, profile.epochs):
        epochs_per_round = None
    return PruneVariant(criterion=_field(row, "criterion", "l1"), schedule=schedule, rounds=rounds,
                        epochs_per_round=epochs_per_round, use_kd=bool(_field(row, "use_kd", False)))


def _variant_label(variant: PruneVariant) -> str:
    if variant.schedule == "one-shot":
        schedule = "one-shot" if variant.epochs_per_round is None else f"one-shot {variant.epochs_per_round} ep"
    else:
        schedule = f"iterative {variant.rounds} x {variant.epochs_per_round} ep"
    # No parentheses: tables and the drone chapter put this label inside "model (label)".
    return f"pruning{' + KD' if variant.use_kd else ''}: {schedule}, {variant.criterion}"


def run_label(row) -> str:
    """Return the detailed label of a run, e.g. "KD" or "pruning: iterative 10 x 20 ep, l1".

    A pruning label names the schedule, the criterion and whether the
    fine-tuning used KD, e.g. "pruning + KD: one-shot, l1".
    """
    method = _field(row, "method", "")
    if method != "prune":
        return METHOD_LABELS.get(method, method)
    schedule = _field(row, "schedule", "one-shot")
    variant = PruneVariant(criterion=_field(row, "criterion", "l1"), schedule=schedule,
                           rounds=int(_field(row, "rounds", 1)),
                           epochs_per_round=None if schedule == "one-shot" else int(_field(row, "epochs_per_round", 0)),
                           use_kd=bool(_field(row, "use_kd", False)))
    return _variant_label(variant)


def _variant_tags(frame: pd.DataFrame, profile: Profile) -> pd.Series:
    return pd.Series([
        (variant.tag if (variant := prune_variant(row, profile)) is not None else "")
        for _, row in frame.iterrows()
    ], index=frame.index, dtype=object)


def _without_prune_variants(frame: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """Drop every pruning run that is not the canonical variant (one-shot, L1, no KD)."""
    if frame.empty:
        return frame
    tags = _variant_tags(frame, profile)
    return frame[(frame["method"] != "prune") | (tags == CANONICAL_PRUNING.tag)]


def _pair_runs(subset: pd.DataFrame, profile: Profile, pair: Pair) -> pd.DataFrame:
    """Return the runs that start from the pair's teacher and end at its student width."""
    if subset.empty:
        return subset
    return subset[(subset["width"] == pair.student_width)
                  & subset["teacher_run_id"].astype(str).str.contains(f"-wrn{profile.depth}-{pair.teacher_width}-s")]


def _prune_runs(subset: pd.DataFrame, profile: Profile, pair: Pair, variant: PruneVariant) -> pd.DataFrame:
    """Return the pruning runs of one pair and one variant (every seed)."""
    runs_of_pair = _pair_runs(subset, profile, pair)
    if runs_of_pair.empty:
        return runs_of_pair
    runs_of_pair = runs_of_pair[runs_of_pair["method"] == "prune"]
    tags = _variant_tags(runs_of_pair, profile)
    return runs_of_pair[tags == variant.tag]


def _mean_column(frame: pd.DataFrame, column: str) -> float:
    if frame.empty or column not in frame:
        return math.nan
    values = pd.to_numeric(frame[column], errors="coerce").dropna()
    return float(values.mean()) if not values.empty else math.nan


def _pair_name(profile: Profile, pair: Pair) -> str:
    return f"WRN-{profile.depth}-{pair.teacher_width} -> WRN-{profile.depth}-{pair.student_width}"


def _dataset_rows(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    return results[results["dataset"] == dataset] if not results.empty else results


def iterative_variants(profile: Profile | str) -> list[PruneVariant]:
    """Return the profile's iterative pruning variants in profile order (the first is the primary one)."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    return [v for v in profile.prune_variants if v.schedule == "iterative"]


def _schedule_name(variant: PruneVariant) -> str:
    return f"{variant.rounds} x {variant.epochs_per_round}"


def schedule_table(results: pd.DataFrame, dataset: str, profile: Profile | str) -> pd.DataFrame:
    """Return one-shot vs iterative node pruning (L1, no KD) per pair: final test accuracy and difference.

    One column pair per iterative variant of the profile, named by rounds x
    epochs per round; NaN where a pair has no run of that variant.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    subset = _dataset_rows(results, dataset)
    table = []
    for pair in profile.pairs:
        one_shot = _mean_column(_prune_runs(subset, profile, pair, CANONICAL_PRUNING), "test_acc")
        row = {
            "Teacher -> student": _pair_name(profile, pair),
            f"One-shot, {profile.epochs} ep (%)": one_shot,
        }
        for variant in iterative_variants(profile):
            final = _mean_column(_prune_runs(subset, profile, pair, variant), "test_acc")
            name = _schedule_name(variant)
            row[f"Iterative {name} ep (%)"] = final
            row[f"Iterative {name} - one-shot (%p)"] = final - one_shot
        table.append(row)
    return pd.DataFrame(table).round(2)


def criterion_table(results: pd.DataFrame, dataset: str, profile: Profile | str) -> pd.DataFrame:
    """Return L1 vs L2 filter-norm criteria (one-shot, no KD) per pair, before and after fine-tuning."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    subset = _dataset_rows(results, dataset)
    table = []
    for pair in profile.pairs:
        l1 = _prune_runs(subset, profile, pair, CANONICAL_PRUNING)
        l2 = _prune_runs(subset, profile, pair, PruneVariant(criterion="l2"))
        l1_final, l2_final = _mean_column(l1, "test_acc"), _mean_column(l2, "test_acc")
        table.append({
            "Teacher -> student": _pair_name(profile, pair),
            "L1, before fine-tune (%)": _mean_column(l1, "test_acc_after_pruning"),
            "L2, before fine-tune (%)": _mean_column(l2, "test_acc_after_pruning"),
            "L1 + fine-tune (%)": l1_final,
            "L2 + fine-tune (%)": l2_final,
            "L2 - L1 (%p)": l2_final - l1_final,
        })
    return pd.DataFrame(table).round(2)


def prune_kd_table(results: pd.DataFrame, dataset: str, profile: Profile | str) -> pd.DataFrame:
    """Return per pair the KD student, one-shot pruning, and one-shot pruning fine-tuned with KD."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    subset = _dataset_rows(results, dataset)
    table = []
    for pair in profile.pairs:
        pair_runs = _pair_runs(subset, profile, pair)
        kd = _mean_column(pair_runs[pair_runs["method"] == "kd"], "test_acc") if not pair_runs.empty else math.nan
        pruned = _mean_column(_prune_runs(subset, profile, pair, CANONICAL_PRUNING), "test_acc")
        pruned_kd = _mean_column(_prune_runs(subset, profile, pair, PruneVariant(use_kd=True)), "test_acc")
        table.append({
            "Teacher -> student": _pair_name(profile, pair),
            "KD student (%)": kd,
            "Pruning (%)": pruned,
            "Pruning + KD (%)": pruned_kd,
            "Pruning + KD - pruning (%p)": pruned_kd - pruned,
            "Pruning + KD - KD (%p)": pruned_kd - kd,
        })
    return pd.DataFrame(table).round(2)


def round_accuracy_frame(results: pd.DataFrame, dataset: str, profile: Profile | str) -> pd.DataFrame:
    """Return test accuracy per pruning round, one row per (pair, variant, round), seeds averaged.

    Columns: pair, variant, round, stream (widths after the round), params,
    acc_after_pruning (before that round's fine-tuning) and acc_after_fine_tune.
    Every variant with a `round_accuracy` record is listed; one-shot runs have one round.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    columns = ["pair", "variant", "round", "stream", "params", "acc_after_pruning", "acc_after_fine_tune"]
    subset = _dataset_rows(results, dataset)
    rows = []
    for pair in profile.pairs:
        for variant in profile.prune_variants:
            chosen = _prune_runs(subset, profile, pair, variant)
            if chosen.empty or "round_accuracy" not in chosen:
                continue
            records = [r for value in chosen["round_accuracy"] if isinstance(value, list) for r in value]
            for index in sorted({r["round"] for r in records}):
                same = [r for r in records if r["round"] == index]
                rows.append({
                    "pair": _pair_name(profile, pair),
                    "variant": _variant_label(variant),
                    "round": index,
                    "stream": "/".join(str(c) for c in same[0]["stream"]),
                    "params": same[0]["params"],
                    "acc_after_pruning": float(np.mean([r["test_acc_after_pruning"] for r in same])),
                    "acc_after_fine_tune": float(np.mean([r["test_acc"] for r in same if "test_acc" in r])),
                })
    return pd.DataFrame(rows, columns=columns)


def plot_round_accuracy(results: pd.DataFrame, dataset: str, profile: Profile | str):
    """Plot test accuracy per round of every iterative variant, one panel per pair.

    Dashed lines: right after the round's pruning; solid lines: after its
    fine-tuning. Horizontal lines: the teacher and the one-shot (L1, no KD) result.
    """
    plt = _pyplot()
    profile = get_profile(profile) if isinstance(profile, str) else profile
    subset = _dataset_rows(results, dataset)
    frame = round_accuracy_frame(results, dataset, profile)
    from matplotlib.ticker import MaxNLocator

    width = max(6.4, 4.2 * len(profile.pairs))   # one panel still needs room for the title
    fig, axes = plt.subplots(1, len(profile.pairs), figsize=(width, 3.6), squeeze=False)
    colors = ["tab:purple", "tab:red", "tab:brown", "tab:olive"]
    for ax, pair in zip(axes[0], profile.pairs):
        name = _pair_name(profile, pair)
        ax.set_title(name, fontsize=9)
        teacher = _mean_acc(subset, method="scratch", width=pair.teacher_width) if not subset.empty else math.nan
        one_shot = _mean_column(_prune_runs(subset, profile, pair, CANONICAL_PRUNING), "test_acc")
        if not math.isnan(teacher):
            ax.axhline(teacher, color="black", linestyle=":", label="teacher")
        if not math.isnan(one_shot):
            ax.axhline(one_shot, color="tab:green", linestyle="-.", label="one-shot + fine-tune")
        for color, variant in zip(colors, iterative_variants(profile)):
            part = frame[(frame["pair"] == name) & (frame["variant"] == _variant_label(variant))]
            if part.empty:
                continue
            label = f"iterative {_schedule_name(variant)} ep"
            ax.plot(part["round"], part["acc_after_pruning"], "o--", color=color, alpha=0.7,
                    label=f"{label}: after pruning")
            ax.plot(part["round"], part["acc_after_fine_tune"], "s-", color=color, label=f"{label}: after fine-tune")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no iterative run", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("pruning round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{dataset}: iterative node pruning per round "
                 f"[{profile.name}{' miniature' if profile.miniature else ''}]")
    fig.tight_layout()
    return fig


def _round_drops(chosen: pd.DataFrame, teacher: float) -> list[float]:
    """Return each round's accuracy change from pruning alone (%p), against the previous round's fine-tuned result."""
    drops = []
    for value in chosen.get("round_accuracy", pd.Series(dtype=object)):
        if not isinstance(value, list):
            continue
        previous = teacher
        for record in sorted(value, key=lambda r: r["round"]):
            drops.append(record["test_acc_after_pruning"] - previous)
            previous = record.get("test_acc", math.nan)
    return [d for d in drops if not math.isnan(d)]


def pruning_numbers(results: pd.DataFrame, profile: Profile | str) -> dict:
    """Return the numbers the pruning chapter quotes, keyed by glue name.

    Per data set, each number is a mean in %p over the pairs that have both
    runs, and a `*_pairs` key gives the number of those pairs. The differences
    are: the primary (first) iterative variant minus one-shot; the second
    iterative variant (the longer budget in the `paper` profile) minus
    one-shot; L2 minus L1; prune + KD minus pruning and minus KD. Values are
    NaN, "n/a" or 0 where the profile has no such run.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    iterative = iterative_variants(profile)
    primary = iterative[0] if iterative else None
    longer = iterative[1] if len(iterative) > 1 else None
    numbers: dict = {
        "oneshot_epochs": profile.epochs,
        "iterative_label": f"{primary.rounds} round × {primary.epochs_per_round} epoch" if primary else "n/a",
        "iterative_epochs": primary.rounds * primary.epochs_per_round if primary else 0,
        "long_iterative_label": f"{longer.rounds} round × {longer.epochs_per_round} epoch" if longer else "n/a",
        "long_iterative_epochs": longer.rounds * longer.epochs_per_round if longer else 0,
    }

    def mean_difference(first: list[float], second: list[float]) -> tuple[float, int]:
        pairs = [(a, b) for a, b in zip(first, second) if not (math.isnan(a) or math.isnan(b))]
        return (float(np.mean([a - b for a, b in pairs])) if pairs else math.nan), len(pairs)

    for dataset in profile.datasets:
        subset = _dataset_rows(results, dataset)

        def finals(variant: PruneVariant | None) -> list[float]:
            if variant is None:
                return [math.nan] * len(profile.pairs)
            return [_mean_column(_prune_runs(subset, profile, pair, variant), "test_acc") for pair in profile.pairs]

        one_shot = finals(CANONICAL_PRUNING)
        iterative_finals = finals(primary)
        value, count = mean_difference(iterative_finals, one_shot)
        numbers[f"{dataset}_iterative_minus_oneshot"] = value
        numbers[f"{dataset}_iterative_pairs"] = count
        numbers[f"{dataset}_iterative_wins"] = sum(
            1 for a, b in zip(iterative_finals, one_shot) if not (math.isnan(a) or math.isnan(b)) and a > b)
        value, count = mean_difference(finals(longer), one_shot)
        numbers[f"{dataset}_long_iterative_minus_oneshot"] = value
        numbers[f"{dataset}_long_iterative_pairs"] = count
        value, count = mean_difference(finals(PruneVariant(criterion="l2")), one_shot)
        numbers[f"{dataset}_l2_minus_l1"] = value
        numbers[f"{dataset}_criterion_pairs"] = count
        pruned_kd = finals(PruneVariant(use_kd=True))
        value, count = mean_difference(pruned_kd, one_shot)
        numbers[f"{dataset}_prunekd_minus_prune"] = value
        numbers[f"{dataset}_prunekd_pairs"] = count
        kd = [r["kd"] for r in pair_rows(results, dataset, profile)]
        numbers[f"{dataset}_prunekd_minus_kd"] = mean_difference(pruned_kd, kd)[0]

        iterative_drops, one_shot_drops = [], []
        for pair in profile.pairs:
            teacher = _mean_acc(subset, method="scratch", width=pair.teacher_width) if not subset.empty else math.nan
            if primary is not None:
                iterative_drops += _round_drops(_prune_runs(subset, profile, pair, primary), teacher)
            one_shot_drops += _round_drops(_prune_runs(subset, profile, pair, CANONICAL_PRUNING), teacher)
        numbers[f"{dataset}_iterative_round_drop"] = float(np.mean(iterative_drops)) if iterative_drops else math.nan
        numbers[f"{dataset}_oneshot_drop"] = float(np.mean(one_shot_drops)) if one_shot_drops else math.nan
    return numbers


def run_round_table(metrics: dict) -> pd.DataFrame:
    """Return one row per pruning round of one run: widths, parameters and test accuracy before and after fine-tuning."""
    rows = []
    for record in metrics.get("round_accuracy", []):
        rows.append({
            "Round": record["round"],
            "Stream widths": "/".join(str(c) for c in record["stream"]),
            "Params": f"{int(record['params']):,}",
            "Fine-tune epochs": record.get("epochs", math.nan),
            "After pruning (%)": round(record["test_acc_after_pruning"], 2),
            "After fine-tune (%)": round(record.get("test_acc", math.nan), 2),
        })
    return pd.DataFrame(rows, columns=["Round", "Stream widths", "Params", "Fine-tune epochs", "After pruning (%)",
                                       "After fine-tune (%)"])


def plot_run_rounds(metrics: dict):
    """Plot one pruning run's test accuracy per round, right after pruning and after fine-tuning."""
    plt = _pyplot()
    records = sorted(metrics.get("round_accuracy", []), key=lambda r: r["round"])
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    rounds = [r["round"] for r in records]
    ax.plot(rounds, [r["test_acc_after_pruning"] for r in records], "o--", label="after pruning")
    ax.plot(rounds, [r.get("test_acc", math.nan) for r in records], "s-", label="after fine-tune")
    if "teacher_test_acc" in metrics:
        ax.axhline(metrics["teacher_test_acc"], color="black", linestyle=":", label="teacher")
    ax.set_xticks(rounds)
    ax.set_xlabel("pruning round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{metrics.get('run_id', '')}: test accuracy per round", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Inference measurements, pruned vs native, compression trade-off
# --------------------------------------------------------------------------

# Measured metrics the tables below read; a run store from before a metric
# existed gives NaN for it.
MEASURED_COLUMNS = (
    "params", "nonzero_params", "macs", "model_size_mb", "onnx_size_mb",
    "forward_peak_rss_mb_batch1_cpu", "forward_peak_rss_mb_batch256_cpu",
    "latency_ms_batch1_cpu", "latency_ms_batch1_cpu_all_threads",
    "latency_ms_batch1_ort", "latency_ms_batch1_ort_all_threads",
    "throughput_ips_batch256_cpu", "throughput_ips_batch256_cpu_all_threads",
    "throughput_ips_batch256_ort", "throughput_ips_batch256_ort_all_threads",
    "native_latency_ms_batch1_cpu", "native_latency_ms_batch1_ort",
    "pruned_to_native_latency_ratio_batch1_cpu", "pruned_to_native_latency_ratio_batch256_cpu",
    "pruned_to_native_latency_ratio_batch1_ort", "pruned_to_native_latency_ratio_batch256_ort",
    "extra_params", "test_acc",
)
DESCRIPTIVE_COLUMNS = ("dataset", "method", "label", "run_label", "model", "width", "teacher_run_id", "native_model", "order")


def config_means(results: pd.DataFrame) -> pd.DataFrame:
    """Return one row per configuration: descriptive columns of its first seed, measured ones averaged."""
    columns = ["config_id", *DESCRIPTIVE_COLUMNS, "seeds", *MEASURED_COLUMNS]
    if results.empty:
        return pd.DataFrame(columns=columns)
    labelled = add_labels(results)
    for column in MEASURED_COLUMNS:
        if column not in labelled:
            labelled[column] = math.nan
    for column in DESCRIPTIVE_COLUMNS:
        if column not in labelled:
            labelled[column] = None
    rows = []
    for config_id, group in labelled.sort_values("order").groupby("config_id", sort=False):
        row = {"config_id": config_id, "seeds": len(group)}
        row.update({c: group[c].iloc[0] for c in DESCRIPTIVE_COLUMNS})
        row.update({c: float(pd.to_numeric(group[c], errors="coerce").mean()) for c in MEASURED_COLUMNS})
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _dataset_means(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    means = config_means(results)
    return means[means["dataset"] == dataset]


def footprint_table(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Return size, compute and measured CPU memory per configuration of one data set.

    Memory is the growth of a fresh process's peak RSS over one forward pass
    on 1 thread (see `wrnlib.measure.measure_peak_memory_cpu`).
    """
    columns = ["Method", "Model", "Params", "Non-zero params", "MACs (M)", "FLOPs (M)", "Weights file (MB)",
               "ONNX file (MB)", "Forward memory b1 (MB)", "Forward memory b256 (MB)"]
    rows = []
    for _, row in _dataset_means(results, dataset).iterrows():
        rows.append([row["run_label"], row["model"], row["params"], row["nonzero_params"], row["macs"] / 1e6,
                     2 * row["macs"] / 1e6, row["model_size_mb"], row["onnx_size_mb"],
                     row["forward_peak_rss_mb_batch1_cpu"], row["forward_peak_rss_mb_batch256_cpu"]])
    table = pd.DataFrame(rows, columns=columns)
    for column in ("Params", "Non-zero params"):
        table[column] = table[column].map(lambda v: "n/a" if math.isnan(v) else f"{int(v):,}")
    return table.round(2)


def speed_table(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Return batch-1 latency (ms) and batch-256 throughput (images/s) per configuration of one data set.

    "1 thr" is one intra-op thread, "all" every CPU of the measuring process
    (`measurement_env.threads_all` in metrics.json).
    """
    columns = ["Method", "Model", "PyTorch b1, 1 thr (ms)", "PyTorch b1, all (ms)", "ORT b1, 1 thr (ms)",
               "ORT b1, all (ms)", "PyTorch b256, 1 thr (img/s)", "PyTorch b256, all (img/s)",
               "ORT b256, 1 thr (img/s)", "ORT b256, all (img/s)"]
    keys = ["latency_ms_batch1_cpu", "latency_ms_batch1_cpu_all_threads", "latency_ms_batch1_ort",
            "latency_ms_batch1_ort_all_threads", "throughput_ips_batch256_cpu",
            "throughput_ips_batch256_cpu_all_threads", "throughput_ips_batch256_ort",
            "throughput_ips_batch256_ort_all_threads"]
    rows = [[row["run_label"], row["model"], *(row[k] for k in keys)]
            for _, row in _dataset_means(results, dataset).iterrows()]
    table = pd.DataFrame(rows, columns=columns)
    for column in columns[2:6]:
        table[column] = table[column].round(3)
    for column in columns[6:]:
        table[column] = table[column].map(lambda v: "n/a" if math.isnan(v) else f"{v:,.0f}")
    return table


def pruned_native_table(results: pd.DataFrame) -> pd.DataFrame:
    """Return, per pruning configuration, its latency against the native WRN of the same widths.

    Both were timed in one process, interleaved, on 1 thread. A ratio above 1
    means the pruned model is slower than its native twin.
    """
    columns = ["Dataset", "Method", "Teacher", "Pruned model", "Native twin", "Extra params",
               "Pruned b1 (ms)", "Native b1 (ms)", "Ratio b1 PyTorch", "Ratio b256 PyTorch", "Ratio b1 ORT",
               "Ratio b256 ORT"]
    means = config_means(results)
    means = means[means["method"] == "prune"]
    rows = []
    for _, row in means.iterrows():
        rows.append([row["dataset"], row["run_label"], _teacher_label(results, row["teacher_run_id"]), row["model"],
                     row["native_model"], row["extra_params"], row["latency_ms_batch1_cpu"],
                     row["native_latency_ms_batch1_cpu"], row["pruned_to_native_latency_ratio_batch1_cpu"],
                     row["pruned_to_native_latency_ratio_batch256_cpu"],
                     row["pruned_to_native_latency_ratio_batch1_ort"],
                     row["pruned_to_native_latency_ratio_batch256_ort"]])
    table = pd.DataFrame(rows, columns=columns).round(3)
    table["Extra params"] = table["Extra params"].map(lambda v: "n/a" if pd.isna(v) else f"{int(v):,}")
    return table


def pruned_native_numbers(results: pd.DataFrame) -> dict:
    """Return the pruned-vs-native numbers the book quotes: counts and the range of latency ratios."""
    table = pruned_native_table(results)
    numbers = {"prune_native_runs": int(len(table))}
    for key, column in (("b1", "Ratio b1 PyTorch"), ("b256", "Ratio b256 PyTorch"), ("b1_ort", "Ratio b1 ORT"),
                        ("b256_ort", "Ratio b256 ORT")):
        ratios = pd.to_numeric(table[column], errors="coerce").dropna()
        numbers[f"prune_native_ratio_{key}_min"] = float(ratios.min()) if not ratios.empty else math.nan
        numbers[f"prune_native_ratio_{key}_max"] = float(ratios.max()) if not ratios.empty else math.nan
        numbers[f"prune_native_slower_{key}"] = int((ratios > 1.0).sum())
    return numbers


def compression_table(results: pd.DataFrame, dataset: str, profile: Profile | str) -> pd.DataFrame:
    """Return, per pair and compressed student, the accuracy lost and the speed gained against its teacher.

    Accuracy lost is teacher minus student test accuracy (%p, positive = the
    student is worse). The speed-up at batch 1 is teacher latency / student
    latency, and the gain at batch 256 is student / teacher throughput, both
    on 1 thread. Above 1 the student is faster.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    columns = ["Pair", "Method", "Teacher acc (%)", "Student acc (%)", "Acc lost (%p)", "Speed-up b1 PyTorch (x)",
               "Speed-up b1 ORT (x)", "Throughput gain b256 PyTorch (x)", "Throughput gain b256 ORT (x)"]
    means = _dataset_means(results, dataset)
    rows = []
    for pair in profile.pairs:
        teacher = means[(means["method"] == "scratch") & (means["width"] == pair.teacher_width)]
        students = means[(means["method"] != "scratch") & (means["width"] == pair.student_width) &
                         means["teacher_run_id"].astype(str).str.contains(
                             f"-wrn{profile.depth}-{pair.teacher_width}-s", regex=False)]
        if teacher.empty or students.empty:
            continue
        t = teacher.iloc[0]
        for _, s in students.iterrows():
            rows.append([
                f"WRN-{profile.depth}-{pair.teacher_width} -> WRN-{profile.depth}-{pair.student_width}", s["run_label"],
                t["test_acc"], s["test_acc"], t["test_acc"] - s["test_acc"],
                t["latency_ms_batch1_cpu"] / s["latency_ms_batch1_cpu"],
                t["latency_ms_batch1_ort"] / s["latency_ms_batch1_ort"],
                s["throughput_ips_batch256_cpu"] / t["throughput_ips_batch256_cpu"],
                s["throughput_ips_batch256_ort"] / t["throughput_ips_batch256_ort"],
            ])
    return pd.DataFrame(rows, columns=columns).round(2)


def compression_numbers(results: pd.DataFrame, profile: Profile | str) -> dict:
    """Return per data set the mean accuracy lost and speed-up of KD and of node pruning (all its variants)."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    numbers: dict = {}
    for dataset in profile.datasets:
        table = compression_table(results, dataset, profile)
        for key, chosen in (("kd", table["Method"] == "KD"), ("prune", table["Method"] != "KD")):
            part = table[chosen]
            for name, column in (("acc_lost", "Acc lost (%p)"), ("speedup", "Speed-up b1 PyTorch (x)"),
                                 ("speedup_ort", "Speed-up b1 ORT (x)"),
                                 ("throughput_gain", "Throughput gain b256 PyTorch (x)")):
                values = pd.to_numeric(part[column], errors="coerce").dropna()
                numbers[f"drone_{dataset}_{key}_{name}"] = float(values.mean()) if not values.empty else math.nan
    return numbers


def seeds_note(profile: Profile | str) -> str:
    """Return how many seeds each configuration of `profile` runs, and what the tables show for that."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    if len(profile.seeds) > 1:
        return f"mean ± std over {len(profile.seeds)} seeds"
    return "1 seed per configuration, so no std"


def plot_drone_fps(results: pd.DataFrame, dataset: str, profile: Profile | str, camera_fps: float = CAMERA_FPS):
    """Plot batch-1 frames per second on 1 CPU thread, PyTorch and ONNX Runtime, against the camera rate."""
    plt = _pyplot()
    profile = get_profile(profile) if isinstance(profile, str) else profile
    means = _dataset_means(results, dataset)
    names = [f"{row['model']} ({row['label']})" for _, row in means.iterrows()]
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * max(3, len(names)) + 1.2))
    if names:
        y = np.arange(len(names))
        ax.barh(y - 0.2, 1000.0 / means["latency_ms_batch1_cpu"].to_numpy(float), height=0.4,
                color="tab:blue", label="PyTorch, 1 thread")
        ax.barh(y + 0.2, 1000.0 / means["latency_ms_batch1_ort"].to_numpy(float), height=0.4,
                color="tab:orange", label="ONNX Runtime, 1 thread")
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
    ax.axvline(camera_fps, color="red", linestyle="--", label=f"camera, {camera_fps:g} fps")
    ax.set_xscale("log")
    ax.set_xlabel("frames per second at batch 1 (log scale)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    ax.grid(alpha=0.3, axis="x", which="both")
    ax.set_title(f"{dataset}: batch-1 frame rate on 1 CPU thread "
                 f"[{profile.name}{' miniature' if profile.miniature else ''}]", fontsize=10)
    fig.tight_layout()
    return fig


def _measurement_rows(metrics: dict) -> list[tuple[str, str]]:
    """Return the run page rows of the measurements beyond batch-1 PyTorch latency, where present."""
    env = metrics.get("measurement_env") or {}
    threads_all = env.get("threads_all", "all")
    rows = [
        ("non-zero parameters", "nonzero_params", ",.0f"),
        ("FLOPs (M, = 2 x MACs)", "flops", ",.2f"),
        ("latency, batch 1, 1 CPU thread, p90 (ms)", "latency_p90_ms_batch1_cpu", ".3f"),
        (f"latency, batch 1, {threads_all} CPU threads (ms, median)", "latency_ms_batch1_cpu_all_threads", ".3f"),
        ("throughput, batch 256, 1 CPU thread (images/s)", "throughput_ips_batch256_cpu", ",.0f"),
        (f"throughput, batch 256, {threads_all} CPU threads (images/s)", "throughput_ips_batch256_cpu_all_threads",
         ",.0f"),
        ("ONNX Runtime latency, batch 1, 1 thread (ms, median)", "latency_ms_batch1_ort", ".3f"),
        ("ONNX Runtime throughput, batch 256, 1 thread (images/s)", "throughput_ips_batch256_ort", ",.0f"),
        ("ONNX max |difference| to PyTorch", "onnx_max_abs_diff", ".2e"),
        ("forward-pass memory, batch 1, CPU (MB, peak RSS growth)", "forward_peak_rss_mb_batch1_cpu", ".1f"),
        ("forward-pass memory, batch 256, CPU (MB, peak RSS growth)", "forward_peak_rss_mb_batch256_cpu", ".1f"),
        ("native twin latency, batch 1, 1 CPU thread (ms)", "native_latency_ms_batch1_cpu", ".3f"),
        ("pruned / native latency, batch 1, 1 CPU thread", "pruned_to_native_latency_ratio_batch1_cpu", ".3f"),
        ("pruned / native latency, batch 256, 1 CPU thread", "pruned_to_native_latency_ratio_batch256_cpu", ".3f"),
    ]
    shown = []
    for name, key, spec in rows:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            shown.append((name, format(value / 1e6 if key == "flops" else value, spec)))
    if env:
        shown.append(("measured on", f"{env.get('cpu_model')}, {env.get('available_cpus')} CPUs, "
                                     f"onnxruntime {env.get('onnxruntime_version')}, ONNX opset {env.get('onnx_opset')}"))
    return shown


def measurement_env_numbers(results: pd.DataFrame) -> dict:
    """Return the hardware and versions behind the measured figures of `results`, keyed by glue name.

    Values that differ between runs are joined with " / ". The load average is
    the highest seen when a run started measuring. The runtime RSS is the
    median over runs of a memory child's RSS before its forward pass.
    """
    envs = [e for e in (results["measurement_env"] if "measurement_env" in results else []) if isinstance(e, dict)]

    def joined(key: str) -> str:
        values = sorted({str(e.get(key)) for e in envs if e.get(key) is not None})
        return " / ".join(values) if values else "n/a"

    loads = [e["load_average_1min"] for e in envs if isinstance(e.get("load_average_1min"), (int, float))]
    baseline = pd.Series(dtype=float)
    if "process_peak_rss_mb_batch1_cpu" in results and "forward_peak_rss_mb_batch1_cpu" in results:
        baseline = (results["process_peak_rss_mb_batch1_cpu"] - results["forward_peak_rss_mb_batch1_cpu"]).dropna()
    return {
        "measure_runs": len(envs),
        "measure_cpu_model": joined("cpu_model"),
        "measure_threads_all": joined("threads_all"),
        "measure_torch_version": joined("torch_version"),
        "measure_ort_version": joined("onnxruntime_version"),
        "measure_onnx_opset": joined("onnx_opset"),
        "measure_max_load": float(max(loads)) if loads else math.nan,
        # RSS of the child process before its forward pass: interpreter, PyTorch, model and input.
        "measure_runtime_rss_mb": float(baseline.median()) if not baseline.empty else math.nan,
    }
