"""One's own cohort as a CSV: no TCGA layout needed.

Columns (header names are case-sensitive):

* an id: ``slide_id``, or ``slide_path`` (the slide file; id = file name without its
  extension), or ``features_path`` (id = the folder of ``features.npy``/``features.h5``, or
  the stem of a TRIDENT/CLAM ``<slide>.h5``);
* ``patient_id`` (optional; default: each slide is its own patient);
* ``center_id`` or ``center`` (optional);
* the target: ``label`` (strings or numbers; binary or multiclass; values that differ
  only by case or surrounding whitespace are an error), or ``time`` and ``event``
  (survival; converted to the signed encoding ``+time`` for an event, ``-time`` when
  censored; a zero time is censored at 0 with a warning). ``label=<column>`` picks
  another label column;
* ``coords_path`` (optional).

Relative paths are relative to the CSV's folder. Without ``features_path``, features are
looked up under ``features_root_dir`` as ``<slide file name or slide_id>/features.npy``
(or ``features.h5``; at any depth, as the extraction writes them), or as a TRIDENT/CLAM
``<slide>.h5`` (docs/interop.md).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rl_benchmarks.datasets._tables import finish_slide_table, strip_slide_ext
from rl_benchmarks.datasets.validation import (
    CohortError,
    _short_list,
    check_conflicting_labels,
    check_known_values,
    check_label_spellings,
    check_survival_times,
    read_table,
    require_columns,
    require_file,
)

SURVIVAL_NAMES = {"OS", "SURVIVAL", "TIME", "TIME_EVENT"}
EVENT_VALUES = {0, 1}


def is_csv_cohort(cohort: object) -> bool:
    """True when ``cohort`` names a CSV/TSV file rather than a reference cohort."""
    if isinstance(cohort, os.PathLike):
        return True
    return isinstance(cohort, str) and cohort.lower().endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz"))


def _resolve(value: object, base: Path) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    p = Path(str(value).strip()).expanduser()
    return str(p if p.is_absolute() else base / p)


def _slide_id_from_features(path: str) -> str:
    p = Path(path)
    if p.name in FOLDER_FEATURE_FILES:
        return strip_slide_ext(p.parent.name)
    return strip_slide_ext(p.stem)


FOLDER_FEATURE_FILES = ("features.npy", "features.h5")
"""Per-slide feature files named by their folder (``<slide>/features.npy`` first)."""


def _index_features(root: Path) -> dict[str, list[str]]:
    """Map slide names (with and without slide extension) -> feature files under ``root``:
    ``<slide>/features.npy``, else ``<slide>/features.h5`` (one per folder: ``features.npy``
    wins when ``output_format=both`` wrote both), and TRIDENT's flat ``<slide>.h5``."""
    from rl_benchmarks.datasets.h5_features import H5_SUFFIXES

    index: dict[str, list[str]] = {}
    per_folder: dict[Path, Path] = {}
    for name in FOLDER_FEATURE_FILES:
        for f in sorted(root.rglob(name)):
            per_folder.setdefault(f.parent, f)
    files = [(f.parent.name, f) for f in per_folder.values()]
    for suffix in H5_SUFFIXES:
        files += [(f.stem, f) for f in sorted(root.rglob(f"*{suffix}")) if f.name != "features.h5"]
    for key, f in sorted(files, key=lambda kv: str(kv[1])):
        for k in {key, strip_slide_ext(key)}:
            index.setdefault(k, []).append(str(f))
    return index


def _fmt_value(v: object) -> str:
    """``1.0`` -> ``"1"`` so numeric labels read back as their CSV spelling."""
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return str(int(f)) if f.is_integer() else v
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def encode_labels(
    values: pd.Series, source: object, column: str, classes: Sequence[object] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Codes (float, NaN kept) and class names of a label column.

    With ``classes`` the order is given and any other value is an error. Otherwise
    numbers are sorted numerically (0/1 stay 0/1) and strings alphabetically, as
    scikit-learn's ``LabelEncoder`` does.
    """
    check_label_spellings(values, source, column)
    present = values.dropna()
    numeric = pd.to_numeric(present, errors="coerce")
    if classes is not None:
        names = [_fmt_value(c) for c in classes]
        as_text = present.map(_fmt_value)
        check_known_values(as_text, names, source, column)
        code = {n: i for i, n in enumerate(names)}
        codes = as_text.map(code)
    elif len(present) and numeric.notna().all():
        uniq = np.sort(numeric.unique())
        names = [_fmt_value(u) for u in uniq]
        codes = numeric.map({u: i for i, u in enumerate(uniq)})
    else:
        text = present.astype(str).str.strip()
        uniq = sorted(text.unique())
        names = list(uniq)
        codes = text.map({u: i for i, u in enumerate(uniq)})
    out = np.full(len(values), np.nan)
    out[np.flatnonzero(values.notna().to_numpy())] = codes.to_numpy(dtype=float)
    return out, names


def load_csv_cohort(
    csv_path: str | os.PathLike,
    features_root_dir: str | os.PathLike | None = None,
    label: str | None = None,
    classes: Sequence[object] | None = None,
    load_slide: bool = False,
) -> pd.DataFrame:
    """Slide table of a CSV cohort (same columns as ``load_dataset`` for reference cohorts,
    plus ``time``/``event`` for survival). ``frame.attrs`` holds ``classes`` (None for
    survival), ``task`` ("binary", "multiclass" or "survival") and ``source``.

    ``label``: None = the ``label`` column, or ``time``/``event`` when there is no
    ``label`` column; "OS"/"survival" = ``time``/``event``; any other name = that column.
    Rows with a missing target are dropped with a warning; slides without a features file
    keep ``features_path`` NaN (``SlideClassificationDataset`` lists and skips them).
    """
    path = require_file(Path(csv_path).expanduser(), "cohort CSV")
    sep = "\t" if str(path).lower().endswith((".tsv", ".tsv.gz")) else ","
    table = read_table(path, "cohort CSV", sep=sep, dtype=str, keep_default_na=True)
    table.columns = [str(c).strip() for c in table.columns]
    raw = table.copy()  # before stripping: label spellings are checked on the raw values
    table = table.apply(lambda s: s.str.strip() if s.dtype == object else s)
    base = path.parent
    if not any(c in table.columns for c in ("slide_id", "slide_path", "features_path")):
        raise CohortError(
            f"{path}: needs a 'slide_id', 'slide_path' or 'features_path' column; "
            f"found {list(table.columns)}"
        )
    if load_slide and "slide_path" not in table.columns:
        raise CohortError(f"{path}: needs a 'slide_path' column to read the slides")
    frame = pd.DataFrame(index=table.index)
    for col in ("slide_path", "features_path", "coords_path"):
        if col in table.columns:
            frame[col] = [_resolve(v, base) for v in table[col]]
    if "slide_id" in table.columns:
        frame["slide_id"] = table["slide_id"]
    elif "slide_path" in table.columns:
        frame["slide_id"] = [strip_slide_ext(Path(p).name) if p else None for p in frame["slide_path"]]
    else:
        frame["slide_id"] = [_slide_id_from_features(p) if p else None for p in frame["features_path"]]
    no_id = frame["slide_id"].isna()
    if no_id.any():
        rows = (np.flatnonzero(no_id.to_numpy()) + 2).tolist()
        raise CohortError(f"{path}: empty slide id on line(s) {_short_list(rows)}")
    dup = frame["slide_id"][frame["slide_id"].duplicated()].unique().tolist()
    if dup:
        raise CohortError(f"{path}: slide id(s) listed more than once: {_short_list(dup)}")
    frame["patient_id"] = table["patient_id"] if "patient_id" in table.columns else frame["slide_id"]
    frame["patient_id"] = frame["patient_id"].fillna(frame["slide_id"])
    center_col = next((c for c in ("center_id", "center") if c in table.columns), None)
    frame["center_id"] = table[center_col] if center_col else None

    # --- target ---
    has_survival = "time" in table.columns and "event" in table.columns
    if label is None:
        mode = "label" if "label" in table.columns else ("survival" if has_survival else None)
        if mode is None:
            raise CohortError(
                f"{path}: needs a 'label' column or 'time' and 'event' columns; "
                f"found {list(table.columns)}"
            )
        label_col = "label"
    elif str(label).upper() in SURVIVAL_NAMES:
        require_columns(table, ["time", "event"], path)
        mode, label_col = "survival", None
    else:
        require_columns(table, [str(label)], path)
        mode, label_col = "label", str(label)

    if mode == "survival":
        event_raw = table["event"].str.lower().replace({"true": "1", "false": "0"})
        event = pd.to_numeric(event_raw, errors="coerce")
        bad = event_raw.notna() & ~event.isin(EVENT_VALUES)
        if bad.any():
            check_known_values(table.loc[bad, "event"], ["0", "1"], path, "event")
        zero = check_survival_times(table["time"], frame["slide_id"], path, "time")
        time = pd.to_numeric(table["time"], errors="coerce")
        event = event.mask(zero & event.notna(), 0)  # censored at time 0 (signed encoding)
        frame["time"], frame["event"] = time, event
        frame["label"] = np.where(event == 1, time, -time)
        frame.loc[time.isna() | event.isna(), "label"] = np.nan
        names, task = None, "survival"
    else:
        check_label_spellings(raw[label_col], path, label_col)
        codes, names = encode_labels(table[label_col], path, label_col, classes)
        frame["label"] = codes
        frame["class_name"] = [names[int(c)] if not np.isnan(c) else None for c in codes]
        task = "binary" if len(names) <= 2 else "multiclass"
    missing = frame["label"].isna()
    if missing.any():
        warnings.warn(
            f"{path}: {int(missing.sum())} slide(s) without a label are left out: "
            f"{_short_list(frame.loc[missing, 'slide_id'].tolist())}",
            UserWarning,
            stacklevel=2,
        )
        frame = frame[~missing]
    check_conflicting_labels(frame, path, columns=("time", "event") if names is None else ("class_name",))

    # --- features ---
    if features_root_dir is not None:
        root = Path(features_root_dir).expanduser()
        index = _index_features(root) if root.is_dir() else {}
        found = []
        for _, row in frame.iterrows():
            current = row.get("features_path")
            if isinstance(current, str):
                found.append(current)
                continue
            keys = [row["slide_id"]]
            if isinstance(row.get("slide_path"), str):
                keys.insert(0, Path(row["slide_path"]).name)
            hit = None
            for k in keys:
                if k in index:
                    if len(index[k]) > 1:
                        raise CohortError(
                            f"{path}: slide {row['slide_id']!r} matches several features files "
                            f"under {root}: {index[k][:3]}"
                        )
                    hit = index[k][0]
                    break
            found.append(hit)
        frame["features_path"] = found
    if "features_path" in frame.columns:
        exists = [isinstance(p, str) and Path(p).is_file() for p in frame["features_path"]]
        frame["features_path"] = [p if ok else None for p, ok in zip(frame["features_path"], exists)]
        if "coords_path" not in frame.columns:
            beside = [Path(p).parent / "coords.npy" if p else None for p in frame["features_path"]]
            frame["coords_path"] = [str(c) if c and c.is_file() else None for c in beside]
    frame = finish_slide_table(frame, load_slide or "slide_path" in frame.columns)
    frame.attrs.update(classes=names, task=task, source=str(path))
    return frame
