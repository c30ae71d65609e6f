"""The out-of-fold predictions of cross-validation: the frame ``rlbench cv`` writes
(:func:`predictions_frame`) and the reader of that and one other layout, in one place.

Why: the pictures and the results table of a run are drawn from the test-fold predictions,
so they need one reader that accepts both ways of storing them:

* one CSV per outer fold, named ``predictions_<repeat>_<split>.csv`` or
  ``repeat_<r>_split_<s>.csv`` (as ``rlbench cv`` writes them into ``predictions/``);
  the repeat and the split are taken from the name when the file has no such columns;
* one CSV for all folds with a ``fold`` column (and optionally ``repeat``).

A ``fold`` value may be an integer or a name such as ``repeat_1_split_3`` (then the
repeat and the split are read from it); the original value is kept in ``fold_name``.

Columns: ``slide_id``, ``patient_id``, ``fold`` plus, by task,

* binary: ``label`` (0/1) and ``score`` (one logit; higher = class 1);
* multiclass: ``label`` (0..C-1) and ``score_0`` .. ``score_{C-1}`` (logits);
* survival: ``time`` (> 0), ``event`` (0/1) and ``risk`` (higher = shorter survival;
  ``score`` is accepted in its place).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_FOLD_FILE = re.compile(r"^(?:predictions_(\d+)_(\d+)|repeat_(\d+)_split_(\d+))\.csv$")
_FOLD_NAME = re.compile(r"^repeat_(\d+)_split_(\d+)$")
TASKS = ("binary", "multiclass", "survival")


class PredictionsError(ValueError):
    """A predictions file or table that cannot be used (message names the file and cause)."""


def _score_columns(frame: pd.DataFrame) -> list[str]:
    cols = [c for c in frame.columns if re.fullmatch(r"score_\d+", str(c))]
    return sorted(cols, key=lambda c: int(str(c).split("_")[1]))


def prediction_task(frame: pd.DataFrame, source: str = "predictions") -> str:
    """The task of a predictions table: "binary", "multiclass" or "survival"."""
    cols = set(frame.columns)
    if {"time", "event"} <= cols:
        if "risk" not in cols and "score" not in cols:
            raise PredictionsError(f"{source}: survival predictions need a 'risk' (or 'score') column")
        return "survival"
    if "label" not in cols:
        raise PredictionsError(
            f"{source}: no 'label' column and no 'time'+'event' columns; columns are {sorted(cols)}"
        )
    if _score_columns(frame):
        return "multiclass"
    if "score" in cols:
        return "binary"
    raise PredictionsError(f"{source}: a 'label' column needs 'score' or 'score_0'.. columns")


def _validate(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    task = prediction_task(frame, source)
    for col in ("slide_id", "fold"):
        if col not in frame.columns:
            raise PredictionsError(f"{source}: missing column {col!r}")
    frame = frame.copy()
    _parse_folds(frame, source)
    if "patient_id" not in frame.columns:
        frame["patient_id"] = frame["slide_id"]
    if "repeat" not in frame.columns:
        frame["repeat"] = 0
    if task == "survival":
        if "risk" not in frame.columns:
            frame["risk"] = frame["score"]
        for col in ("time", "event", "risk"):
            if frame[col].isna().any():
                raise PredictionsError(f"{source}: column {col!r} has missing values")
        if (frame["time"] <= 0).any():
            raise PredictionsError(f"{source}: column 'time' must be > 0")
        if not frame["event"].isin([0, 1, True, False]).all():
            raise PredictionsError(f"{source}: column 'event' must be 0 or 1")
        frame["event"] = frame["event"].astype(int)
    else:
        scores = ["score"] if task == "binary" else _score_columns(frame)
        if frame[["label", *scores]].isna().any().any():
            raise PredictionsError(f"{source}: label or score columns have missing values")
        frame["label"] = frame["label"].astype(int)
        if task == "binary" and not frame["label"].isin([0, 1]).all():
            raise PredictionsError(f"{source}: binary 'label' must be 0 or 1 "
                                   f"(found {sorted(frame['label'].unique())})")
    frame.attrs["task"] = task
    frame.attrs["source"] = source
    return frame


def _parse_folds(frame: pd.DataFrame, source: str) -> None:
    """Make ``fold`` (and ``repeat``) integers; names like ``repeat_1_split_3`` are parsed."""
    fold = frame["fold"]
    frame["fold_name"] = fold.astype(str)
    if pd.api.types.is_numeric_dtype(fold):
        if fold.isna().any():
            raise PredictionsError(f"{source}: column 'fold' has missing values")
        frame["fold"] = fold.astype(int)
        return
    parsed = fold.astype(str).str.extract(_FOLD_NAME)
    if parsed.notna().all().all():
        if "repeat" in frame.columns and not frame["repeat"].equals(parsed[0].astype(int)):
            raise PredictionsError(f"{source}: 'repeat' disagrees with the 'fold' names")
        frame["repeat"] = parsed[0].astype(int)
        frame["fold"] = parsed[1].astype(int)
    else:  # any other fold names: numbered in sorted order
        names = sorted(fold.astype(str).unique())
        frame["fold"] = fold.astype(str).map({n: i for i, n in enumerate(names)})


def read_predictions_file(path: str | os.PathLike) -> pd.DataFrame:
    """Read one predictions CSV; a ``predictions_<repeat>_<split>.csv`` name fills missing columns."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise PredictionsError(f"{path}: no such predictions file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PredictionsError(f"{path}: not a readable CSV ({exc})") from None
    m = _FOLD_FILE.match(path.name)
    if m:
        r, k = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
        if "repeat" not in frame.columns:
            frame["repeat"] = int(r)
        if "fold" not in frame.columns:
            frame["fold"] = int(k)
    return _validate(frame, str(path))


def load_predictions(source: str | os.PathLike | pd.DataFrame | Iterable) -> pd.DataFrame:
    """Load predictions from a DataFrame, a CSV, a folder of ``predictions*.csv`` (any CSV in a
    folder named ``predictions``), or a list of CSVs.

    Returns one table with ``repeat`` and ``fold`` columns; ``frame.attrs["task"]`` holds
    the task. A folder must hold either one file with a ``fold`` column or the per-fold files.
    """
    if isinstance(source, pd.DataFrame):
        return _validate(source, source.attrs.get("source", "predictions table"))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            pattern = "*.csv" if path.name == "predictions" else "predictions*.csv"
            files = sorted(p for p in path.glob(pattern) if not p.name.startswith("."))
            if not files:
                raise PredictionsError(f"{path}: no {pattern} file in this folder")
        else:
            files = [path]
        name = str(path)
    else:
        files = [Path(p) for p in source]
        if not files:
            raise PredictionsError("no predictions files given")
        name = str(files[0].parent)
    frames = [read_predictions_file(f) for f in files]
    tasks = {f.attrs["task"] for f in frames}
    if len(tasks) > 1:
        raise PredictionsError(f"{name}: files mix tasks {sorted(tasks)}")
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    dup = frame.duplicated(["repeat", "fold", "slide_id"])
    if dup.any():
        raise PredictionsError(
            f"{name}: slide {frame.loc[dup, 'slide_id'].iloc[0]!r} appears twice in one fold"
        )
    frame.attrs["task"] = tasks.pop()
    frame.attrs["source"] = name
    return frame


def _slide_ids(dataset: Any) -> Any:
    """The dataset's slide ids, else positions (a dataset without ``slide_id``)."""
    ids = getattr(dataset, "slide_id", None)
    return np.arange(len(dataset)) if ids is None else ids


def predictions_frame(dataset: Any, indices: np.ndarray, labels: np.ndarray,
                      logits: np.ndarray, fold: str) -> pd.DataFrame:
    """One row per slide: fold, slide_id, patient_id, the target (``label``, or ``time`` and
    ``event`` for survival), the score(s) (``score``, or ``score_0..`` for several logits)."""
    frame = pd.DataFrame({
        "fold": fold,
        "slide_id": np.asarray(_slide_ids(dataset))[indices],
        "patient_id": np.asarray(dataset.patient_id)[indices],
    })
    y = np.asarray(labels, dtype=float).reshape(len(indices), -1)[:, 0]
    if getattr(dataset, "task", None) == "survival":
        frame["time"], frame["event"] = np.abs(y), (y > 0).astype(int)
    else:
        frame["label"] = y.astype(int) if np.all(np.isfinite(y)) else y
    logits = np.asarray(logits, dtype=float).reshape(len(indices), -1)
    if logits.shape[1] == 1:
        frame["score"] = logits[:, 0]
    else:
        for k in range(logits.shape[1]):
            frame[f"score_{k}"] = logits[:, k]
    return frame


def fold_groups(frame: pd.DataFrame) -> list[tuple[tuple[int, int], pd.DataFrame]]:
    """``((repeat, fold), rows)`` for each outer fold, in order."""
    return [(tuple(int(v) for v in k), g) for k, g in frame.groupby(["repeat", "fold"], sort=True)]


def score_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The logits as (N, C) (binary: (N, 1))."""
    cols = _score_columns(frame) or ["score"]
    return frame[cols].to_numpy(np.float64)
