"""Camelyon16 slides: tumour (1) versus normal (0); each slide is its own patient."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from rl_benchmarks import constants
from rl_benchmarks.datasets._tables import (
    before_first_dot,
    finish_slide_table,
    outer_merge,
    scan,
    scan_features,
)
from rl_benchmarks.datasets.validation import (
    check_known_values,
    check_label_spellings,
    read_table,
    require_columns,
    require_file,
)

CLASSES = ["Normal", "Tumor"]


def load_camelyon16_labels(cohort: str = "TRAIN", data_dir: str | os.PathLike | None = None):
    """Read ``clinical/{train,test}_clinical_data.csv``: columns ``Unnamed: 0`` (slide name)
    and ``target`` ("Tumor"/"Normal"); returns ``[patient_id, label]`` (1.0 = Tumor)."""
    cohort = cohort.upper()
    paths = constants.camelyon16_paths(data_dir)["LABELS"]
    if cohort not in paths:
        raise ValueError(f"Camelyon16 cohort must be TRAIN or TEST (FULL = both), got {cohort!r}")
    path = require_file(paths[cohort], "Camelyon16 clinical CSV")
    table = read_table(path, "Camelyon16 clinical CSV")
    require_columns(table, ["target"], path)
    id_col = "Unnamed: 0" if "Unnamed: 0" in table.columns else table.columns[0]
    check_label_spellings(table["target"], path, "target")
    check_known_values(table["target"], CLASSES, path, "target")
    labels = pd.DataFrame(
        {
            "patient_id": table[id_col].astype(str).map(before_first_dot),
            "label": (table["target"] == "Tumor").astype(float),
        }
    ).drop_duplicates()
    return labels


def load_camelyon16(
    features_root_dir: str | os.PathLike | None = None,
    tile_size: int = 224,
    cohort: str = "TRAIN",
    load_slide: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Slide table of Camelyon16 ``cohort`` ("TRAIN" or "TEST").

    Features are read from ``<features_root_dir>/CAMELYON16_FULL/<slide>.tif/features.npy``
    (or ``features.h5``, or a TRIDENT ``<slide>.h5``),
    coords from ``coords_<tile_size>/CAMELYON16_FULL/<slide>.tif/coords.npy``. Only slides
    listed in the clinical CSV are kept (a right merge); missing paths stay NaN.
    """
    paths = constants.camelyon16_paths(data_dir)
    labels = load_camelyon16_labels(cohort, data_dir)

    def name(p: Path) -> str:
        return before_first_dot(p.name)

    def folder(p: Path) -> str:
        return before_first_dot(p.parent.name)

    tables = [
        scan(paths["COORDS"](tile_size), "*/coords.npy", "coords_path", folder),
        scan_features(
            Path(features_root_dir) / "CAMELYON16_FULL" if features_root_dir else None,
            folder, name,
        ),
    ]
    if load_slide:
        tables.insert(0, scan(paths["SLIDES"], "*.tif", "slide_path", name))
    histo = outer_merge(tables)
    histo["patient_id"] = histo["slide_id"]
    frame = histo.merge(labels, on="patient_id", how="right")
    frame["slide_id"] = frame["patient_id"]
    frame["center_id"] = None
    frame = finish_slide_table(frame, load_slide)
    frame.attrs["classes"] = list(CLASSES)
    return frame
