"""TCGA cohorts: histology tables (slides, coords, features) and the label files.

Label rules (docs/protocol.md#tcga-labels):

* ``OS``: ``survival_labels_<cohort>.csv`` (TCGA-CDR columns); signed time, ``+OS.time``
  for a death (``OS == 1``) and ``-OS.time`` when censored. A zero time is censored at
  time 0 (label 0, event 0), as the reference's signed encoding makes it, with a warning
  listing the patients with slides concerned; a negative time is an error.
* ``MSI``: ``msi_labels_<cohort>.csv`` without header (patient, status); ``Indeterminate``
  rows dropped; ``MSI-H`` is 1, ``MSS`` and ``MSI-L`` are 0.
* ``HRD``: ``hrd_labels_<cohort>.csv`` with columns ``patient_id, HRD`` (0/1).
* ``CANCER_SUBTYPE``: the sub-cohort index in the union (LUAD 0 / LUSC 1, COAD 0 /
  READ 1, KIRC 0 / KIRP 1 / KICH 2), for a single cohort too (``TCGA_KICH`` alone is
  coded 2, with the union's class names).
* ``MOLECULAR_SUBTYPE`` / ``HISTOLOGICAL_SUBTYPE``: cBioPortal
  ``*_pan_can_atlas_2018_clinical_data.tsv.gz`` columns ``Subtype`` / ``Cancer Type
  Detailed``, codes in alphabetical order (scikit-learn ``LabelEncoder``); BRCA histology
  keeps ductal (0) and lobular (1) carcinomas only.

Patient id = the first 12 characters of the slide name, center id = the tissue source
site (second field of the barcode).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from rl_benchmarks import constants
from rl_benchmarks.datasets._tables import (
    finish_slide_table,
    outer_merge,
    scan,
    scan_features,
    strip_slide_ext,
)
from rl_benchmarks.datasets.validation import (
    CohortError,
    check_conflicting_labels,
    check_known_values,
    check_label_spellings,
    check_survival_times,
    read_table,
    require_columns,
    require_file,
)

MSI_VALUES = ["MSI-H", "MSI-L", "MSS", "Indeterminate"]
BRCA_HISTOLOGY = ["Breast Invasive Ductal Carcinoma", "Breast Invasive Lobular Carcinoma"]
SUBTYPE_COLUMNS = {"MOLECULAR_SUBTYPE": "Subtype", "HISTOLOGICAL_SUBTYPE": "Cancer Type Detailed"}
NOT_AVAILABLE = ["[Not Available]", "[Not Applicable]", "[Unknown]", "[Discrepancy]", "#N/A"]


def _check_cohort(cohort: str, label: str | None) -> None:
    if cohort not in constants.TCGA_TASKS:
        raise ValueError(
            f"unknown TCGA cohort {cohort!r}; expected one of {', '.join(constants.TCGA_TASKS)}"
        )
    allowed = constants.TCGA_TASKS[cohort]
    if label not in allowed:
        raise ValueError(
            f"label {label!r} is not available for {cohort}; expected one of "
            f"{', '.join(map(str, allowed))}"
        )


def load_histo(
    cohort: str,
    features_root_dir: str | os.PathLike | None = None,
    tile_size: int = 224,
    load_slide: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Slides, coords and features of one TCGA cohort, outer-merged on ``slide_id``.

    ``<features_root_dir>/TCGA/<cohort>/<slide>.svs/features.npy`` (or ``features.h5``, or
    a TRIDENT ``<slide>.h5``) and
    ``coords_<tile_size>/TCGA/<cohort>/<slide>.svs/coords.npy``; either may be absent.
    """
    paths = constants.tcga_paths(data_dir)

    def folder(p: Path) -> str:
        return strip_slide_ext(p.parent.name)

    def name(p: Path) -> str:
        return strip_slide_ext(p.name)

    tables = [
        scan(paths["COORDS"](tile_size) / cohort, "*/coords.npy", "coords_path", folder),
        scan_features(
            Path(features_root_dir) / "TCGA" / cohort if features_root_dir else None,
            folder, lambda p: strip_slide_ext(p.stem),
        ),
    ]
    if load_slide:
        slides_dir = paths["SLIDES"] / cohort
        slides = pd.concat(
            [scan(slides_dir, "*/*.svs", "slide_path", name), scan(slides_dir, "*.svs", "slide_path", name)]
        ).drop_duplicates(subset="slide_id")
        tables.insert(0, slides)
    histo = outer_merge(tables)
    histo["patient_id"] = histo["slide_id"].str[:12]
    return histo


def _read_survival(cohort: str, data_dir) -> tuple[pd.DataFrame, Path]:
    path = require_file(constants.tcga_paths(data_dir)["LABELS"]["OS"](cohort), f"{cohort} survival CSV")
    table = read_table(path, f"{cohort} survival CSV", na_values=NOT_AVAILABLE, low_memory=False)
    require_columns(table, ["bcr_patient_barcode"], path)
    return table, path


def load_label(
    cohort: str, label: str, data_dir: str | os.PathLike | None = None
) -> pd.DataFrame:
    """Labels of one TCGA cohort (not a union): ``[patient_id, label]`` (+ ``time``/``event``
    for OS). Class names are in ``frame.attrs["classes"]`` (None for OS)."""
    paths = constants.tcga_paths(data_dir)["LABELS"]
    if label == "OS":
        table, path = _read_survival(cohort, data_dir)
        require_columns(table, ["OS", "OS.time"], path)
        event = pd.to_numeric(table["OS"], errors="coerce")
        bad = table["OS"].notna() & ~event.isin([0, 1])
        if bad.any():
            check_known_values(table.loc[bad, "OS"], [0, 1], path, "OS")
        time = pd.to_numeric(table["OS.time"], errors="coerce")
        if (table["OS.time"].notna() & time.isna()).any():
            check_survival_times(table["OS.time"], table["bcr_patient_barcode"], path, "OS.time")
        # a zero time is censored at time 0 (the signed encoding cannot tell +0 from -0);
        # load_tcga warns listing the patients with slides concerned
        event = event.mask((time == 0) & event.notna(), 0)
        frame = pd.DataFrame(
            {"patient_id": table["bcr_patient_barcode"].astype(str), "time": time, "event": event}
        )
        frame["label"] = np.where(frame["event"] == 1, frame["time"], -frame["time"])
        frame = frame.dropna(subset=["time", "event"])
        frame.attrs.update(classes=None, source=str(path))
    elif label == "MSI":
        path = require_file(paths["MSI"](cohort), f"{cohort} MSI CSV")
        table = read_table(
            path, f"{cohort} MSI CSV", header=None, names=["patient_id", "label"], dtype=str
        )
        check_label_spellings(table["label"], path, "label (2nd column)")
        table["label"] = table["label"].str.strip()
        if len(table) and table["label"].iloc[0] not in MSI_VALUES:
            first_is_header = table["label"].iloc[1:].dropna().isin(MSI_VALUES).all()
            if first_is_header:  # tolerate a header row in a file meant to have none
                table = table.iloc[1:]
        check_known_values(table["label"], MSI_VALUES, path, "label (2nd column)")
        table = table[table["label"] != "Indeterminate"].dropna()
        frame = pd.DataFrame(
            {"patient_id": table["patient_id"], "label": (table["label"] == "MSI-H").astype(float)}
        )
        frame.attrs.update(classes=["MSS/MSI-L", "MSI-H"], source=str(path))
    elif label == "HRD":
        path = require_file(paths["HRD"](cohort), f"{cohort} HRD CSV")
        table = read_table(path, f"{cohort} HRD CSV")
        require_columns(table, ["patient_id", "HRD"], path)
        value = pd.to_numeric(table["HRD"], errors="coerce")
        if (table["HRD"].notna() & ~value.isin([0, 1])).any():
            raise CohortError(
                f"{path}: column 'HRD' must be binary 0/1, found "
                f"{sorted(set(table['HRD'].dropna().astype(str)) - {'0', '1', '0.0', '1.0'})[:10]} "
                "(the reference does not say how to binarise HRD scores)"
            )
        frame = pd.DataFrame({"patient_id": table["patient_id"].astype(str), "label": value})
        frame.attrs.update(classes=["HRD=0", "HRD=1"], source=str(path))
    elif label in SUBTYPE_COLUMNS:
        candidates = constants.tcga_paths(data_dir)["SUBTYPES_CANDIDATES"](cohort)
        path = require_file(paths["SUBTYPES"](cohort), f"{cohort} cBioPortal clinical TSV", candidates)
        table = read_table(
            path, f"{cohort} cBioPortal clinical TSV", sep="\t", comment=None, low_memory=False
        )
        column = SUBTYPE_COLUMNS[label]
        require_columns(table, ["Patient ID", column], path)
        table = table.dropna(subset=[column])
        check_label_spellings(table[column], path, column)
        if label == "HISTOLOGICAL_SUBTYPE" and cohort == "TCGA_BRCA":
            table = table[table[column].isin(BRCA_HISTOLOGY)]
        from sklearn.preprocessing import LabelEncoder

        encoder = LabelEncoder().fit(table[column].astype(str))
        frame = pd.DataFrame(
            {
                "patient_id": table["Patient ID"].astype(str),
                "label": encoder.transform(table[column].astype(str)).astype(float),
            }
        )
        frame.attrs.update(classes=[str(c) for c in encoder.classes_], source=str(path))
    elif label == "CANCER_SUBTYPE":
        raise ValueError("CANCER_SUBTYPE is built by load_tcga (it depends on the union)")
    else:
        raise ValueError(f"unknown TCGA label {label!r}")
    attrs = dict(frame.attrs)
    frame = frame.drop_duplicates().dropna(subset=["label"]).reset_index(drop=True)
    frame.attrs.update(attrs)
    check_conflicting_labels(frame, attrs["source"])
    return frame


def _cancer_subtype(cohort: str, code: int, histo: pd.DataFrame, data_dir) -> pd.DataFrame:
    """Constant label per sub-cohort; the patient list comes from the survival file when
    it exists (as in the reference), else from the slides themselves."""
    path = constants.tcga_paths(data_dir)["LABELS"]["OS"](cohort)
    if Path(path).is_file():
        table, _ = _read_survival(cohort, data_dir)
        patients = table["bcr_patient_barcode"].astype(str)
    else:
        patients = histo["patient_id"].dropna()
    return pd.DataFrame({"patient_id": patients.unique(), "label": float(code)})


def _load_one(
    cohort: str,
    label: str | None,
    features_root_dir,
    tile_size: int,
    load_slide: bool,
    data_dir,
    subtype_code: int,
) -> tuple[pd.DataFrame, list[str] | None]:
    histo = load_histo(cohort, features_root_dir, tile_size, load_slide, data_dir)
    classes = None
    if label is None:
        frame = histo.assign(label="NA")
    else:
        if label == "CANCER_SUBTYPE":
            labels = _cancer_subtype(cohort, subtype_code, histo, data_dir)
        else:
            labels = load_label(cohort, label, data_dir)
            classes = labels.attrs.get("classes")
        frame = labels.merge(histo, on="patient_id", how="outer")
        if label == "OS":
            with_slides = frame["slide_id"].notna() & frame["time"].notna()
            check_survival_times(
                frame.loc[with_slides, "time"], frame.loc[with_slides, "patient_id"],
                labels.attrs["source"], "OS.time",
            )
    return frame, classes


def load_tcga(
    cohort: str,
    label: str | None = None,
    features_root_dir: str | os.PathLike | None = None,
    tile_size: int = 224,
    load_slide: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Slide table of a TCGA cohort or union (TCGA_CRC, TCGA_NSCLC, TCGA_RCC) with ``label``.

    Rows are slides (several per patient) plus, with a label, labelled patients that have
    no slide (``slide_id`` NaN); ``load_dataset`` filters them. ``label`` None gives
    ``label = "NA"``.
    """
    _check_cohort(cohort, label)
    subs = constants.TCGA_UNIONS.get(cohort, [cohort])
    frames, classes = [], None
    for sub in subs:
        code = constants.cancer_subtype_code(sub) if label == "CANCER_SUBTYPE" else 0
        frame, sub_classes = _load_one(
            sub, label, features_root_dir, tile_size, load_slide, data_dir, code
        )
        frames.append(frame)
        if sub_classes is not None:
            if classes is not None and label in SUBTYPE_COLUMNS and sub_classes != classes:
                raise CohortError(f"{cohort}: {label} classes differ between sub-cohorts")
            classes = sub_classes
    if label == "CANCER_SUBTYPE":  # the union's classes, also for a single cohort
        union = constants.tcga_union_of(subs[0])
        classes = [s.replace("TCGA_", "") for s in constants.TCGA_UNIONS[union]]
    frame = pd.concat(frames, ignore_index=True)
    frame["center_id"] = frame["patient_id"].str.split("-").str[1]
    frame = finish_slide_table(frame, load_slide)
    frame.attrs["classes"] = classes
    return frame
