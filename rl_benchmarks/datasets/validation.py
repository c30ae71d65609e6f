"""Checks run on a cohort before any training starts.

User errors raise :class:`CohortError` (a ``ValueError``) or :class:`MissingFileError`
(also a ``FileNotFoundError``) with a one-line message naming the file, the column and
the cause, so the command line can print it without a traceback. Slides without
features are not an error: they are listed, counted and reported with a
:class:`MissingFeaturesWarning`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd


class CohortError(ValueError):
    """A cohort or label file is unusable (missing column, bad value, conflict)."""


class MissingFileError(CohortError, FileNotFoundError):
    """A file or folder the cohort needs does not exist."""


class MissingFeaturesWarning(UserWarning):
    """Some slides of a cohort have no ``features.npy``; they are left out."""


def _short_list(items: Sequence[object], limit: int = 10) -> str:
    items = [str(i) for i in items]
    head = ", ".join(items[:limit])
    return head + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def require_file(path: str | os.PathLike, what: str, alternatives: Iterable = ()) -> Path:
    """Return ``path`` if it exists, else raise naming it (and the alternatives tried)."""
    path = Path(path)
    if path.exists():
        return path
    alts = [str(a) for a in alternatives if Path(a) != path]
    tried = f" (also tried: {', '.join(alts)})" if alts else ""
    raise MissingFileError(f"{what} not found: {path}{tried}")


def require_columns(frame: pd.DataFrame, columns: Iterable[str], source: object) -> None:
    """Raise naming ``source`` and every missing column."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CohortError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; "
            f"found {', '.join(map(repr, map(str, frame.columns)))}"
        )


def check_known_values(
    values: pd.Series, known: Iterable[object], source: object, column: str
) -> None:
    """Raise when ``values`` (NaN ignored) holds anything outside ``known``."""
    known = set(known)
    present = values.dropna()
    bad = sorted({str(v) for v in present if v not in known})
    if bad:
        raise CohortError(
            f"{source}: column {column!r} has unknown label value(s) {_short_list(bad)}; "
            f"expected one of {_short_list(sorted(map(str, known)))}"
        )


def check_conflicting_labels(
    frame: pd.DataFrame, source: object, key: str = "patient_id", columns: Sequence[str] = ("label",)
) -> None:
    """Raise when one ``key`` (a patient) carries more than one distinct label."""
    sub = frame.dropna(subset=list(columns)).drop_duplicates(subset=[key, *columns])
    counts = sub.groupby(key, sort=True).size()
    bad = counts[counts > 1].index.tolist()
    if bad:
        examples = []
        for k in bad[:3]:
            vals = sub.loc[sub[key] == k, list(columns)].astype(str).agg("/".join, axis=1)
            examples.append(f"{k}: {sorted(set(vals))}")
        raise CohortError(
            f"{source}: {len(bad)} {key.replace('_id', '')}(s) with conflicting labels "
            f"({'; '.join(examples)}{'; ...' if len(bad) > 3 else ''})"
        )


def check_survival_times(
    times: pd.Series, ids: pd.Series, source: object, column: str = "time"
) -> None:
    """Raise when a survival time is not a number, zero or negative (the signed
    encoding cannot represent a zero time, and a negative one is a data error)."""
    numeric = pd.to_numeric(times, errors="coerce")
    not_num = times.notna() & numeric.isna()
    if not_num.any():
        raise CohortError(
            f"{source}: column {column!r} has non-numeric value(s) "
            f"{_short_list(sorted(set(times[not_num].astype(str))))}"
        )
    bad = numeric.notna() & (numeric <= 0)
    if bad.any():
        pairs = [f"{i}={t:g}" for i, t in zip(ids[bad], numeric[bad])]
        raise CohortError(
            f"{source}: column {column!r} has {int(bad.sum())} zero or negative survival "
            f"time(s) ({_short_list(pairs)}); times must be > 0 (remove or fix these rows)"
        )


def warn_missing_features(slide_ids: Sequence[str], source: object, n_total: int) -> None:
    """List and count the slides without features (they are left out)."""
    if len(slide_ids) == 0:
        return
    warnings.warn(
        f"{source}: {len(slide_ids)} of {n_total} slide(s) have no features.npy and are "
        f"left out: {_short_list(sorted(map(str, slide_ids)))}",
        MissingFeaturesWarning,
        stacklevel=3,
    )


def check_features_file(path: str | os.PathLike) -> tuple[int, int]:
    """Open ``features.npy`` memory-mapped; return (n_tiles, width). Raise naming the file
    when it cannot be read or is not a (N, 3+D) matrix."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CohortError(f"{path}: cannot read features ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise CohortError(
            f"{path}: features must have shape (n_tiles, 3 + n_features), got {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise CohortError(f"{path}: features file has no tiles")
    return int(arr.shape[0]), int(arr.shape[1])
