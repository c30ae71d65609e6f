"""The results table of the cross-validation runs (docs/protocol.md#results-table): one row per completed
experiment, plus the hyper-parameters selected in each outer fold.

``features`` is the extractor the run recorded (``summary.json``: the features' extraction
records, or the ``task.data.feature_extractor`` override; only the reference's runs, which
record nothing else, fall back to the configuration key); ``extractor`` is the name in the
records themselves.

Run folders are read by :mod:`rl_benchmarks.val_schemes.experiment`: JSON files, or the
reference's pickles through its restricted unpickler (a pickle that asks for anything but
plain data raises :class:`~rl_benchmarks.val_schemes.experiment.UnsafePickleError`)."""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rl_benchmarks.val_schemes.experiment import (
    LOCK,
    PARAMS,
    ExperimentFolder,
    UnsafePickleError,
    experiment_label,
    iter_experiments,
    last_epoch_values,
    load_run,
    model_name,
    recorded_extractor,
    summarise_metrics,
    task_key,
    task_name,
)

logger = logging.getLogger("rl_benchmarks.results")

#: the reference's results columns, in its order
COLUMNS = [
    "model", "features", "n_tiles", "cohort", "label", "gs_params", "n_repeats", "n_splits",
    "stratified", "split_mode", "batch_size", "num_epochs", "learning_rate", "weight_decay",
    "mean_auc", "mean_accuracy", "mean_cindex", "std_auc", "std_accuracy", "std_cindex",
    "log_path",
]
#: this package's additions: the selected hyper-parameters and the run's identity
EXTRA_COLUMNS = [
    "selected_learning_rate", "selected_weight_decay", "selected_num_epochs", "selected_params",
    "experiment", "extractor", "features_identity", "cohort_identity", "task",
]


def _get(d: dict, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _joined(values: list[Any]) -> str:
    return ";".join("" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
                    for v in values)


def experiment_row(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The results row of one experiment folder (None when it is not completed)."""
    folder = Path(folder)
    record = load_run(folder)
    if record is None:
        return None
    params, test_metrics = record.params, record.test_metrics
    task = params.get("task", {})
    vs = task.get("validation_scheme", {})
    trainer = vs.get("trainer_cfg", {})
    row: dict[str, Any] = {
        "model": str(_get(trainer, "model", "_target_", default="")).split(".")[-1],
        "features": recorded_extractor(params, record.summary),
        "n_tiles": _get(task, "data", "n_tiles"),
        "cohort": _get(task, "data", "train", "cohort"),
        "label": _get(task, "data", "train", "label"),
        "gs_params": str(vs.get("grid_search_params")),
        "n_repeats": f"{vs.get('n_repeats_inner')}x{vs.get('n_repeats_outer')}",
        "n_splits": f"{vs.get('n_splits_inner')}x{vs.get('n_splits_outer')}",
        "stratified": vs.get("stratified"),
        "split_mode": vs.get("split_mode"),
        "batch_size": trainer.get("batch_size"),
        "num_epochs": trainer.get("num_epochs"),
        "learning_rate": trainer.get("learning_rate"),
        "weight_decay": trainer.get("weight_decay"),
    }
    summary = summarise_metrics({m: f for m, f in test_metrics.items() if f})
    for metric in ("auc", "accuracy", "cindex"):
        s = summary.get(metric, {"mean": np.nan, "std": np.nan})
        row[f"mean_{metric}"], row[f"std_{metric}"] = s["mean"], s["std"]
    row["log_path"] = str(record.log_path) if record.log_path else ""
    selected = record.selected_params
    row["selected_learning_rate"] = _joined([p.get("learning_rate") for p in selected.values()])
    row["selected_weight_decay"] = _joined([p.get("weight_decay") for p in selected.values()])
    row["selected_num_epochs"] = _joined([p.get("num_epochs") for p in selected.values()])
    row["selected_params"] = json.dumps(
        {k: {n: v for n, v in p.items() if n != "grid_scores"} for k, p in selected.items()},
        sort_keys=True,
    )
    row["experiment"] = folder.name
    identity = record.summary.get("identity") or params.get("identity") or {}
    row["extractor"] = (identity.get("features") or {}).get("extractor") or row["features"]
    row["features_identity"] = (identity.get("features") or {}).get("digest", "")
    row["cohort_identity"] = (identity.get("cohort") or {}).get("digest", "")
    row["task"] = task_name(params)  # the name people use (the cohort's path stays in "cohort")
    return row


def collect_results(root: str | os.PathLike) -> pd.DataFrame:
    """One row per completed experiment under ``root/cross_validation`` (:data:`COLUMNS`,
    then :data:`EXTRA_COLUMNS`); an unreadable folder is skipped with a warning, a crafted
    reference pickle stops it (:class:`UnsafePickleError`)."""
    rows = []
    for exp in iter_experiments(root):
        folder = exp.path
        try:
            row = experiment_row(folder)
        except UnsafePickleError:
            raise  # a crafted file: stop, never skip silently
        except (OSError, KeyError, AttributeError, ValueError) as err:
            logger.warning("%s: skipped, unreadable (%s)", folder, err)
            continue
        if row is not None:
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS + EXTRA_COLUMNS)


# --------------------------------------------------------------------------------------
# Per-fold values of every experiment: what the benchmark table and its statistics read
# --------------------------------------------------------------------------------------
#: the metric a task is scored by, in order of preference (classification, survival)
PRIMARY_METRICS = ("auc", "cindex")


@dataclass
class ExperimentFolds:
    """One experiment folder as the benchmark table sees it.

    ``status`` is ``completed`` (every planned outer fold has a finite value), ``incomplete``
    (completed with fewer outer folds than planned), ``running`` (its lock is held by a live
    process), ``unfinished`` (no completed status: killed, failed or never finished) or
    ``unreadable``; ``reason`` says why in one line. ``folds`` maps ``repeat_<r>_split_<s>``
    to the last epoch's test ``metric``; ``splits`` maps the same keys to the test slides of
    the fold (from ``predictions/``; None when the run wrote none, as reference runs)."""

    folder: Path
    status: str
    reason: str = ""
    task: str = ""
    task_key: str = ""
    cohort: str = ""
    model: str = ""
    extractor: str = ""
    label: str = ""
    metric: str | None = None
    folds: dict[str, float] = field(default_factory=dict)
    planned_folds: int | None = None
    n_splits_outer: int | None = None
    splits: dict[str, frozenset[str]] | None = None

    @property
    def experiment(self) -> str:
        return self.folder.name


def primary_metric(test_metrics: dict[str, Any]) -> str | None:
    """The metric a run is scored by: ``auc``, else ``cindex``, else the first that is not
    the loss (None when there is none)."""
    for name in PRIMARY_METRICS:
        if name in test_metrics:
            return name
    return next((m for m in test_metrics if m != "loss"), None)


def fold_assignments(folder: str | os.PathLike) -> dict[str, frozenset[str]] | None:
    """``{repeat_<r>_split_<s>: test slide ids}`` from a run's ``predictions/`` (None when it
    has none): what shows that two runs used the same outer splits. Only the ``fold`` and
    ``slide_id`` columns are read (the csv module: a paper-size grid has over a thousand of
    these files); a file without ``fold`` is the fold its name says."""
    pred_dir = Path(folder) / "predictions"
    files = sorted(p for p in pred_dir.glob("*.csv") if not p.name.startswith(".")) if pred_dir.is_dir() else []
    if not files:
        return None
    out: dict[str, set[str]] = {}
    for path in files:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "slide_id" not in (reader.fieldnames or []):
                raise ValueError(f"{path}: no slide_id column")
            for row in reader:
                out.setdefault(row.get("fold") or path.stem, set()).add(row["slide_id"])
    return {key: frozenset(ids) for key, ids in sorted(out.items())}


def _lock_reason(folder: Path) -> str | None:
    from rl_benchmarks.extraction import locks

    owner = locks.read_owner(folder / LOCK)
    if owner is not None and locks.is_alive(owner):
        return f"running ({owner})"
    return None


def experiment_folds(folder: str | os.PathLike) -> ExperimentFolds:
    """Read one experiment folder for the benchmark table (never raises on a bad folder:
    its ``status`` says ``unreadable``; a crafted reference pickle still raises
    :class:`UnsafePickleError`)."""
    folder = Path(folder)
    exp = ExperimentFolder(folder)
    out = ExperimentFolds(folder=folder, status="unfinished")
    try:
        params = exp.read_params() if exp.find(PARAMS) is not None else None
        summary = exp.read_summary()
        completed = exp.is_completed()
    except UnsafePickleError:
        raise
    except (OSError, KeyError, AttributeError, TypeError, ValueError) as err:
        out.status, out.reason = "unreadable", f"unreadable ({err})"
        return out
    if params is not None:
        out.task, out.task_key = task_name(params), task_key(params)
        out.cohort = str(_get(params, "task", "data", "train", "cohort", default=""))
        out.model = model_name(params)
        out.extractor = recorded_extractor(params, summary) or ""
        out.label = experiment_label(params, summary)
        vs = _get(params, "task", "validation_scheme", default={}) or {}
        try:
            k, r = int(vs.get("n_splits_outer")), int(vs.get("n_repeats_outer", 1))
            out.n_splits_outer = k
            chosen = vs.get("outer_folds")
            out.planned_folds = len(chosen) if chosen else k * r
        except (TypeError, ValueError):
            pass
    if not completed:
        running = _lock_reason(folder)
        out.status = "running" if running else "unfinished"
        out.reason = running or "not completed (killed, failed, or not finished: run it again to finish it)"
        return out
    try:
        test_metrics = exp.read_metrics("test")
        out.splits = fold_assignments(folder)
    except UnsafePickleError:
        raise
    except (OSError, KeyError, AttributeError, TypeError, ValueError) as err:
        out.status, out.reason = "unreadable", f"unreadable ({err})"
        return out
    out.metric = primary_metric(test_metrics)
    if out.metric is not None:
        folds = test_metrics[out.metric]
        out.folds = dict(zip((str(f) for f in folds), last_epoch_values(folds).tolist()))
    finite = sum(np.isfinite(v) for v in out.folds.values())
    if params is None or out.metric is None:
        out.status, out.reason = "unreadable", "no configuration or no test metric"
    elif out.planned_folds is not None and finite < out.planned_folds:
        out.status = "incomplete"
        out.reason = f"{finite} of {out.planned_folds} outer folds"
    else:
        out.status = "completed"
    return out


def collect_folds(root: str | os.PathLike) -> list[ExperimentFolds]:
    """Every experiment folder under ``root/cross_validation``, read by
    :func:`experiment_folds` (completed or not)."""
    return [experiment_folds(exp.path) for exp in iter_experiments(root)]


__all__ = ["COLUMNS", "EXTRA_COLUMNS", "PRIMARY_METRICS", "ExperimentFolds", "collect_folds",
           "collect_results", "experiment_folds", "experiment_row", "fold_assignments",
           "primary_metric"]
