"""NCT-CRC-HE (Kather et al.): 224-px colorectal tiles in 9 classes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd

from rl_benchmarks import constants
from rl_benchmarks.datasets._tables import IMAGE_EXTENSIONS, before_first_dot
from rl_benchmarks.datasets.validation import CohortError, MissingFileError, require_file


def load_nct_crc_labels(data_dir: str | os.PathLike | None = None) -> dict[str, int]:
    """The class-folder -> code dict of ``dict_labels.pkl`` (``clinical/`` or ``labels/``).

    Without the pickle, the reference's codes (ADI 0, BACK 1, ..., TUM 8) are used and a
    warning says so. The pickle is read as plain data only (a restricted unpickler: a
    file asking for any other global is refused, as it could run code).
    """
    paths = constants.nct_crc_paths(data_dir)
    path = Path(paths["LABELS"])
    if not path.is_file():
        warnings.warn(
            f"NCT-CRC label dict not found ({', '.join(map(str, paths['LABELS_CANDIDATES']))}); "
            "using the reference codes ADI 0, BACK 1, DEB 2, LYM 3, MUC 4, MUS 5, NORM 6, "
            "STR 7, TUM 8",
            stacklevel=2,
        )
        return dict(constants.NCT_CRC_LABELS)
    from rl_benchmarks.utils.safe_pickle import UnsafePickleError, load_legacy_pickle

    try:
        labels = load_legacy_pickle(path)
    except (UnsafePickleError, ValueError) as exc:
        raise CohortError(str(exc)) from None
    if not isinstance(labels, dict):
        raise CohortError(f"{path}: expected a dict class name -> code, got {type(labels).__name__}")
    return {str(k): int(v) for k, v in labels.items()}


def load_nct_crc(cohort: str = "TRAIN", data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Tiles of NCT-CRC ``cohort``: "TRAIN" (NCT-CRC-HE-100K-NONORM) or "VALID"
    (CRC-VAL-HE-7K, also found as NCT-CRC-VAL-HE-7K). Columns ``image_path, image_id,
    label, center_id`` (None), indexed by ``image_id`` (file name up to the first ".")."""
    cohort = cohort.upper()
    paths = constants.nct_crc_paths(data_dir)
    if cohort not in ("TRAIN", "VALID"):
        raise ValueError(f"NCT-CRC cohort must be TRAIN or VALID (FULL = both), got {cohort!r}")
    alternatives = paths["VALID_CANDIDATES"] if cohort == "VALID" else ()
    root = require_file(paths[cohort], f"NCT-CRC {cohort} patch folder", alternatives)
    label_codes = load_nct_crc_labels(data_dir)
    files = sorted(
        p for p in root.glob("*/*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not files:
        raise MissingFileError(f"no tile images found under {root}/<CLASS>/")
    unknown = sorted({p.parent.name for p in files} - set(label_codes))
    if unknown:
        raise CohortError(
            f"{root}: class folder(s) {unknown} are not in the label dict "
            f"({sorted(label_codes)})"
        )
    frame = pd.DataFrame(
        {
            "image_path": [str(p) for p in files],
            "image_id": [before_first_dot(p.name) for p in files],
            "label": [label_codes[p.parent.name] for p in files],
            "center_id": None,
        }
    )
    return frame.set_index("image_id", drop=False).rename_axis(None)
