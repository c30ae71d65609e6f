"""Pictures and tables of a cross-validation run: ROC curves, Kaplan–Meier curves, results table.

Why: a nested CV run ends with a few numbers; these pictures show what is behind them
(the spread over outer folds, how well predicted risk separates survival). Every function
reads the out-of-fold predictions (see :mod:`rl_benchmarks.val_schemes.predictions`) and
writes a PNG atomically. The per-fold metrics are those of the cross-validation run,
computed by the same functions of :mod:`rl_benchmarks.metrics` (AUC of the logits per
fold, Harrell's c-index of ``-risk``); mean and population std over folds.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rl_benchmarks.metrics import (
    compute_binary_auc,
    compute_cindex,
    compute_mean_one_vs_all_auc,
)
from rl_benchmarks.utils.io import atomic_open
from rl_benchmarks.val_schemes.predictions import (
    PredictionsError,
    fold_groups,
    load_predictions,
    score_matrix,
)

_DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = _DPI) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    plt = _pyplot()
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------
# Per-fold metrics.


def survival_labels(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """The cross-validation run's survival labels, rebuilt from the predictions file: signed
    times (``time`` for an event, ``-time`` for a censoring; the file's times are > 0)."""
    time = np.asarray(time, dtype=np.float64)
    return np.where(np.asarray(event).astype(bool), time, -time)


def fold_metric(task: str, fold: pd.DataFrame) -> tuple[str, float]:
    """The metric of one outer fold's predictions: ``("cindex", ...)`` or ``("auc", ...)``.

    Computed by the functions of :mod:`rl_benchmarks.metrics` that the cross-validation run
    uses (``compute_cindex``, ``compute_binary_auc``, ``compute_mean_one_vs_all_auc``) on the
    labels and logits it saw, so the report and the run's metrics cannot disagree (NaN where
    the metric is undefined, e.g. no comparable pair or a single class).
    """
    if task == "survival":
        labels = survival_labels(fold["time"].to_numpy(), fold["event"].to_numpy())
        return "cindex", compute_cindex(labels, fold["risk"].to_numpy(np.float64))
    if task == "binary":
        return "auc", compute_binary_auc(fold["label"].to_numpy(),
                                         fold["score"].to_numpy(np.float64))
    return "auc", compute_mean_one_vs_all_auc(fold["label"].to_numpy(), score_matrix(fold))


def fold_metrics(predictions: Any) -> pd.DataFrame:
    """One row per outer fold: repeat, fold, n_slides, metric name and value (AUC or c-index)."""
    frame = load_predictions(predictions)
    task = frame.attrs["task"]
    rows = []
    for (r, k), g in fold_groups(frame):
        name, value = fold_metric(task, g)
        rows.append({"repeat": r, "fold": k, "n_slides": len(g), "metric": name, "value": value})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# ROC curves.


@dataclass
class RocSummary:
    """What :func:`roc_curves` drew: per-fold AUCs and their mean and std (NaN folds skipped)."""

    path: Path
    fold_auc: dict[str, float]
    mean_auc: float
    std_auc: float


def roc_curves(
    predictions: Any, out_png: str | os.PathLike, title: str | None = None
) -> RocSummary:
    """ROC curve of each outer fold, the mean curve (±1 std band) and the mean AUC, as a PNG.

    Binary predictions: one curve per fold. Multiclass: one-vs-rest curves per class,
    pooled over folds, and the mean over folds of the macro one-vs-rest AUC in the title.
    """
    from sklearn.metrics import roc_curve

    frame = load_predictions(predictions)
    task = frame.attrs["task"]
    if task == "survival":
        raise PredictionsError(
            f"{frame.attrs['source']}: ROC curves need classification predictions"
        )
    plt = _pyplot()
    metrics = fold_metrics(frame)
    fold_auc = {f"{r}/{k}": v
                for r, k, v in metrics[["repeat", "fold", "value"]].itertuples(index=False)}
    values = np.array([v for v in fold_auc.values() if not math.isnan(v)])
    mean_auc = float(values.mean()) if len(values) else float("nan")
    std_auc = float(values.std()) if len(values) else float("nan")
    n_repeats = frame["repeat"].nunique()

    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    grid = np.linspace(0, 1, 201)
    if task == "binary":
        curves = []
        groups = fold_groups(frame)
        for (r, k), g in groups:
            y, s = g["label"].to_numpy(), g["score"].to_numpy()
            if len(np.unique(y)) < 2:
                continue
            fpr, tpr, _ = roc_curve(y, s)
            curves.append(np.interp(grid, fpr, tpr, left=0.0))
            name = f"fold {k}" if n_repeats == 1 else f"repeat {r} fold {k}"
            label = f"{name} (AUC {fold_auc[f'{r}/{k}']:.3f})" if len(groups) <= 10 else None
            ax.plot(fpr, tpr, lw=1, alpha=0.55, label=label)
        if curves:
            mean, std = np.mean(curves, 0), np.std(curves, 0)
            mean[0] = 0.0
            ax.plot(grid, mean, color="black", lw=2.2,
                    label=f"mean (AUC {mean_auc:.3f} ± {std_auc:.3f})")
            ax.fill_between(grid, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1),
                            color="grey", alpha=0.2, label="± 1 std")
    else:
        logits = score_matrix(frame)
        labels = frame["label"].to_numpy()
        for c in range(logits.shape[1]):
            if len(np.unique(labels == c)) < 2:
                continue
            fpr, tpr, _ = roc_curve(labels == c, logits[:, c])
            ax.plot(fpr, tpr, lw=1.5, label=f"class {c} vs rest (pooled folds)")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    head = title or "ROC curves per outer fold"
    ax.set_title(f"{head}\nmean AUC over {len(values)} folds: {mean_auc:.3f} ± {std_auc:.3f}",
                 fontsize=10)
    ax.legend(loc="lower right", fontsize=7.5, frameon=True)
    ax.set_aspect("equal")
    ax.grid(alpha=0.25)
    path = save_figure(fig, out_png)
    return RocSummary(path=path, fold_auc=fold_auc, mean_auc=mean_auc, std_auc=std_auc)


# ------------------------------------------------------------------------------------------
# Kaplan–Meier curves.


@dataclass
class KMSummary:
    """What :func:`kaplan_meier` drew: the per-patient groups, the log-rank p-value."""

    path: Path
    groups: pd.DataFrame = field(repr=False)
    p_value: float
    test_statistic: float
    n_low: int
    n_high: int
    repeat: int


def risk_groups(predictions: Any, repeat: int | None = None) -> pd.DataFrame:
    """Split patients into predicted low and high risk, fold by fold.

    A patient's risk is the mean over its slides. Within each outer fold (risks of
    different fold models are not on one scale), patients above the fold's median risk
    are "high", the others "low". Uses one repeat (the first by default), so each
    patient appears once. Columns: patient_id, repeat, fold, risk, time, event, group.
    """
    frame = load_predictions(predictions)
    if frame.attrs["task"] != "survival":
        raise PredictionsError(f"{frame.attrs['source']}: Kaplan–Meier curves need survival "
                               "predictions (time, event, risk)")
    repeats = sorted(frame["repeat"].unique())
    repeat = int(repeats[0] if repeat is None else repeat)
    if repeat not in repeats:
        raise PredictionsError(f"{frame.attrs['source']}: no repeat {repeat} (have {repeats})")
    sub = frame[frame["repeat"] == repeat]
    per_patient = (sub.groupby(["fold", "patient_id"], sort=True)
                   .agg(risk=("risk", "mean"), time=("time", "first"), event=("event", "first"))
                   .reset_index())
    dup = per_patient["patient_id"].duplicated()
    if dup.any():
        patient = per_patient.loc[dup, "patient_id"].iloc[0]
        raise PredictionsError(f"{frame.attrs['source']}: patient {patient!r}"
                               f" is in several test folds of repeat {repeat}")
    median = per_patient.groupby("fold")["risk"].transform("median")
    per_patient["group"] = np.where(per_patient["risk"] > median, "high", "low")
    per_patient.insert(1, "repeat", repeat)
    return per_patient[["patient_id", "repeat", "fold", "risk", "time", "event", "group"]]


def kaplan_meier(
    predictions: Any,
    out_png: str | os.PathLike,
    title: str | None = None,
    repeat: int | None = None,
    time_unit: str = "months",
) -> KMSummary:
    """Kaplan–Meier curves of predicted low vs high risk (lifelines), log-rank p-value, PNG.

    The groups come from :func:`risk_groups` (per-fold median split of the predicted risk).
    """
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts
    from lifelines.statistics import logrank_test

    groups = risk_groups(predictions, repeat)
    low, high = groups[groups["group"] == "low"], groups[groups["group"] == "high"]
    if len(low) == 0 or len(high) == 0:
        p, stat = float("nan"), float("nan")
    else:
        res = logrank_test(low["time"], high["time"], event_observed_A=low["event"],
                           event_observed_B=high["event"])
        p, stat = float(res.p_value), float(res.test_statistic)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 5.0))
    fitters = []
    for name, g, colour in (("low risk", low, "tab:blue"), ("high risk", high, "tab:red")):
        if len(g) == 0:
            continue
        kmf = KaplanMeierFitter(label=f"predicted {name} (n={len(g)})")
        kmf.fit(g["time"], g["event"])
        kmf.plot_survival_function(ax=ax, ci_show=True, color=colour, show_censors=True,
                                   censor_styles={"ms": 5, "marker": "|"})
        fitters.append(kmf)
    if fitters:
        add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"])
    ax.set_xlabel(f"time ({time_unit})")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    p_text = "n/a" if math.isnan(p) else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")
    head = title or "Kaplan–Meier: predicted low vs high risk"
    ax.set_title(f"{head}\nlog-rank p = {p_text} (median split per outer fold)", fontsize=10)
    ax.grid(alpha=0.25)
    path = save_figure(fig, out_png)
    return KMSummary(path=path, groups=groups, p_value=p, test_statistic=stat,
                     n_low=len(low), n_high=len(high), repeat=int(groups["repeat"].iloc[0]))


# ------------------------------------------------------------------------------------------
# The results table.

_ID_COLUMNS = ["experiment", "model", "features", "feature_extractor", "cohort", "label", "task",
               "n_tiles", "n_splits", "n_repeats"]


def results_from_predictions(experiments: dict[str, Any]) -> pd.DataFrame:
    """A results table from predictions: one row per experiment with the metric's mean and std.

    Columns: experiment, task, n_slides, n_folds, then ``mean_auc``/``std_auc`` or
    ``mean_cindex``/``std_cindex`` (mean and population std over outer folds, NaN folds skipped).
    """
    rows = []
    for name, preds in experiments.items():
        frame = load_predictions(preds)
        m = fold_metrics(frame)
        vals = m["value"].to_numpy(np.float64)
        metric = m["metric"].iloc[0]
        rows.append({
            "experiment": name, "task": frame.attrs["task"],
            "n_slides": int(frame.groupby("repeat")["slide_id"].nunique().max()),
            "n_folds": len(m),
            f"mean_{metric}": float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan"),
            f"std_{metric}": float(np.nanstd(vals)) if np.isfinite(vals).any() else float("nan"),
        })
    return pd.DataFrame(rows)


_ABSOLUTE = re.compile(r"^(?:/|~|[A-Za-z]:[\\/]|\\\\)")  # POSIX, home, drive, UNC


def _no_path(value: Any) -> Any:
    """A displayed identifier without an absolute path: a cohort CSV given as one is shown by
    its file name (the path stays in the run's configuration); other values (``cv/abmil``,
    ``owkin/phikon``) are unchanged."""
    if isinstance(value, str) and _ABSOLUTE.match(value):
        return re.split(r"[\\/]", value.rstrip("/\\"))[-1] or value
    return value


def results_table(results: pd.DataFrame | str | os.PathLike, digits: int = 3) -> pd.DataFrame:
    """The displayed results table: identifier columns, then ``mean ± std`` per metric.

    Accepts the aggregated CV results (``mean_<m>``/``std_<m>`` columns, as
    ``rlbench results`` writes them) or the output of :func:`results_from_predictions`.
    Metric columns that are empty in every row are dropped; identifiers that are paths are
    shown by their last part (no absolute path in a displayed table).
    """
    if not isinstance(results, pd.DataFrame):
        path = Path(results)
        try:
            results = pd.read_csv(path)
        except FileNotFoundError:
            raise PredictionsError(f"{path}: no such results file") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise PredictionsError(f"{path}: not a readable CSV ({exc})") from None
    out = pd.DataFrame(index=results.index)
    for col in _ID_COLUMNS + ["n_slides", "n_folds"]:
        if col in results.columns and results[col].notna().any():
            out[col] = results[col].map(_no_path)
    metrics = [c[5:] for c in results.columns if str(c).startswith("mean_")]
    for m in metrics:
        mean = pd.to_numeric(results[f"mean_{m}"], errors="coerce")
        if not mean.notna().any():
            continue
        std = pd.to_numeric(results.get(f"std_{m}", pd.Series(np.nan, index=results.index)),
                            errors="coerce")
        out[m] = [
            "" if pd.isna(a)
            else (f"{a:.{digits}f}" if pd.isna(b) else f"{a:.{digits}f} ± {b:.{digits}f}")
            for a, b in zip(mean, std)
        ]
    if out.shape[1] == 0:
        raise PredictionsError("results table: no identifier or mean_<metric> columns found")
    return out.reset_index(drop=True)
