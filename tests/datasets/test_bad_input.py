"""Bad cohort input is an error naming the file and the cause, before any training:
label spellings, single-class cohorts, non-finite features, empty files."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import torch

from rl_benchmarks.datasets import (
    CohortError,
    SlideClassificationDataset,
    SlideFeaturesDataset,
    ZeroSurvivalTimeWarning,
    load_csv_cohort,
    load_dataset,
    load_image_folder,
)
from rl_benchmarks.datasets.validation import check_features_file, read_table

A, B, C = "TCGA-A6-2671", "TCGA-A6-2672", "TCGA-AA-3511"


@pytest.fixture
def own(tmp_path, ref):
    """Features of 4 slides ``s1..s4`` under ``tmp/feats/<slide>.svs/features.npy``."""
    root = tmp_path / "feats"
    for i in range(4):
        ref.write_features(root / f"s{i + 1}.svs", 6 + i, seed=i)
    return tmp_path, root


def write(tmp_path, rows, name="cohort.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ---- 1. labels that differ only by case or surrounding whitespace ------------------------
@pytest.mark.parametrize(
    "labels,clash",
    [(["Neg", "neg", "pos", "pos"], r"'Neg' / 'neg'"),
     (["neg", "neg ", "pos", "pos"], r"'neg' / 'neg '"),
     ([" POS", "pos", "neg", "neg"], r"' POS' / 'pos'")],
)
def test_csv_labels_differing_by_case_or_whitespace(own, labels, clash):
    tmp, root = own
    csv = write(tmp, {"slide_id": ["s1", "s2", "s3", "s4"], "label": labels})
    with pytest.raises(CohortError, match=rf"cohort.csv: column 'label' .*differ only by case "
                                          rf"or surrounding whitespace: {clash}"):
        load_csv_cohort(csv, root)
    with pytest.raises(CohortError, match="differ only by case"):
        SlideClassificationDataset(root, str(csv))


def test_csv_label_spellings_other_column_and_numbers(own):
    tmp, root = own
    rows = {"slide_id": ["s1", "s2", "s3", "s4"], "grade": ["High", "high", "low", "low"],
            "label": [" 1", "1", "0", "0"]}
    csv = write(tmp, rows)
    with pytest.raises(CohortError, match=r"column 'grade' .*'High' / 'high'"):
        load_csv_cohort(csv, root, label="grade")
    # " 1" and "1" are the same number: one class, no error
    table = load_csv_cohort(csv, root)
    assert table["label"].tolist() == [1.0, 1.0, 0.0, 0.0] and table.attrs["classes"] == ["0", "1"]


def test_reference_label_files_check_spellings_too(ref, tmp_path):
    ref.tcga_slides("TCGA_COAD", {A: 1, B: 1, C: 1})
    ref.msi_csv("TCGA_COAD", [(A, "MSS"), (B, "mss"), (C, "MSI-H")])
    with pytest.raises(CohortError, match=r"msi_labels_tcga_coad.csv: column 'label \(2nd column\)' "
                                          r".*'MSS' / 'mss'"):
        load_dataset("TCGA_COAD", ref.features, label="MSI", load_slide=False)
    pats = ["TCGA-E2-A101", "TCGA-E2-A102", "TCGA-E2-A103"]
    ref.tcga_slides("TCGA_BRCA", {p: 1 for p in pats})
    ref.subtypes_tsv("TCGA_BRCA", [(pats[0], "BRCA_LumA", "x"), (pats[1], "BRCA_luma", "x"),
                                   (pats[2], "BRCA_Basal", "x")])
    with pytest.raises(CohortError, match=r"clinical_data.tsv.gz: column 'Subtype' .*"
                                          r"'BRCA_LumA' / 'BRCA_luma'"):
        load_dataset("TCGA_BRCA", ref.features, label="MOLECULAR_SUBTYPE", load_slide=False)
    ref.camelyon16({"Normal_001": "Normal", "Tumor_001": "Tumor", "Tumor_002": "tumor"}, {})
    with pytest.raises(CohortError, match=r"train_clinical_data.csv: column 'target' .*"
                                          r"'Tumor' / 'tumor'"):
        load_dataset("CAMELYON16_TRAIN", ref.features, load_slide=False)
    folder = tmp_path / "tiles"
    for cls in ("Tumor", "tumor", "Normal"):
        (folder / cls).mkdir(parents=True)
        (folder / cls / "a.png").write_bytes(b"x")
    with pytest.raises(CohortError, match=r"tiles: column 'class folder' .*'Tumor' / 'tumor'"):
        load_image_folder(folder)


# ---- 2. single-class cohorts, survival cohorts without events ----------------------------
def test_single_class_csv_cohort_is_an_error_naming_cohort_and_class(own):
    tmp, root = own
    csv = write(tmp, {"slide_id": ["s1", "s2", "s3"], "label": ["neg", "neg", "neg"]})
    with pytest.raises(CohortError, match=r"cohort.csv: every one of the 3 slide\(s\) has class "
                                          r"'neg' \(code 0\); a classifier needs at least two"):
        SlideClassificationDataset(root, str(csv))
    # the table itself still loads (e.g. to inspect it); only training is refused
    assert len(load_csv_cohort(csv, root)) == 3
    # slides left out for lack of features count: the remaining ones must hold two classes
    csv = write(tmp, {"slide_id": ["s1", "s2", "ghost"], "label": ["neg", "neg", "pos"]})
    with pytest.warns(UserWarning), pytest.raises(CohortError, match="class 'neg'"):
        SlideClassificationDataset(root, str(csv))


def test_survival_cohort_without_events_is_an_error(own):
    tmp, root = own
    csv = write(tmp, {"slide_id": ["s1", "s2", "s3"], "time": [5, 8, 2], "event": [0, 0, 0]})
    with pytest.raises(CohortError, match=r"cohort.csv: no event among the 3 slide\(s\) "
                                          r"\(all censored\)"):
        SlideClassificationDataset(root, str(csv))


def test_single_class_tcga_cohort(ref):
    ref.tcga_slides("TCGA_COAD", {A: 1, B: 1})
    ref.msi_csv("TCGA_COAD", [(A, "MSS"), (B, "MSI-L")])
    with pytest.raises(CohortError, match=r"TCGA_COAD/MSI: every one of the 2 slide\(s\) has class "
                                          r"'MSS/MSI-L'"):
        SlideClassificationDataset(ref.features, "TCGA_COAD", label="MSI")
    ref.tcga_slides("TCGA_KICH", {"TCGA-KL-8323": 1, "TCGA-KL-8324": 1})
    with pytest.raises(CohortError, match=r"TCGA_KICH/CANCER_SUBTYPE: .* class 'KICH' \(code 2\)"):
        SlideClassificationDataset(ref.features, "TCGA_KICH", label="CANCER_SUBTYPE")
    ref.survival_csv("TCGA_COAD", [(A, 0, 10), (B, 0, 20)])
    with pytest.raises(CohortError, match=r"TCGA_COAD/OS: no event among the 2 slide\(s\)"):
        SlideClassificationDataset(ref.features, "TCGA_COAD", label="OS")
    # unlabelled cohorts are not concerned
    assert SlideClassificationDataset(ref.features, "TCGA_COAD").n_slides == 2


# ---- 3. non-finite features ---------------------------------------------------------------
@pytest.fixture
def nan_cohort(own):
    tmp, root = own
    path = root / "s2.svs" / "features.npy"
    arr = np.load(path)
    arr[4, 5] = np.nan
    arr[6, 3] = np.inf
    np.save(path, arr)
    csv = write(tmp, {"slide_id": ["s1", "s2", "s3", "s4"], "label": [0, 1, 0, 1]})
    return root, str(csv), path


def test_nan_in_a_tile_is_an_error_naming_the_slide_and_file(nan_cohort):
    root, csv, path = nan_cohort
    ds = SlideClassificationDataset(root, csv, n_tiles=None, shuffle=False)
    msg = (rf"slide s2 \({path}\): 2 non-finite feature value\(s\) \(NaN or inf\) in 2 tile "
           r"row\(s\) \(row\(s\) 4, 6\)")
    with pytest.raises(CohortError, match=msg):
        ds[1]
    ds[0], ds[2]  # the other slides read fine
    # the fast path (as_tensor, and the trainers' preload that calls it) checks too
    with pytest.raises(CohortError, match=msg):
        ds.as_tensor()
    from rl_benchmarks.trainers.ensemble_trainer import preload

    with pytest.raises(CohortError, match="slide s2"):
        preload(ds)
    # rows actually read are checked, and the message gives their file rows
    ds = SlideClassificationDataset(root, csv, n_tiles=4, shuffle=False)
    assert torch.isfinite(ds[1][0]).all()  # rows 0..3 are finite
    ds = SlideClassificationDataset(root, csv, n_tiles=5, shuffle=True, seed=0)
    idx = ds.sample_indices(1, 5, key="as_tensor")
    if 4 in idx or 6 in idx:
        with pytest.raises(CohortError, match=r"slide s2 .*row\(s\) [46]"):
            ds.as_tensor()
    else:
        assert torch.isfinite(ds.as_tensor().features).all()


def test_non_finite_arrays_and_float16_overflow():
    good = np.ones((3, 6), dtype=np.float32)
    bad = good.copy()
    bad[1, 4] = np.nan
    ds = SlideFeaturesDataset([good, bad], [0.0, 1.0], n_tiles=None, shuffle=False,
                              slide_ids=["a", "b"])
    with pytest.raises(CohortError, match=r"slide b \(array #1\): 1 non-finite .*row\(s\) 1\)"):
        ds[1]
    big = good.copy()
    big[0, 5] = 1e6  # finite in float32, inf in float16
    ds = SlideFeaturesDataset([good, big], [0.0, 1.0], n_tiles=None, shuffle=False,
                              slide_ids=["a", "b"])
    assert torch.isfinite(ds.as_tensor().features).all()
    with pytest.raises(CohortError, match=r"slide b .*overflow torch.float16"):
        ds.as_tensor(dtype=torch.float16)


# ---- 4. empty and 0-byte files ------------------------------------------------------------
def test_empty_cohort_csv_names_the_file(own):
    tmp, root = own
    empty = tmp / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(CohortError, match=r"empty.csv: cohort CSV is empty \(0 bytes\)"):
        load_csv_cohort(empty, root)
    with pytest.raises(CohortError, match=r"empty.csv: cohort CSV is empty"):
        SlideClassificationDataset(root, str(empty))
    blank = tmp / "blank.csv"
    blank.write_text("\n\n")
    with pytest.raises(CohortError, match=r"blank.csv: cohort CSV is empty \(no columns"):
        load_csv_cohort(blank, root)
    header = tmp / "header.csv"
    header.write_text("slide_id,label\n")
    with pytest.raises(CohortError, match=r"header.csv: cohort CSV has no rows \(columns: "
                                          r"slide_id, label\)"):
        load_csv_cohort(header, root)
    broken = tmp / "broken.csv"
    broken.write_text('slide_id,label\ns1,"a\n')
    with pytest.raises(CohortError, match=r"broken.csv: cannot parse cohort CSV"):
        load_csv_cohort(broken, root)


def test_empty_reference_label_files_name_the_file(ref):
    ref.tcga_slides("TCGA_COAD", {A: 1, B: 1})
    for label, path in (
        ("OS", ref.survival_csv("TCGA_COAD", [(A, 1, 1)])),
        ("MSI", ref.msi_csv("TCGA_COAD", [(A, "MSS")])),
    ):
        path.write_bytes(b"")
        with pytest.raises(CohortError, match=rf"{path.name}: TCGA_COAD .* is empty \(0 bytes\)"):
            load_dataset("TCGA_COAD", ref.features, label=label, load_slide=False)
    ref.tcga_slides("TCGA_OV", {"TCGA-04-1331": 1})
    hrd = ref.hrd_csv("TCGA_OV", [("TCGA-04-1331", 1)])
    hrd.write_bytes(b"")
    with pytest.raises(CohortError, match=r"hrd_labels_tcga_ov.csv: TCGA_OV HRD CSV is empty"):
        load_dataset("TCGA_OV", ref.features, label="HRD", load_slide=False)
    tsv = ref.subtypes_tsv("TCGA_COAD", [(A, "x", "y")])
    tsv = tsv.rename(tsv.with_name(tsv.name.replace("tcga_coad", "tcga_brca")))
    ref.tcga_slides("TCGA_BRCA", {"TCGA-E2-A101": 1})
    with gzip.open(tsv, "wt") as f:
        f.write("")  # a valid gzip holding nothing
    with pytest.raises(CohortError, match=r"clinical_data.tsv.gz: TCGA_BRCA cBioPortal .* is "
                                          r"empty \(no columns"):
        load_dataset("TCGA_BRCA", ref.features, label="MOLECULAR_SUBTYPE", load_slide=False)
    ref.camelyon16({"Normal_001": "Normal", "Tumor_001": "Tumor"}, {})
    clinical = ref.raw / "slides_classification" / "CAMELYON16_FULL" / "clinical"
    (clinical / "train_clinical_data.csv").write_bytes(b"")
    with pytest.raises(CohortError, match=r"train_clinical_data.csv: Camelyon16 clinical CSV is "
                                          r"empty \(0 bytes\)"):
        load_dataset("CAMELYON16_TRAIN", ref.features, load_slide=False)
    meta = ref.camelyon17_wilds([(4, 0, 1, 2, 1, 0)])
    meta.write_bytes(b"")
    with pytest.raises(CohortError, match=r"metadata.csv: Camelyon17-WILDS metadata.csv is empty"):
        load_dataset("CAMELYON17-WILDS_TRAIN")


def test_empty_or_truncated_features_file_names_the_file(own):
    tmp, root = own
    path = root / "s3.svs" / "features.npy"
    path.write_bytes(b"")
    csv = write(tmp, {"slide_id": ["s1", "s2", "s3", "s4"], "label": [0, 1, 0, 1]})
    with pytest.raises(CohortError, match=rf"{path}: features file is empty \(0 bytes\)"):
        SlideClassificationDataset(root, str(csv))
    full = np.zeros((4, 11), dtype=np.float32)
    np.save(path, full)
    path.write_bytes(path.read_bytes()[:40])  # header cut short
    with pytest.raises(CohortError, match=rf"{path}: cannot read features"):
        check_features_file(path)


def test_read_table_errors_and_success(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"label file not found: .*nope.csv"):
        read_table(tmp_path / "nope.csv", "label file")
    ok = tmp_path / "ok.tsv"
    ok.write_text("a\tb\n1\t2\n")
    assert read_table(ok, "t", sep="\t").to_dict("list") == {"a": [1], "b": [2]}
    head = tmp_path / "head.csv"
    head.write_text("a,b\n")
    assert read_table(head, "t", allow_empty=True).empty


# ---- 5. zero survival times in the loaders ------------------------------------------------
def test_tcga_zero_time_is_censored_with_a_warning_listing_patients(ref):
    ref.tcga_slides("TCGA_COAD", {A: 1, B: 2, C: 1})  # B's two slides: B listed once
    # B died at time 0 (as recorded in TCGA-CDR); F has no slide and is not listed
    ref.survival_csv("TCGA_COAD", [(A, 1, 100), (B, 1, 0), (C, 0, 0.0), ("TCGA-CK-4948", 1, 0)])
    with pytest.warns(ZeroSurvivalTimeWarning, match=r"survival_labels_tcga_coad.csv: column "
                      r"'OS.time' has 2 "
                                         r"zero survival time\(s\) \(TCGA-A6-2672, TCGA-AA-3511\); "
                                         r"they are censored at time 0") as record:
        df = load_dataset("TCGA_COAD", ref.features, label="OS", load_slide=False)
    assert "TCGA-CK-4948" not in str(record[0].message)
    by_patient = df.set_index("patient_id")
    assert by_patient.loc[[A, B, C], "label"].tolist() == [100.0, 0.0, 0.0, 0.0]
    assert by_patient.loc[[A, B, C], "event"].tolist() == [1, 0, 0, 0]
    with pytest.warns(ZeroSurvivalTimeWarning, match="zero survival time"):
        ds = SlideClassificationDataset(ref.features, "TCGA_COAD", label="OS")
    assert ds.event.tolist() == [1, 0, 0, 0] and ds.time.tolist() == [100.0, 0.0, 0.0, 0.0]
    assert ds.stratified.tolist() == [1, 0, 0, 0]


def test_csv_zero_time_is_censored_with_a_warning(own):
    tmp, root = own
    csv = write(tmp, {"slide_id": ["s1", "s2", "s3"], "time": [0, 5, 7], "event": [1, 1, 0]})
    with pytest.warns(ZeroSurvivalTimeWarning, match=r"column 'time' has 1 zero survival "
                                                     r"time\(s\) \(s1\)"):
        ds = SlideClassificationDataset(root, str(csv))
    assert ds.labels.tolist() == [0.0, 5.0, -7.0] and ds.event.tolist() == [0, 1, 0]
    assert ds.table["event"].tolist() == [0, 1, 0]


class _Call:
    """Pickles as a call of ``os.getcwd`` (harmless, but a global no label dict needs)."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_nct_crc_label_dict_is_read_as_plain_data_only(ref):
    import pickle

    root = ref.nct_crc({"TRAIN": {"ADI": 1, "TUM": 1}})
    assert load_dataset("NCT-CRC_TRAIN")["label"].tolist() == [0, 8]  # a plain dict is fine
    path = root / "clinical" / "dict_labels.pkl"
    path.write_bytes(pickle.dumps({"ADI": 0, "TUM": _Call()}))
    with pytest.raises(CohortError, match=r"dict_labels.pkl: refused to unpickle the global "
                                          r"posix.getcwd|dict_labels.pkl: refused .*getcwd"):
        load_dataset("NCT-CRC_TRAIN")
