"""Tier-1 fixtures: a miniature data root in the reference's exact layouts and formats
(docs/protocol.md#on-disk-layout, #cohort-loading, #tcga-labels), written by the tests."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FEAT_DIM = 8


def write_features(folder: Path, n_tiles: int, seed: int, coords: bool = False) -> Path:
    """``folder/features.npy`` (n, 3+D) float32 ``[level, col, row, f...]``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    meta = np.column_stack(
        [np.full(n_tiles, 17), np.arange(n_tiles) % 7, np.arange(n_tiles) // 7]
    ).astype(np.float32)
    feats = np.concatenate([meta, rng.normal(size=(n_tiles, FEAT_DIM)).astype(np.float32)], 1)
    np.save(folder / "features.npy", feats)
    if coords:
        np.save(folder / "coords.npy", meta.astype(np.int64))
    return folder / "features.npy"


def slide_name(patient: str, k: int = 1) -> str:
    return f"{patient}-01Z-00-DX{k}.{k:08d}-AAAA-BBBB.svs"


class RefData:
    """Builds a reference data root under ``tmp``."""

    write_features = staticmethod(write_features)

    def __init__(self, root: Path) -> None:
        self.root = root
        self.raw = root / "raw"
        self.features = root / "preprocessed" / "slides_classification" / "features" / "iBOTViTBasePANCAN"
        self.coords = root / "preprocessed" / "slides_classification" / "coords" / "coords_224"
        self.tcga_clinical = self.raw / "slides_classification" / "TCGA" / "clinical"

    # ---- TCGA ----
    def tcga_slides(
        self, cohort: str, slides: dict[str, int], n_tiles: int = 12,
        no_features: tuple[str, ...] = (), with_coords: tuple[str, ...] = (),
        with_slide_file: bool = False,
    ) -> list[str]:
        """Write features (and optionally coords / slide files) for ``{patient: n_slides}``.
        Returns the slide ids (file names without .svs)."""
        ids = []
        for j, (patient, n) in enumerate(sorted(slides.items())):
            for k in range(1, n + 1):
                name = slide_name(patient, k)
                sid = name[: -len(".svs")]
                ids.append(sid)
                if patient not in no_features:
                    write_features(self.features / "TCGA" / cohort / name, n_tiles + j, seed=j * 10 + k)
                if patient in with_coords:
                    c = self.coords / "TCGA" / cohort / name
                    c.mkdir(parents=True, exist_ok=True)
                    np.save(c / "coords.npy", np.zeros((n_tiles, 3), dtype=np.int64))
                if with_slide_file:
                    s = self.raw / "slides_classification" / "TCGA" / "slides" / "parafine" / cohort / f"uuid-{j}-{k}"
                    s.mkdir(parents=True, exist_ok=True)
                    (s / name).write_bytes(b"not a real slide")
        return ids

    def survival_csv(self, cohort: str, rows: list[tuple[str, object, object]]) -> Path:
        """TCGA-CDR-style survival CSV: (barcode, OS, OS.time)."""
        path = self.tcga_clinical / "survival" / f"survival_labels_{cohort.lower()}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(
            {
                "bcr_patient_barcode": [r[0] for r in rows],
                "type": cohort.replace("TCGA_", ""),
                "age_at_initial_pathologic_diagnosis": 60,
                "gender": "FEMALE",
                "race": "[Not Available]",
                "ajcc_pathologic_tumor_stage": "Stage II",
                "histological_grade": "[Not Available]",
                "OS": [r[1] for r in rows],
                "OS.time": [r[2] for r in rows],
                "PFI": 0,
                "PFI.time": 100.0,
            }
        )
        frame.to_csv(path)  # the CDR export keeps an unnamed index column
        return path

    def msi_csv(self, cohort: str, rows: list[tuple[str, str]]) -> Path:
        path = self.tcga_clinical / "msi" / f"msi_labels_{cohort.lower()}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{p},{s}\n" for p, s in rows))  # no header
        return path

    def hrd_csv(self, cohort: str, rows: list[tuple[str, object]]) -> Path:
        path = self.tcga_clinical / "hrd" / f"hrd_labels_{cohort.lower()}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"patient_id": [r[0] for r in rows], "HRD": [r[1] for r in rows]}).to_csv(
            path, index=False
        )
        return path

    def subtypes_tsv(
        self, cohort: str, rows: list[tuple[str, object, object]], readme_spelling: bool = False
    ) -> Path:
        """cBioPortal PanCancer Atlas clinical TSV (gz): (patient, Subtype, Cancer Type Detailed)."""
        short = cohort.lower().replace("tcga_", "")
        name = f"{short}_tcga" if readme_spelling else f"tcga_{short}"
        path = self.tcga_clinical / "subtypes" / f"{name}_pan_can_atlas_2018_clinical_data.tsv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(
            {
                "Study ID": f"{short}_tcga_pan_can_atlas_2018",
                "Patient ID": [r[0] for r in rows],
                "Sample ID": [f"{r[0]}-01" for r in rows],
                "Cancer Type": "Breast Cancer",
                "Cancer Type Detailed": [r[2] for r in rows],
                "Subtype": [r[1] for r in rows],
                "TCGA PanCanAtlas Cancer Type Acronym": short.upper(),
                "Tumor Type": "Primary",
            }
        )
        with gzip.open(path, "wt") as f:
            frame.to_csv(f, sep="\t", index=False)
        return path

    # ---- Camelyon16 ----
    def camelyon16(self, train: dict[str, str], test: dict[str, str], no_features=(), with_slides=False):
        clinical = self.raw / "slides_classification" / "CAMELYON16_FULL" / "clinical"
        clinical.mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", train), ("test", test)):
            pd.DataFrame({"target": list(rows.values())}, index=list(rows)).to_csv(
                clinical / f"{split}_clinical_data.csv"
            )
            for i, name in enumerate(rows):
                if name not in no_features:
                    write_features(self.features / "CAMELYON16_FULL" / f"{name}.tif", 5 + i, seed=i)
                if with_slides:
                    s = self.raw / "slides_classification" / "CAMELYON16_FULL" / "slides"
                    s.mkdir(parents=True, exist_ok=True)
                    (s / f"{name}.tif").write_bytes(b"x")

    # ---- tiles ----
    def nct_crc(self, counts: dict[str, dict[str, int]], label_dir: str = "clinical",
                valid_name: str = "CRC-VAL-HE-7K", write_labels: bool = True):
        from PIL import Image

        root = self.raw / "tiles_classification" / "NCT-CRC_FULL"
        folders = {"TRAIN": "NCT-CRC-HE-100K-NONORM", "VALID": valid_name}
        for split, per_class in counts.items():
            for cls, n in per_class.items():
                d = root / "patches" / folders[split] / cls
                d.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    Image.new("RGB", (4, 4), (200, 100, 150)).save(d / f"{cls}-{split[0]}{i:04d}.tif")
        if write_labels:
            (root / label_dir).mkdir(parents=True, exist_ok=True)
            labels = {"ADI": 0, "BACK": 1, "DEB": 2, "LYM": 3, "MUC": 4, "MUS": 5, "NORM": 6, "STR": 7, "TUM": 8}
            with open(root / label_dir / "dict_labels.pkl", "wb") as f:
                pickle.dump(labels, f)
        return root

    def camelyon17_wilds(self, rows: list[tuple[int, int, int, int, int, int]]) -> Path:
        """metadata.csv rows: (patient, node, x, y, tumor, center)."""
        path = self.raw / "tiles_classification" / "CAMELYON17-WILDS_FULL" / "clinical" / "metadata.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(rows, columns=["patient", "node", "x_coord", "y_coord", "tumor", "center"])
        frame["slide"] = frame["patient"] * 5 + frame["node"]
        frame["split"] = 0
        frame.to_csv(path)
        return path


@pytest.fixture
def ref(tmp_path, monkeypatch) -> RefData:
    """A fresh reference data root, made the active ``data_dir`` via $RLB_DATA_DIR."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("RLB_DATA_DIR", str(root))
    return RefData(root)
