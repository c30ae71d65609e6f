"""Camelyon17-WILDS: 96-px lymph-node patches from 5 hospitals, tumour (1) vs normal (0)."""

from __future__ import annotations

import os

import pandas as pd

from rl_benchmarks import constants
from rl_benchmarks.datasets.validation import read_table, require_columns, require_file

COLUMNS = ["patient", "node", "x_coord", "y_coord", "tumor", "center"]


def load_camelyon17_wilds(
    cohort: str = "TRAIN", data_dir: str | os.PathLike | None = None
) -> pd.DataFrame:
    """Patches of ``cohort``, split by hospital: TRAIN {0, 3, 4}, VALID {1}, TEST {2},
    FULL {0..4}. Columns ``image_path, image_id, label, center_id``, indexed by
    ``image_id = patch_patient_PPP_node_N_x_X_y_Y``. Paths are computed, not checked."""
    cohort = cohort.upper()
    if cohort not in constants.CAMELYON17_WILDS_CENTERS:
        raise ValueError(
            f"Camelyon17-WILDS cohort must be one of "
            f"{', '.join(constants.CAMELYON17_WILDS_CENTERS)}, got {cohort!r}"
        )
    paths = constants.camelyon17_wilds_paths(data_dir)
    path = require_file(paths["METADATA"], "Camelyon17-WILDS metadata.csv")
    meta = read_table(path, "Camelyon17-WILDS metadata.csv", index_col=0)
    require_columns(meta, COLUMNS, path)
    meta = meta[meta["center"].isin(constants.CAMELYON17_WILDS_CENTERS[cohort])]
    patient = meta["patient"].astype(int).map("{:03d}".format)
    node = meta["node"].astype(int).astype(str)
    folder = "patient_" + patient + "_node_" + node
    image_id = (
        "patch_" + folder + "_x_" + meta["x_coord"].astype(int).astype(str)
        + "_y_" + meta["y_coord"].astype(int).astype(str)
    )
    patches = str(paths["PATCHES"])
    frame = pd.DataFrame(
        {
            "image_path": patches + os.sep + folder + os.sep + image_id + ".png",
            "image_id": image_id,
            "label": meta["tumor"].astype(int),
            "center_id": meta["center"].astype(int),
        }
    )
    return frame.set_index("image_id", drop=False).rename_axis(None)
