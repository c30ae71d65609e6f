"""Small helpers shared by the cohort loaders: folder scans and the slide-table columns."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

# Columns of every slide table returned by ``load_dataset`` (slide cohorts).
SLIDE_COLUMNS = [
    "slide_id", "slide_path", "coords_path", "features_path", "patient_id", "center_id", "label",
]
SLIDE_EXTENSIONS = {
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
    ".dcm", ".isyntax", ".czi",
}
IMAGE_EXTENSIONS = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def strip_slide_ext(name: str) -> str:
    """``TCGA-XX.uuid.svs`` -> ``TCGA-XX.uuid`` (only a known slide extension is removed)."""
    p = Path(name)
    return p.stem if p.suffix.lower() in SLIDE_EXTENSIONS else name


def before_first_dot(name: str) -> str:
    """``Normal_001.tif`` -> ``Normal_001`` (the reference's Camelyon16 / NCT-CRC rule)."""
    return name.split(".", 1)[0]


def scan(
    folder: str | os.PathLike | None,
    pattern: str,
    column: str,
    slide_id: Callable[[Path], str],
) -> pd.DataFrame:
    """Glob ``folder/pattern``; return ``[slide_id, column]`` sorted by slide id.

    A missing folder (or ``None``) gives an empty table: the merge then leaves the
    column NaN, and the caller reports what is missing.
    """
    if folder is None or not Path(folder).is_dir():
        return pd.DataFrame({"slide_id": pd.Series(dtype=object), column: pd.Series(dtype=object)})
    files = sorted(Path(folder).glob(pattern))
    frame = pd.DataFrame(
        {"slide_id": [slide_id(f) for f in files], column: [str(f) for f in files]},
        dtype=object,
    )
    return frame.drop_duplicates(subset="slide_id", keep="first").reset_index(drop=True)


def scan_features(
    folder: str | os.PathLike | None,
    folder_id: Callable[[Path], str],
    file_id: Callable[[Path], str],
) -> pd.DataFrame:
    """``[slide_id, features_path]`` of a features folder, in this order of preference per
    slide: ``<slide>/features.npy``, ``<slide>/features.h5`` (``rlbench extract-slides``
    layouts) and TRIDENT/CLAM's flat ``<slide>.h5`` (docs/interop.md)."""
    parts = [
        scan(folder, "*/features.npy", "features_path", folder_id),
        scan(folder, "*/features.h5", "features_path", folder_id),
        scan(folder, "*.h5", "features_path", file_id),
    ]
    frame = pd.concat(parts, ignore_index=True)
    return frame.drop_duplicates(subset="slide_id", keep="first").reset_index(drop=True)


def outer_merge(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Outer-merge tables on ``slide_id``."""
    out = frames[0]
    for f in frames[1:]:
        out = out.merge(f, on="slide_id", how="outer")
    return out


def finish_slide_table(frame: pd.DataFrame, load_slide: bool) -> pd.DataFrame:
    """Put the standard slide columns first (``slide_path`` only with ``load_slide``)."""
    for col in SLIDE_COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    cols = [c for c in SLIDE_COLUMNS if load_slide or c != "slide_path"]
    extra = [c for c in frame.columns if c not in SLIDE_COLUMNS]
    frame = frame[cols + extra]
    return frame.reset_index(drop=True)
