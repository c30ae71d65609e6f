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

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rl_benchmarks.val_schemes.experiment import (
    UnsafePickleError,
    iter_experiments,
    load_run,
    recorded_extractor,
    summarise_metrics,
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
    "experiment", "extractor", "features_identity", "cohort_identity",
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


__all__ = ["COLUMNS", "EXTRA_COLUMNS", "collect_results", "experiment_row"]
