"""TCGA cohorts and labels from fixtures in the reference's file formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.preprocessing import LabelEncoder

from rl_benchmarks.datasets import (
    CohortError,
    MissingFeaturesWarning,
    MissingFileError,
    SlideClassificationDataset,
    load_dataset,
)

A, B, C, D, E, F = (
    "TCGA-A6-2671", "TCGA-A6-2672", "TCGA-AA-3511", "TCGA-AA-3512", "TCGA-CK-4947", "TCGA-CK-4948",
)


@pytest.fixture
def coad_os(ref):
    # A has two slides; D has coords but no features; E has no time; F has no slide
    ref.tcga_slides("TCGA_COAD", {A: 2, B: 1, C: 1, D: 1, E: 1}, no_features=(D,), with_coords=(D,))
    ref.survival_csv(
        "TCGA_COAD",
        [(A, 1, 100), (B, 0, 200), (C, 1, 50.0), (D, 0, 300), (E, 1, "[Not Available]"), (F, 0, 400)],
    )
    return ref


def test_os_signed_labels_patients_centers(coad_os):
    df = load_dataset("TCGA_COAD", coad_os.features, label="OS", load_slide=False)
    # 5 slides of A, B, C, D (D found through coords only); E unlabelled, F without slide
    assert len(df) == 5
    by_slide = df.set_index("slide_id")
    assert by_slide["patient_id"].tolist() == [A, A, B, C, D]
    assert all(s[:12] == p for s, p in zip(by_slide.index, by_slide["patient_id"]))
    assert by_slide["label"].tolist() == [100.0, 100.0, -200.0, 50.0, -300.0]
    assert by_slide["center_id"].tolist() == ["A6", "A6", "A6", "AA", "AA"]
    assert df["features_path"].isna().sum() == 1 and df["coords_path"].notna().sum() == 1


def test_os_dataset_attributes_and_missing_features_warning(coad_os):
    with pytest.warns(MissingFeaturesWarning, match=r"1 of 5 slide\(s\).*TCGA-AA-3512"):
        ds = SlideClassificationDataset(coad_os.features, "TCGA_COAD", label="OS", n_tiles=10)
    assert ds.missing_features == [f"{D}-01Z-00-DX1.00000001-AAAA-BBBB"]
    assert (ds.n_slides, ds.n_patients, ds.n_features, ds.n_labels) == (4, 3, 8, 1)
    assert ds.task == "survival"
    assert ds.labels.tolist() == [100.0, 100.0, -200.0, 50.0]
    assert ds.stratified.tolist() == [1, 1, 0, 1]  # the event indicator
    assert ds.time.tolist() == [100.0, 100.0, 200.0, 50.0]
    x, y = ds[2]
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert tuple(x.shape) == (10, 3 + 8) and y.tolist() == [-200.0]


def test_negative_time_is_an_error_only_for_patients_with_slides(coad_os):
    coad_os.survival_csv("TCGA_COAD", [(A, 1, 100), (B, 0, 200), (C, 1, 50), (F, 0, -3)])
    assert len(load_dataset("TCGA_COAD", coad_os.features, label="OS", load_slide=False)) == 4
    coad_os.survival_csv("TCGA_COAD", [(A, 1, 100), (B, 0, -1), (C, 1, -5)])
    with pytest.raises(CohortError, match=r"survival_labels_tcga_coad.csv.*OS.time.*2 negative.*TCGA-A6-2672=-1"):
        load_dataset("TCGA_COAD", coad_os.features, label="OS", load_slide=False)


def test_unknown_os_event_value(coad_os):
    coad_os.survival_csv("TCGA_COAD", [(A, "dead", 100), (B, 0, 200)])
    with pytest.raises(CohortError, match=r"column 'OS' has unknown label value\(s\) dead"):
        load_dataset("TCGA_COAD", coad_os.features, label="OS", load_slide=False)


def test_missing_label_file_names_the_file(ref):
    ref.tcga_slides("TCGA_PAAD", {A: 1})
    with pytest.raises(MissingFileError, match=r"survival_labels_tcga_paad.csv"):
        load_dataset("TCGA_PAAD", ref.features, label="OS", load_slide=False)


def test_label_not_allowed_for_cohort(ref):
    with pytest.raises(ValueError, match="label 'MSI' is not available for TCGA_PAAD"):
        load_dataset("TCGA_PAAD", ref.features, label="MSI")
    with pytest.raises(ValueError, match="unknown cohort 'TCGA_XYZ'"):
        load_dataset("TCGA_XYZ", ref.features)


@pytest.fixture
def crc_msi(ref):
    coad = {A: 1, B: 1, C: 1, D: 1}
    read = {"TCGA-AF-2687": 1, "TCGA-AG-3574": 2, "TCGA-AG-3575": 1}
    ref.tcga_slides("TCGA_COAD", coad)
    ref.tcga_slides("TCGA_READ", read)
    ref.msi_csv("TCGA_COAD", [(A, "MSS"), (B, "MSI-H"), (C, "MSI-L"), (D, "Indeterminate")])
    ref.msi_csv("TCGA_READ", [("TCGA-AF-2687", "MSI-H"), ("TCGA-AG-3574", "MSS"), ("TCGA-AG-3575", "MSS")])
    return ref


def test_msi_union_labels_and_stratification(crc_msi):
    ds = SlideClassificationDataset(crc_msi.features, "TCGA_CRC", label="MSI", n_tiles=4)
    got = dict(zip(ds.slide_id, ds.labels))
    expected = {A: 0.0, B: 1.0, C: 0.0, "TCGA-AF-2687": 1.0, "TCGA-AG-3574": 0.0, "TCGA-AG-3575": 0.0}
    assert {s[:12]: v for s, v in got.items()} == expected  # D (Indeterminate) dropped
    assert ds.n_slides == 7 and ds.n_patients == 6 and ds.n_labels == 1
    assert ds.stratified.tolist() == ds.labels.astype(int).tolist()
    assert sorted(set(ds.center_id)) == ["A6", "AA", "AF", "AG"]
    assert ds.classes == ["MSS/MSI-L", "MSI-H"] and ds.task == "binary"
    # a CRC union equals the concatenation of its two cohorts
    coad = load_dataset("TCGA_COAD", crc_msi.features, label="MSI", load_slide=False)
    read = load_dataset("TCGA_READ", crc_msi.features, label="MSI", load_slide=False)
    assert len(coad) + len(read) == ds.n_slides


def test_msi_unknown_value_and_conflicts(crc_msi):
    crc_msi.msi_csv("TCGA_COAD", [(A, "MSS"), (B, "MSI-X")])
    with pytest.raises(CohortError, match=r"msi_labels_tcga_coad.csv.*unknown label value\(s\) MSI-X"):
        load_dataset("TCGA_COAD", crc_msi.features, label="MSI", load_slide=False)
    crc_msi.msi_csv("TCGA_COAD", [(A, "MSS"), (A, "MSI-H"), (B, "MSS")])
    with pytest.raises(CohortError, match=r"1 patient\(s\) with conflicting labels.*TCGA-A6-2671"):
        load_dataset("TCGA_COAD", crc_msi.features, label="MSI", load_slide=False)


def test_msi_header_row_is_tolerated(crc_msi):
    crc_msi.msi_csv("TCGA_COAD", [("patient_id", "label"), (A, "MSS"), (B, "MSI-H")])
    df = load_dataset("TCGA_COAD", crc_msi.features, label="MSI", load_slide=False)
    assert df.set_index("patient_id")["label"].to_dict() == {A: 0.0, B: 1.0}


def test_cancer_subtype_rcc_and_nsclc(ref):
    kirc, kirp, kich = {"TCGA-A3-3306": 1, "TCGA-A3-3307": 1}, {"TCGA-2K-A9WE": 2}, {"TCGA-KL-8323": 1}
    for cohort, pats in (("TCGA_KIRC", kirc), ("TCGA_KIRP", kirp), ("TCGA_KICH", kich)):
        ref.tcga_slides(cohort, pats)
    # KIRC patients come from its survival file (TCGA-A3-3307 is not there); the
    # others have none and fall back to their slides
    ref.survival_csv("TCGA_KIRC", [("TCGA-A3-3306", 1, 10)])
    ds = SlideClassificationDataset(ref.features, "TCGA_RCC", label="CANCER_SUBTYPE")
    assert dict(zip([s[:12] for s in ds.slide_id], ds.labels)) == {
        "TCGA-A3-3306": 0.0, "TCGA-2K-A9WE": 1.0, "TCGA-KL-8323": 2.0,
    }
    assert ds.n_slides == 4 and ds.n_labels == 3 and ds.task == "multiclass"
    assert ds.classes == ["KIRC", "KIRP", "KICH"]
    ref.tcga_slides("TCGA_LUAD", {"TCGA-05-4244": 1})
    ref.tcga_slides("TCGA_LUSC", {"TCGA-18-3406": 1, "TCGA-18-3407": 1})
    ns = SlideClassificationDataset(ref.features, "TCGA_NSCLC", label="CANCER_SUBTYPE")
    assert ns.labels.tolist() == [0.0, 1.0, 1.0] and ns.n_labels == 1


def test_brca_histological_subtype_filter(ref):
    pats = ["TCGA-A1-A0SB", "TCGA-A1-A0SD", "TCGA-A2-A04P", "TCGA-A2-A04Q", "TCGA-A7-A0CE"]
    ref.tcga_slides("TCGA_BRCA", {p: 1 for p in pats})
    hist = [
        "Breast Invasive Lobular Carcinoma",
        "Breast Invasive Ductal Carcinoma",
        "Breast Invasive Mixed Mucinous Carcinoma",  # filtered out
        None,  # unknown: dropped
        "Breast Invasive Ductal Carcinoma",
    ]
    ref.subtypes_tsv("TCGA_BRCA", [(p, "BRCA_LumA", h) for p, h in zip(pats, hist)], readme_spelling=True)
    ds = SlideClassificationDataset(ref.features, "TCGA_BRCA", label="HISTOLOGICAL_SUBTYPE")
    assert [s[:12] for s in ds.slide_id] == ["TCGA-A1-A0SB", "TCGA-A1-A0SD", "TCGA-A7-A0CE"]
    assert ds.labels.tolist() == [1.0, 0.0, 0.0]  # Ductal 0, Lobular 1
    assert ds.n_labels == 1 and ds.classes == ["Breast Invasive Ductal Carcinoma", "Breast Invasive Lobular Carcinoma"]


def test_brca_molecular_subtype_label_encoder_order(ref):
    subtypes = ["BRCA_LumB", "BRCA_Basal", "BRCA_Normal", "BRCA_LumA", "BRCA_Her2", "BRCA_LumA", None]
    pats = [f"TCGA-E2-A1{i:02d}" for i in range(len(subtypes))]
    ref.tcga_slides("TCGA_BRCA", {p: 1 for p in pats})
    ref.subtypes_tsv("TCGA_BRCA", [(p, s, "Breast Invasive Ductal Carcinoma") for p, s in zip(pats, subtypes)])
    ds = SlideClassificationDataset(ref.features, "TCGA_BRCA", label="MOLECULAR_SUBTYPE")
    enc = LabelEncoder().fit([s for s in subtypes if s])
    assert ds.labels.tolist() == enc.transform([s for s in subtypes if s]).astype(float).tolist()
    assert ds.n_labels == 5 and ds.task == "multiclass" and ds.classes == list(enc.classes_)
    assert ds.stratified.tolist() == ds.labels.astype(int).tolist()


def test_hrd_binary_and_non_binary_error(ref):
    ref.tcga_slides("TCGA_OV", {"TCGA-04-1331": 1, "TCGA-04-1332": 1, "TCGA-04-1335": 1})
    ref.hrd_csv("TCGA_OV", [("TCGA-04-1331", 1), ("TCGA-04-1332", 0), ("TCGA-04-1335", 1)])
    ds = SlideClassificationDataset(ref.features, "TCGA_OV", label="HRD")
    assert ds.labels.tolist() == [1.0, 0.0, 1.0] and ds.n_labels == 1
    ref.hrd_csv("TCGA_OV", [("TCGA-04-1331", 0.73), ("TCGA-04-1332", 0)])
    with pytest.raises(CohortError, match=r"hrd_labels_tcga_ov.csv: column 'HRD' must be binary"):
        load_dataset("TCGA_OV", ref.features, label="HRD", load_slide=False)


def test_load_slide_keeps_slides_with_a_file(ref):
    ref.tcga_slides("TCGA_STAD", {"TCGA-BR-4187": 1, "TCGA-BR-4188": 1}, with_slide_file=True)
    ref.tcga_slides("TCGA_STAD", {"TCGA-CD-5798": 1})  # features only, no slide file
    df = load_dataset("TCGA_STAD", ref.features, load_slide=True)
    assert len(df) == 2 and df["slide_path"].str.endswith(".svs").all()
    assert (df["label"] == "NA").all()
    df = load_dataset("TCGA_STAD", ref.features, load_slide=False)
    assert len(df) == 3 and "slide_path" not in df.columns
    ds = SlideClassificationDataset(ref.features, "TCGA_STAD")
    assert ds.stratified is None and ds.n_slides == 3 and np.isnan(ds.labels).all()


def test_no_features_at_all_is_an_error(ref):
    ref.tcga_slides("TCGA_STAD", {"TCGA-BR-4187": 1}, no_features=("TCGA-BR-4187",), with_coords=("TCGA-BR-4187",))
    with pytest.warns(MissingFeaturesWarning), pytest.raises(CohortError, match="no slide has features"):
        SlideClassificationDataset(ref.features, "TCGA_STAD")
