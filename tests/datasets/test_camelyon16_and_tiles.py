"""Camelyon16 slides and the tile datasets (NCT-CRC, Camelyon17-WILDS, ImageFolder)."""

from __future__ import annotations

import pandas as pd
import pytest

from rl_benchmarks.datasets import (
    CohortError,
    MissingFeaturesWarning,
    SlideClassificationDataset,
    load_dataset,
    load_image_folder,
)

TRAIN = {"Normal_001": "Normal", "Tumor_001": "Tumor", "Normal_002": "Normal"}
TEST = {"Test_001": "Tumor", "Test_002": "Normal"}


def test_camelyon16_counts_labels_patients(ref):
    ref.camelyon16(TRAIN, TEST, with_slides=True)
    # a slide with features but absent from the clinical CSVs is not part of the cohort
    ref.write_features(ref.features / "CAMELYON16_FULL" / "Normal_099.tif", 4, seed=9)
    counts = {c: len(load_dataset(c, ref.features, load_slide=False)) for c in
              ("CAMELYON16_TRAIN", "CAMELYON16_TEST", "CAMELYON16_FULL")}
    assert counts == {"CAMELYON16_TRAIN": 3, "CAMELYON16_TEST": 2, "CAMELYON16_FULL": 5}
    full = load_dataset("CAMELYON16_FULL", ref.features, load_slide=True)
    assert len(full) == 5 and full["slide_path"].str.endswith(".tif").all()
    labels = full.set_index("slide_id")["label"].to_dict()
    assert labels == {"Normal_001": 0.0, "Tumor_001": 1.0, "Normal_002": 0.0, "Test_001": 1.0, "Test_002": 0.0}
    assert (full["patient_id"] == full["slide_id"]).all() and full["center_id"].isna().all()
    ds = SlideClassificationDataset(ref.features, "camelyon16_train", n_tiles=100)
    assert (ds.n_slides, ds.n_patients, ds.n_labels, ds.task) == (3, 3, 1, "binary")
    assert ds.slide_id.tolist() == ["Normal_001", "Normal_002", "Tumor_001"]
    assert ds.stratified.tolist() == [0, 0, 1]
    assert ds[0][0].shape == (5, 11)  # fewer tiles than n_tiles: all of them


def test_camelyon16_missing_features_and_bad_target(ref):
    ref.camelyon16(TRAIN, TEST, no_features=("Normal_002",))
    with pytest.warns(MissingFeaturesWarning, match=r"1 of 3 slide\(s\).*Normal_002"):
        ds = SlideClassificationDataset(ref.features, "CAMELYON16_TRAIN")
    assert ds.n_slides == 2
    ref.camelyon16({"Normal_001": "Normal", "Tumor_001": "Metastasis"}, TEST)
    match = r"train_clinical_data.csv: column 'target' has unknown label value\(s\) Metastasis"
    with pytest.raises(CohortError, match=match):
        load_dataset("CAMELYON16_TRAIN", ref.features, load_slide=False)
    with pytest.raises(ValueError, match="label must be None"):
        load_dataset("CAMELYON16_TRAIN", ref.features, label="OS")


@pytest.mark.parametrize("label_dir,valid_name", [("clinical", "CRC-VAL-HE-7K"), ("labels", "NCT-CRC-VAL-HE-7K")])
def test_nct_crc_both_spellings(ref, label_dir, valid_name):
    ref.nct_crc({"TRAIN": {"ADI": 2, "BACK": 1, "TUM": 2}, "VALID": {"ADI": 1, "TUM": 1}},
                label_dir=label_dir, valid_name=valid_name)
    train = load_dataset("NCT-CRC_TRAIN")
    valid = load_dataset("NCT-CRC_VALID")
    full = load_dataset("NCT-CRC_FULL")
    assert (len(train), len(valid), len(full)) == (5, 2, 7)
    assert list(train.columns) == ["image_path", "image_id", "label", "center_id"]
    assert train.loc["BACK-T0000", "label"] == 1 and train.loc["TUM-T0001", "label"] == 8
    assert (train.index == train["image_id"]).all() and train["center_id"].isna().all()
    assert sorted(full["label"].tolist()) == [0, 0, 0, 1, 8, 8, 8]


def test_nct_crc_unknown_class_folder(ref):
    ref.nct_crc({"TRAIN": {"ADI": 1, "FOO": 1}})
    with pytest.raises(CohortError, match=r"class folder\(s\) \['FOO'\] are not in the label dict"):
        load_dataset("NCT-CRC_TRAIN")


def test_camelyon17_wilds_splits_by_center(ref):
    rows = [(4, 4, 3328, 21792, 1, 0), (4, 4, 3360, 21792, 0, 0), (10, 0, 100, 200, 0, 1),
            (20, 2, 5, 6, 1, 2), (20, 2, 7, 6, 0, 2), (30, 1, 1, 1, 1, 3), (40, 3, 2, 2, 0, 4)]
    ref.camelyon17_wilds(rows)
    sizes = {s: len(load_dataset(f"CAMELYON17-WILDS_{s}")) for s in ("TRAIN", "VALID", "TEST", "FULL")}
    assert sizes == {"TRAIN": 4, "VALID": 1, "TEST": 2, "FULL": 7}
    train = load_dataset("CAMELYON17-WILDS_TRAIN")
    first = train.iloc[0]
    assert first["image_id"] == "patch_patient_004_node_4_x_3328_y_21792"
    assert first["image_path"].endswith("patches/patient_004_node_4/patch_patient_004_node_4_x_3328_y_21792.png")
    assert train["label"].tolist() == [1, 0, 1, 0] and sorted(set(train["center_id"])) == [0, 3, 4]


def test_camelyon17_wilds_missing_column(ref):
    path = ref.camelyon17_wilds([(4, 4, 1, 2, 1, 0)])
    pd.read_csv(path, index_col=0).drop(columns=["tumor"]).to_csv(path)
    with pytest.raises(CohortError, match=r"metadata.csv: missing column\(s\) 'tumor'"):
        load_dataset("CAMELYON17-WILDS_FULL")


def test_tile_cohort_rejects_label_and_unknown_cohort(ref):
    with pytest.raises(ValueError, match="tile cohort"):
        load_dataset("NCT-CRC_TRAIN", label="MSI")
    with pytest.raises(ValueError, match="unknown cohort"):
        load_dataset("NCT-CRC_TEST")


def test_image_folder_tier1(tmp_path):
    from PIL import Image

    for cls, names in {"b_cls": ["x.png", "y.jpg"], "a_cls": ["x.png"], "empty": []}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            Image.new("RGB", (3, 3)).save(tmp_path / cls / n)
    (tmp_path / "a_cls" / "notes.txt").write_text("not an image")
    df = load_image_folder(tmp_path)
    assert df.attrs["classes"] == ["a_cls", "b_cls"]
    assert df["image_id"].tolist() == ["a_cls/x", "b_cls/x", "b_cls/y"]
    assert df["label"].tolist() == [0, 1, 1] and df["center_id"].isna().all()
    df = load_image_folder(tmp_path, classes=["b_cls", "a_cls"])
    assert df.set_index("image_id")["label"].to_dict() == {"a_cls/x": 1, "b_cls/x": 0, "b_cls/y": 0}
    with pytest.raises(CohortError, match=r"class folder\(s\) \['b_cls'\]"):
        load_image_folder(tmp_path, classes=["a_cls"])
    with pytest.raises(FileNotFoundError, match="ImageFolder root not found"):
        load_image_folder(tmp_path / "nope")


def test_image_folder_crc_he_9class(real_data):
    root = real_data / "tiles" / "crc_he_9class"
    df = load_image_folder(root)
    truth = pd.read_csv(root / "labels.csv")
    assert len(df) == len(truth) == 41
    assert df.attrs["classes"] == ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
    by_path = {str(root / p): lab for p, lab in zip(truth["path"], truth["label"])}
    classes = df.attrs["classes"]
    assert all(classes[code] == by_path[path] for path, code in zip(df["image_path"], df["label"]))
    assert df["image_id"].is_unique and df["class_name"].value_counts()["BACK"] == 1
