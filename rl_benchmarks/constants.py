"""The reference's constants: data roots, dataset paths, tasks and cohorts.

Unlike the reference, nothing is read at import time. The names that depend on the
data roots (``DATA_ROOT_DIR``, ``RAW_DATA_DIR``, ``CAMELYON16_PATHS``, ``MODEL_WEIGHTS``,
...) are computed on each access through a module-level ``__getattr__`` from
:mod:`rl_benchmarks.paths`, so ``import rl_benchmarks.constants`` works without any
``conf.yaml`` and a change of ``$RLB_DATA_DIR`` is seen at once. The path builders
(:func:`camelyon16_paths`, :func:`tcga_paths`, ...) take an optional ``data_dir``
override, which the dataset loaders forward.

Where the reference's README and constants disagree on a file name
(docs/protocol.md#folder-spellings), both spellings are listed; :func:`first_existing` picks
the one on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rl_benchmarks import paths

# --------------------------------------------------------------------------------------
# Constants that do not depend on the data roots
# --------------------------------------------------------------------------------------
# ImageNet normalisation of the extractors' input (Phikon's too): the one definition, which
# the extractors, fine-tuning and pre-training import (and some re-export).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Tile size (px at the extractor's mpp) per feature extractor. The reference only knows
# iBOTViTBasePANCAN; the others are the sizes its paper used (coords_224 / 256 / 4096).
TILE_SIZES: dict[str, int] = {
    "iBOTViTBasePANCAN": 224,
    "iBOTViTSmallCOAD": 224,
    "iBOTViTBaseCOAD": 224,
    "iBOTViTLargeCOAD": 224,
    "ResNet50": 224,
    "MoCoWideResNetCOAD": 224,
    "CTransPath": 224,
    "DinoChenBRCA": 256,
    "DinoChenPancancer": 256,
    "HIPT": 4096,
}

# The 11 TCGA cohorts with slides, and the unions the dispatcher builds from them.
TCGA_COHORTS: list[str] = [
    "TCGA_BRCA",
    "TCGA_COAD",
    "TCGA_KICH",
    "TCGA_KIRC",
    "TCGA_KIRP",
    "TCGA_LUAD",
    "TCGA_LUSC",
    "TCGA_OV",
    "TCGA_PAAD",
    "TCGA_READ",
    "TCGA_STAD",
]
# Union -> its sub-cohorts, in CANCER_SUBTYPE code order (LUAD 0 / LUSC 1, ...).
TCGA_UNIONS: dict[str, list[str]] = {
    "TCGA_CRC": ["TCGA_COAD", "TCGA_READ"],
    "TCGA_NSCLC": ["TCGA_LUAD", "TCGA_LUSC"],
    "TCGA_RCC": ["TCGA_KIRC", "TCGA_KIRP", "TCGA_KICH"],
}



def tcga_union_of(cohort: str) -> str:
    """The union a TCGA sub-cohort belongs to (``TCGA_KICH`` -> ``TCGA_RCC``); a union is
    its own union. Raises ValueError for a cohort in no union."""
    if cohort in TCGA_UNIONS:
        return cohort
    for union, subs in TCGA_UNIONS.items():
        if cohort in subs:
            return union
    raise ValueError(f"{cohort} is in none of the TCGA unions {', '.join(TCGA_UNIONS)}")


def cancer_subtype_code(cohort: str) -> int:
    """CANCER_SUBTYPE code of a sub-cohort: its index in its union's order (LUAD 0 /
    LUSC 1, COAD 0 / READ 1, KIRC 0 / KIRP 1 / KICH 2), whether it is loaded alone or
    as part of the union."""
    return TCGA_UNIONS[tcga_union_of(cohort)].index(cohort)


# Labels allowed per TCGA cohort (None = no label, features only).
_CRC = [None, "MSI", "OS"]
_RCC = [None, "CANCER_SUBTYPE"]
_NSCLC = [None, "OS", "CANCER_SUBTYPE"]
TCGA_TASKS: dict[str, list[str | None]] = {
    "TCGA_BRCA": [None, "HRD", "OS", "MOLECULAR_SUBTYPE", "HISTOLOGICAL_SUBTYPE"],
    "TCGA_COAD": _CRC,
    "TCGA_READ": _CRC,
    "TCGA_CRC": _CRC,
    "TCGA_KICH": _RCC,
    "TCGA_KIRC": _RCC,
    "TCGA_KIRP": _RCC,
    "TCGA_RCC": _RCC,
    "TCGA_LUAD": _NSCLC,
    "TCGA_LUSC": _NSCLC,
    "TCGA_NSCLC": _NSCLC,
    "TCGA_OV": [None, "HRD"],
    "TCGA_PAAD": [None, "OS"],
    "TCGA_STAD": [None, "MSI"],
}

# Every cohort name ``load_dataset`` accepts -> the labels it accepts.
TASKS: dict[str, list[str | None]] = {
    "NCT-CRC_FULL": [None],
    "NCT-CRC_TRAIN": [None],
    "NCT-CRC_VALID": [None],
    "CAMELYON17-WILDS_FULL": [None],
    "CAMELYON17-WILDS_TRAIN": [None],
    "CAMELYON17-WILDS_VALID": [None],
    "CAMELYON17-WILDS_TEST": [None],
    "CAMELYON16_FULL": [None],
    "CAMELYON16_TRAIN": [None],
    "CAMELYON16_TEST": [None],
    **TCGA_TASKS,
}
AVAILABLE_COHORTS: list[str] = list(TASKS)
SLIDE_COHORTS: list[str] = [c for c in TASKS if c.startswith(("TCGA_", "CAMELYON16_"))]
TILE_COHORTS: list[str] = [c for c in TASKS if c not in SLIDE_COHORTS]

# NCT-CRC folder -> label code used by the reference (its dict_labels.pkl; BACK = 1).
NCT_CRC_LABELS: dict[str, int] = {
    "ADI": 0, "BACK": 1, "DEB": 2, "LYM": 3, "MUC": 4, "MUS": 5, "NORM": 6, "STR": 7, "TUM": 8,
}
# Camelyon17-WILDS hospitals per split (the WILDS OOD val hospital is 1, test is 2).
CAMELYON17_WILDS_CENTERS: dict[str, list[int]] = {
    "TRAIN": [0, 3, 4], "VALID": [1], "TEST": [2], "FULL": [0, 1, 2, 3, 4],
}


# --------------------------------------------------------------------------------------
# Path builders (data-root dependent; called lazily)
# --------------------------------------------------------------------------------------
def first_existing(candidates: Iterable[str | os.PathLike]) -> Path:
    """The first candidate that exists, else the first one (for the error message)."""
    candidates = [Path(c) for c in candidates]
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` (explicit, $RLB_DATA_DIR, or conf.yaml)."""
    return paths.data_dir(data_dir)


def raw_dir(data_dir: str | os.PathLike | None = None) -> Path:
    return data_root(data_dir) / "raw"


def preprocessed_dir(data_dir: str | os.PathLike | None = None) -> Path:
    return data_root(data_dir) / "preprocessed"


def weights_dir(data_dir: str | os.PathLike | None = None) -> Path:
    return data_root(data_dir) / "weights"


def coords_root(tile_size: int, data_dir: str | os.PathLike | None = None) -> Path:
    """``preprocessed/slides_classification/coords/coords_<tile_size>``."""
    return preprocessed_dir(data_dir) / "slides_classification" / "coords" / f"coords_{tile_size}"


def camelyon16_paths(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Camelyon16: slides, clinical CSVs and coords (a function of the tile size)."""
    root = raw_dir(data_dir) / "slides_classification" / "CAMELYON16_FULL"
    return {
        "SLIDES": root / "slides",
        "LABELS": {
            "TRAIN": root / "clinical" / "train_clinical_data.csv",
            "TEST": root / "clinical" / "test_clinical_data.csv",
        },
        "COORDS": lambda tile_size: coords_root(tile_size, data_dir) / "CAMELYON16_FULL",
    }


def _subtype_names(cohort: str) -> list[str]:
    short = cohort.lower().replace("tcga_", "")
    # constants spelling first, README spelling second (docs/protocol.md#folder-spellings)
    return [
        f"tcga_{short}_pan_can_atlas_2018_clinical_data.tsv.gz",
        f"{short}_tcga_pan_can_atlas_2018_clinical_data.tsv.gz",
    ]


def tcga_paths(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """TCGA: slides, coords (function of the tile size) and label files (function of
    the cohort name, e.g. ``TCGA_PATHS["LABELS"]["OS"]("TCGA_COAD")``)."""
    root = raw_dir(data_dir) / "slides_classification" / "TCGA"
    clinical = root / "clinical"

    def subtypes(cohort: str) -> Path:
        return first_existing(clinical / "subtypes" / n for n in _subtype_names(cohort))

    return {
        "SLIDES": root / "slides" / "parafine",
        "COORDS": lambda tile_size: coords_root(tile_size, data_dir) / "TCGA",
        "STATISTICS": root / "tcga_statistics.pk",
        "LABELS": {
            "OS": lambda cohort: clinical / "survival" / f"survival_labels_{cohort.lower()}.csv",
            "MSI": lambda cohort: clinical / "msi" / f"msi_labels_{cohort.lower()}.csv",
            "HRD": lambda cohort: clinical / "hrd" / f"hrd_labels_{cohort.lower()}.csv",
            "SUBTYPES": subtypes,
        },
        "SUBTYPES_CANDIDATES": lambda cohort: [
            clinical / "subtypes" / n for n in _subtype_names(cohort)
        ],
    }


def nct_crc_paths(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """NCT-CRC: label pickle and the two patch folders (both spellings accepted)."""
    root = raw_dir(data_dir) / "tiles_classification" / "NCT-CRC_FULL"
    label_candidates = [root / "clinical" / "dict_labels.pkl", root / "labels" / "dict_labels.pkl"]
    valid_candidates = [root / "patches" / "CRC-VAL-HE-7K", root / "patches" / "NCT-CRC-VAL-HE-7K"]
    return {
        "LABELS": first_existing(label_candidates),
        "LABELS_CANDIDATES": label_candidates,
        "TRAIN": root / "patches" / "NCT-CRC-HE-100K-NONORM",
        "VALID": first_existing(valid_candidates),
        "VALID_CANDIDATES": valid_candidates,
    }


def camelyon17_wilds_paths(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    root = raw_dir(data_dir) / "tiles_classification" / "CAMELYON17-WILDS_FULL"
    return {"METADATA": root / "clinical" / "metadata.csv", "PATCHES": root / "patches"}


def model_weights(data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    return {"iBOTViTBasePANCAN": weights_dir(data_dir) / "ibot_vit_base_pancan.pth"}


_LAZY: dict[str, Callable[[], Any]] = {
    "DATA_ROOT_DIR": lambda: data_root(),
    "LOGS_ROOT_DIR": lambda: paths.logs_dir(),
    "RAW_DATA_DIR": lambda: raw_dir(),
    "PREPROCESSED_DATA_DIR": lambda: preprocessed_dir(),
    "WEIGHTS_DATA_DIR": lambda: weights_dir(),
    "TCGA_SLIDES_DIR": lambda: tcga_paths()["SLIDES"],
    "CAMELYON16_PATHS": lambda: camelyon16_paths(),
    "TCGA_PATHS": lambda: tcga_paths(),
    "NCT_CRC_PATHS": lambda: nct_crc_paths(),
    "CAMELYON17_WILDS_PATHS": lambda: camelyon17_wilds_paths(),
    "MODEL_WEIGHTS": lambda: model_weights(),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return _LAZY[name]()
    raise AttributeError(f"module 'rl_benchmarks.constants' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
