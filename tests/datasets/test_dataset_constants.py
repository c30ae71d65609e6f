"""The constants module resolves data-root paths lazily (nothing read at import)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from rl_benchmarks import constants, paths


def test_import_needs_no_data_root(tmp_path):
    code = "import rl_benchmarks.constants as c; print(len(c.TASKS), c.TILE_SIZES['iBOTViTBasePANCAN'])"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["24", "224"]


def test_paths_follow_the_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "nowhere")
    monkeypatch.delenv("RLB_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="data_dir is not set"):
        _ = constants.RAW_DATA_DIR
    monkeypatch.setenv("RLB_DATA_DIR", str(tmp_path / "a"))
    assert constants.RAW_DATA_DIR == tmp_path / "a" / "raw"
    monkeypatch.setenv("RLB_DATA_DIR", str(tmp_path / "b"))
    assert constants.PREPROCESSED_DATA_DIR == tmp_path / "b" / "preprocessed"
    assert constants.MODEL_WEIGHTS["iBOTViTBasePANCAN"] == tmp_path / "b" / "weights" / "ibot_vit_base_pancan.pth"
    tcga = constants.TCGA_PATHS
    assert tcga["LABELS"]["OS"]("TCGA_COAD").name == "survival_labels_tcga_coad.csv"
    assert tcga["COORDS"](224) == tmp_path / "b" / "preprocessed/slides_classification/coords/coords_224/TCGA"
    from rl_benchmarks.constants import CAMELYON16_PATHS  # from-import goes through __getattr__

    assert CAMELYON16_PATHS["LABELS"]["TRAIN"].name == "train_clinical_data.csv"
    with pytest.raises(AttributeError):
        _ = constants.NOT_A_CONSTANT


def test_both_spellings_are_accepted(ref):
    tcga = constants.TCGA_PATHS
    assert tcga["LABELS"]["SUBTYPES"]("TCGA_BRCA").name == "tcga_brca_pan_can_atlas_2018_clinical_data.tsv.gz"
    ref.subtypes_tsv("TCGA_BRCA", [("TCGA-A1-A0SB", "BRCA_LumA", "x")], readme_spelling=True)
    assert tcga["LABELS"]["SUBTYPES"]("TCGA_BRCA").name == "brca_tcga_pan_can_atlas_2018_clinical_data.tsv.gz"
    assert constants.NCT_CRC_PATHS["VALID"].name == "CRC-VAL-HE-7K"
    ref.nct_crc({"VALID": {"ADI": 1}}, label_dir="labels", valid_name="NCT-CRC-VAL-HE-7K")
    nct = constants.NCT_CRC_PATHS
    assert nct["VALID"].name == "NCT-CRC-VAL-HE-7K" and nct["LABELS"].parent.name == "labels"


def test_task_tables():
    assert len(constants.TCGA_COHORTS) == 11
    assert set(constants.TASKS) >= {"TCGA_CRC", "TCGA_NSCLC", "TCGA_RCC", "NCT-CRC_FULL", "CAMELYON16_TEST"}
    assert constants.TCGA_TASKS["TCGA_BRCA"] == [None, "HRD", "OS", "MOLECULAR_SUBTYPE", "HISTOLOGICAL_SUBTYPE"]
    assert importlib.import_module("rl_benchmarks.datasets").load_dataset.__name__ == "load_dataset"
