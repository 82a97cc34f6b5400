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

from . import runs
from .grid import Profile, get_profile

__all__ = [
    "CAMERA_FPS",
    "BACKLOG_FRAMES",
    "discussion_numbers",
    "drone_numbers",
    "drone_table",
    "load_history",
    "load_results",
    "pair_table",
    "plot_history",
    "plot_pair_curves",
    "plot_tradeoff",
    "profile_label",
    "profile_table",
    "results_table",
]

CAMERA_FPS = 30             # frames per second of the on-board camera the drone chapter assumes
BACKLOG_FRAMES = 1_000_000  # frames in the recorded backlog of the drone chapter

METHOD_LABELS = {"scratch": "scratch", "kd": "KD", "prune": "pruning (one-shot)"}
METHOD_ORDER = {"scratch": 0, "kd": 1, "prune": 2}
MARKERS = {"teacher": ("s", "black"), "scratch": ("o", "tab:blue"), "kd": ("^", "tab:orange"),
           "prune": ("D", "tab:green")}


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
    """Return e.g. "quick profile (miniature: WRN-10, 3,000 training images)"."""
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
    return table.style.format(precision=precision, na_rep="n/a").hide(axis="index").set_caption(caption)


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
    for _, group in subset.sort_values("order").groupby("config_id", sort=False):
        first = group.iloc[0]
        rows.append({
            "Method": METHOD_LABELS.get(first["method"], first["method"]),
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
    """Return per (teacher, student) pair the mean accuracies of every method, as numbers."""
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
            prune_runs = students[(students["method"] == "prune") & (students["width"] == pair.student_width)]
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
    """Return, per finished run, batch-1 CPU recognition time, frame rate and backlog time."""
    columns = ["Dataset", "Method", "Model", "Test acc (%)", "Latency b1 (ms)", "Frames/s",
               f"Keeps up with {camera_fps:g} fps", "1M-frame backlog (h)"]
    if results.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for _, group in results.sort_values("order").groupby("config_id", sort=False):
        first = group.iloc[0]
        latency = float(group["latency_ms_batch1_cpu"].mean())
        fps = 1000.0 / latency
        rows.append({
            "Dataset": first["dataset"],
            "Method": METHOD_LABELS.get(first["method"], first["method"]),
            "Model": first["model"],
            "Test acc (%)": round(float(group["test_acc"].mean()), 2),
            "Latency b1 (ms)": round(latency, 3),
            "Frames/s": round(fps, 1),
            f"Keeps up with {camera_fps:g} fps": "yes" if fps >= camera_fps else "no",
            "1M-frame backlog (h)": round(backlog_frames / fps / 3600.0, 2),
        })
    return pd.DataFrame(rows, columns=columns)


def drone_numbers(results: pd.DataFrame, camera_fps: float = CAMERA_FPS) -> dict:
    """Return the numbers the drone chapter quotes, keyed by glue name."""
    table = drone_table(results, camera_fps)
    if table.empty:
        return {"drone_models": 0, "drone_realtime_models": 0, "drone_fastest_model": "n/a",
                "drone_fastest_fps": math.nan, "drone_slowest_model": "n/a", "drone_slowest_fps": math.nan,
                "drone_speedup": math.nan, "drone_camera_fps": camera_fps}
    realtime = table[table[f"Keeps up with {camera_fps:g} fps"] == "yes"]
    fastest = table.loc[table["Frames/s"].idxmax()]
    slowest = table.loc[table["Frames/s"].idxmin()]
    return {
        "drone_models": int(len(table)),
        "drone_realtime_models": int(len(realtime)),
        "drone_fastest_model": f"{fastest['Model']} ({fastest['Method']}, {fastest['Dataset']})",
        "drone_fastest_fps": float(fastest["Frames/s"]),
        "drone_slowest_model": f"{slowest['Model']} ({slowest['Method']}, {slowest['Dataset']})",
        "drone_slowest_fps": float(slowest["Frames/s"]),
        "drone_speedup": float(fastest["Frames/s"] / slowest["Frames/s"]),
        "drone_camera_fps": camera_fps,
    }


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
    """Plot test accuracy against params, MACs or latency, one marker per method, Pareto front drawn."""
    plt = _pyplot()
    profile = get_profile(profile) if isinstance(profile, str) else profile
    column, label, scale = TRADEOFF_AXES[axis]
    teacher_widths = {p.teacher_width for p in profile.pairs} - {p.student_width for p in profile.pairs}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    subset = results[results["dataset"] == dataset] if not results.empty else results
    if not subset.empty:
        grouped = subset.groupby("config_id", sort=False).agg(
            x=(column, "mean"), y=("test_acc", "mean"), method=("method", "first"), width=("width", "first"),
            model=("model", "first"))
        grouped["x"] = grouped["x"] * scale
        grouped["kind"] = [
            "teacher" if (m == "scratch" and w in teacher_widths) else m
            for m, w in zip(grouped["method"], grouped["width"])
        ]
        for kind, part in grouped.groupby("kind"):
            marker, color = MARKERS[kind]
            name = "teacher (scratch)" if kind == "teacher" else METHOD_LABELS.get(kind, kind)
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
    """Plot validation accuracy per epoch of every method of every pair, one panel per pair."""
    plt = _pyplot()
    profile = get_profile(profile) if isinstance(profile, str) else profile
    fig, axes = plt.subplots(1, len(profile.pairs), figsize=(4.2 * len(profile.pairs), 3.4), squeeze=False)
    subset = results[results["dataset"] == dataset] if not results.empty else results
    for ax, pair in zip(axes[0], profile.pairs):
        ax.set_title(f"WRN-{profile.depth}-{pair.teacher_width} -> {pair.student_width}", fontsize=10)
        if not subset.empty:
            chosen = subset[(subset["width"] == pair.student_width) & (
                (subset["method"] == "scratch") |
                subset["teacher_run_id"].astype(str).str.contains(f"-wrn{profile.depth}-{pair.teacher_width}-s"))]
            for _, row in chosen[chosen["seed"] == chosen["seed"].min()].iterrows():
                history = load_history(runs_dir, profile.name, row["run_id"])
                if history.empty:
                    continue
                marker, color = MARKERS[row["method"]]
                ax.plot(history["epoch"], history["val_acc"], marker=marker, color=color,
                        label=METHOD_LABELS[row["method"]])
            ax.legend(fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{dataset}: student curves [{profile.name}{' miniature' if profile.miniature else ''}]")
    fig.tight_layout()
    return fig


def run_metrics_table(metrics: dict) -> pd.DataFrame:
    """Return the headline numbers of one run as a two-column table."""
    rows = [
        ("run id", metrics["run_id"]),
        ("dataset", metrics["dataset"]),
        ("method", METHOD_LABELS.get(metrics["method"], metrics["method"])),
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
        ("device", metrics["device"]),
        ("torch", metrics["torch_version"]),
        ("git commit", metrics["git_commit"]),
    ]
    return pd.DataFrame(rows, columns=["Metric", "Value"]).set_index("Metric")
