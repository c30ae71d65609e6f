"""``load_dataset``: one entry point for every cohort (docs/protocol.md#cohort-loading).

Slide cohorts return one row per slide with ``slide_id, [slide_path,] coords_path,
features_path, patient_id, center_id, label``; tile cohorts one row per tile with
``image_path, image_id, label, center_id``. Class names, when known, are in
``frame.attrs["classes"]``.
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from rl_benchmarks import constants
from rl_benchmarks.datasets.slides_classification.camelyon16 import load_camelyon16
from rl_benchmarks.datasets.slides_classification.csv_cohort import is_csv_cohort, load_csv_cohort
from rl_benchmarks.datasets.slides_classification.tcga import load_tcga
from rl_benchmarks.datasets.tiles_classification.camelyon17_wilds import load_camelyon17_wilds
from rl_benchmarks.datasets.tiles_classification.nct_crc import load_nct_crc
from rl_benchmarks.datasets.validation import CohortError

logger = logging.getLogger(__name__)


def normalise_cohort(cohort: object) -> str:
    """Upper-case a reference cohort name (``tcga_coad`` -> ``TCGA_COAD``); raise listing
    the valid names when it is unknown. CSV paths are returned unchanged."""
    if is_csv_cohort(cohort):
        return str(cohort)
    name = str(cohort).strip().upper()
    if name not in constants.TASKS:
        raise ValueError(
            f"unknown cohort {cohort!r}: expected a CSV file or one of "
            f"{', '.join(constants.AVAILABLE_COHORTS)}"
        )
    return name


def load_slide_table(
    cohort: str,
    features_root_dir: str | os.PathLike | None = None,
    label: str | None = None,
    tile_size: int = 224,
    load_slide: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The unfiltered slide table of a slide cohort: labelled slides without features (or
    labelled patients without slides) are still there, so callers can report them."""
    cohort = normalise_cohort(cohort)
    if is_csv_cohort(cohort):
        return load_csv_cohort(cohort, features_root_dir, label=label, load_slide=load_slide)
    if cohort.startswith("CAMELYON16_"):
        if label is not None:
            raise ValueError(f"{cohort} has a single task (tumour); label must be None, got {label!r}")
        split = cohort.split("_", 1)[1]
        parts = ["TRAIN", "TEST"] if split == "FULL" else [split]
        frames = [
            load_camelyon16(features_root_dir, tile_size, p, load_slide, data_dir) for p in parts
        ]
        frame = pd.concat(frames, ignore_index=True)
        frame.attrs.update(classes=frames[0].attrs["classes"], task="binary", source=cohort)
        return frame
    if cohort.startswith("TCGA_"):
        frame = load_tcga(cohort, label, features_root_dir, tile_size, load_slide, data_dir)
        classes = frame.attrs.get("classes")
        if label is None:
            task = None
        elif label == "OS":
            task = "survival"
        else:
            task = "multiclass" if classes is not None and len(classes) > 2 else "binary"
        frame.attrs.update(task=task, source=f"{cohort}/{label}")
        return frame
    raise CohortError(f"{cohort} is a tile cohort, not a slide cohort")


def filter_slide_table(frame: pd.DataFrame, labelled: bool, load_slide: bool) -> pd.DataFrame:
    """Keep usable rows: a slide id, a label (when labelled), and a slide file
    (``load_slide``) or at least coords or features (features alone suffice: no
    ``coords.npy`` is needed to train on features)."""
    attrs = dict(frame.attrs)
    keep = frame["slide_id"].notna()
    if labelled:
        keep &= frame["label"].notna()
    if load_slide:
        keep &= frame["slide_path"].notna()
    else:
        keep &= frame["coords_path"].notna() | frame["features_path"].notna()
    out = frame[keep].reset_index(drop=True)
    out.attrs.update(attrs)
    return out


def load_dataset(
    cohort: str,
    features_root_dir: str | os.PathLike | None = None,
    label: str | None = None,
    tile_size: int = 224,
    load_slide: bool = True,
    data_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Load any cohort as a table (the reference's dispatcher).

    Args:
        cohort: a name of ``constants.TASKS`` (NCT-CRC_{FULL,TRAIN,VALID},
            CAMELYON17-WILDS_{FULL,TRAIN,VALID,TEST}, CAMELYON16_{FULL,TRAIN,TEST},
            TCGA_<X> and the unions TCGA_CRC/NSCLC/RCC; case-insensitive) or the path of
            a cohort CSV (see ``load_csv_cohort``).
        features_root_dir: folder holding ``CAMELYON16_FULL/`` or ``TCGA/<cohort>/``
            (slide cohorts); None leaves ``features_path`` empty.
        label: the TCGA task label (MSI, HRD, OS, CANCER_SUBTYPE, MOLECULAR_SUBTYPE,
            HISTOLOGICAL_SUBTYPE) or a CSV label column; None for the others.
        tile_size: selects ``coords_<tile_size>``.
        load_slide: also find the slide files, and keep only slides that have one.
        data_dir: data root override (else ``$RLB_DATA_DIR`` / ``conf.yaml``).
    """
    cohort = normalise_cohort(cohort)
    if is_csv_cohort(cohort) or cohort.startswith(("TCGA_", "CAMELYON16_")):
        table = load_slide_table(cohort, features_root_dir, label, tile_size, load_slide, data_dir)
        labelled = label is not None or not cohort.startswith("TCGA_")
        if load_slide and "slide_path" in table.columns and table["slide_path"].isna().all():
            logger.warning("%s: no slide file found", cohort)
        out = filter_slide_table(table, labelled, load_slide)
        logger.info("%s: %d of %d rows kept", cohort, len(out), len(table))
        return out
    if label is not None:
        raise ValueError(f"{cohort} is a tile cohort; label must be None, got {label!r}")
    name, split = cohort.rsplit("_", 1)
    loader = load_nct_crc if name == "NCT-CRC" else load_camelyon17_wilds
    if name == "NCT-CRC" and split == "FULL":
        frame = pd.concat([loader("TRAIN", data_dir), loader("VALID", data_dir)])
    else:
        frame = loader(split, data_dir)
    return frame.dropna(subset=["image_path"])
