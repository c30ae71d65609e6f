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


class ZeroSurvivalTimeWarning(UserWarning):
    """Some survival times are 0: they are censored at time 0 (the reference's signed
    encoding cannot tell ``+0`` from ``-0``)."""


def check_survival_times(
    times: pd.Series, ids: pd.Series, source: object, column: str = "time"
) -> np.ndarray:
    """Check survival times; return the mask of zero times.

    A non-numeric or negative time is an error. A zero time is kept but censored at
    time 0, as the reference's signed encoding makes it (label 0 => no event), and a
    :class:`ZeroSurvivalTimeWarning` lists the ``ids`` concerned (TCGA-CDR has such
    patients)."""
    numeric = pd.to_numeric(times, errors="coerce")
    not_num = times.notna() & numeric.isna()
    if not_num.any():
        raise CohortError(
            f"{source}: column {column!r} has non-numeric value(s) "
            f"{_short_list(sorted(set(times[not_num].astype(str))))}"
        )
    bad = numeric.notna() & (numeric < 0)
    if bad.any():
        pairs = [f"{i}={t:g}" for i, t in zip(ids[bad], numeric[bad])]
        raise CohortError(
            f"{source}: column {column!r} has {int(bad.sum())} negative survival "
            f"time(s) ({_short_list(pairs)}); times must be >= 0 (remove or fix these rows)"
        )
    zero = (numeric == 0).to_numpy()
    if zero.any():
        names = sorted({str(i) for i in np.asarray(ids)[zero]})
        warnings.warn(
            f"{source}: column {column!r} has {len(names)} zero survival time(s) "
            f"({_short_list(names)}); they are censored at time 0 (no event), as the "
            "reference's signed encoding makes them",
            ZeroSurvivalTimeWarning,
            stacklevel=3,
        )
    return zero


def check_label_spellings(values: pd.Series, source: object, column: str) -> None:
    """Raise when text labels differ only by case or surrounding whitespace (``Neg`` /
    ``neg`` / ``neg ``): they would silently become separate classes."""
    groups: dict[str, set[str]] = {}
    for v in pd.unique(values.dropna()):
        if isinstance(v, str):
            groups.setdefault(v.strip().casefold(), set()).add(v)
    clashes = []
    for spellings in groups.values():
        if len(spellings) < 2:
            continue
        if pd.to_numeric(pd.Series(sorted(spellings)), errors="coerce").notna().all():
            continue  # " 1" and "1" are the same number
        clashes.append(" / ".join(repr(s) for s in sorted(spellings)))
    if clashes:
        raise CohortError(
            f"{source}: column {column!r} has label values that differ only by case or "
            f"surrounding whitespace: {'; '.join(clashes[:5])}"
            f"{'; ...' if len(clashes) > 5 else ''}; spell each class one way"
        )


def check_classes(
    labels: np.ndarray, task: str | None, source: object, classes: Sequence[str] | None = None
) -> None:
    """Raise before training when a labelled cohort cannot be trained on: a single class
    (AUC undefined) or, for survival (signed times), no event (C-index undefined)."""
    labels = np.asarray(labels, dtype=np.float64)
    labels = labels[~np.isnan(labels)]
    if task is None or len(labels) == 0:
        return
    if task == "survival":
        if not (labels > 0).any():
            raise CohortError(
                f"{source}: no event among the {len(labels)} slide(s) (all censored); the Cox "
                "loss and the C-index need at least one event"
            )
        return
    present = np.unique(labels)
    if len(present) < 2:
        code = int(present[0])
        name = classes[code] if classes is not None and 0 <= code < len(classes) else str(code)
        raise CohortError(
            f"{source}: every one of the {len(labels)} slide(s) has class {name!r} (code "
            f"{code}); a classifier needs at least two classes"
        )


def check_finite(
    rows: np.ndarray, source: object, row_index: np.ndarray | None = None
) -> None:
    """Raise naming ``source`` (the slide and its file) when ``rows`` holds NaN or inf.

    ``row_index`` maps the rows back to file rows for the message. One vectorised
    ``isfinite`` over the rows just read: cheap next to the read itself."""
    if rows.dtype.kind != "f" or np.isfinite(rows).all():
        return
    bad = ~np.isfinite(rows)
    bad_rows = np.flatnonzero(bad.any(axis=tuple(range(1, rows.ndim))))
    file_rows = bad_rows if row_index is None else np.asarray(row_index)[bad_rows]
    raise CohortError(
        f"{source}: {int(bad.sum())} non-finite feature value(s) (NaN or inf) in "
        f"{len(bad_rows)} tile row(s) (row(s) {_short_list(sorted(map(int, file_rows)))}); "
        "re-extract this slide's features or leave the slide out"
    )


EXCEL_SUFFIXES = (".xlsx", ".xlsm", ".xls")


def read_table(
    path: str | os.PathLike, what: str = "table", allow_empty: bool = False, **kwargs: object
) -> pd.DataFrame:
    """Read a user table (CSV, TSV, gzipped or not, or Excel) with errors naming the file.

    ``kwargs`` go to ``pandas.read_csv`` (or ``read_excel`` for ``.xlsx``/``.xls``). A
    0-byte file, a file without columns, an unparsable one, or (unless ``allow_empty``)
    one with a header but no rows raises :class:`CohortError` naming ``path`` and
    ``what`` (pandas' own messages do not name the file).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MissingFileError(f"{what} not found: {path} ({exc.strerror})") from None
    if size == 0:
        raise CohortError(f"{path}: {what} is empty (0 bytes)")
    try:
        if path.suffix.lower() in EXCEL_SUFFIXES:
            table = pd.read_excel(path, **kwargs)
        else:
            table = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise CohortError(f"{path}: {what} is empty (no columns to parse)") from None
    except ImportError as exc:
        raise CohortError(f"{path}: cannot read {what}: {exc}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError, EOFError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CohortError(f"{path}: cannot parse {what} ({detail})") from None
    if table.empty and not allow_empty:
        raise CohortError(
            f"{path}: {what} has no rows (columns: {', '.join(map(str, table.columns))})"
        )
    return table


def warn_missing_features(slide_ids: Sequence[str], source: object, n_total: int) -> None:
    """List and count the slides without features (they are left out)."""
    if len(slide_ids) == 0:
        return
    warnings.warn(
        f"{source}: {len(slide_ids)} of {n_total} slide(s) have no features file (features.npy "
        f"or .h5) and are left out: {_short_list(sorted(map(str, slide_ids)))}",
        MissingFeaturesWarning,
        stacklevel=3,
    )


def check_features_file(path: str | os.PathLike) -> tuple[int, int]:
    """Open ``features.npy`` memory-mapped (or an h5 feature file's metadata); return
    (n_tiles, width) with width = 3 + D. Raise naming the file when it cannot be read or is
    not a (N, 3+D) matrix (an h5 without ``coords`` included)."""
    try:
        empty = Path(path).stat().st_size == 0
    except OSError as exc:
        raise MissingFileError(f"features file not found: {path} ({exc.strerror})") from None
    if empty:
        raise CohortError(f"{path}: features file is empty (0 bytes); re-extract this slide")
    from rl_benchmarks.datasets.h5_features import H5FeaturesError, h5_shape, is_h5

    if is_h5(path):
        try:
            n, d = h5_shape(path)
        except H5FeaturesError as exc:
            raise CohortError(str(exc)) from None
        return n, d + 3
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CohortError(f"{path}: cannot read features ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise CohortError(
            f"{path}: features must have shape (n_tiles, 3 + n_features), got {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise CohortError(f"{path}: features file has no tiles")
    return int(arr.shape[0]), int(arr.shape[1])
