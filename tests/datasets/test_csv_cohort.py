"""One's own cohort as a CSV: classification, survival, feature lookup, validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import LabelEncoder

from rl_benchmarks.datasets import (
    CohortError,
    MissingFeaturesWarning,
    SlideClassificationDataset,
    load_csv_cohort,
    load_dataset,
)


@pytest.fixture
def own(tmp_path, ref):
    """Features of 6 slides written as the extraction does: <root>/<slide file>/features.npy."""
    root = tmp_path / "feats"
    names = ["s1.svs", "s2.svs", "s3.ndpi", "s4.tif", "s5.svs", "s6.mrxs"]
    for i, n in enumerate(names):
        ref.write_features(root / n, 6 + i, seed=i, coords=(i == 0))
    return tmp_path, root


def write(tmp_path, rows, name="cohort.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_string_multiclass_labels_keep_class_names(own):
    tmp, root = own
    labels = ["LumA", "Basal", "Her2", "LumA", "Basal", "LumB"]
    csv = write(tmp, {"slide_id": [f"s{i}" for i in range(1, 7)],
                      "patient_id": ["p1", "p1", "p2", "p3", "p4", "p5"], "label": labels})
    csv_rows = pd.read_csv(csv)
    csv_rows.loc[1, "label"] = "LumA"  # p1's two slides share a label
    csv_rows.to_csv(csv, index=False)
    labels[1] = "LumA"
    ds = SlideClassificationDataset(root, str(csv), n_tiles=4)
    enc = LabelEncoder().fit(labels)
    assert ds.classes == list(enc.classes_) == ["Basal", "Her2", "LumA", "LumB"]
    assert ds.labels.tolist() == enc.transform(labels).astype(float).tolist()
    assert (ds.n_slides, ds.n_patients, ds.n_labels, ds.task) == (6, 5, 4, "multiclass")
    assert ds.table["class_name"].tolist() == labels
    assert ds.center_id.tolist() == [None] * 6
    # the coords written beside s1's features are found
    assert ds.table["coords_path"].notna().tolist() == [True] + [False] * 5


def test_numeric_binary_labels_via_features_path_and_slide_path(own):
    tmp, root = own
    rows = {"features_path": [str(root / "s1.svs" / "features.npy"), "feats/s2.svs/features.npy"],
            "label": [1, 0], "center_id": ["c1", "c2"]}
    ds = SlideClassificationDataset(None, str(write(tmp, rows)))
    assert ds.slide_id.tolist() == ["s1", "s2"] and ds.labels.tolist() == [1.0, 0.0]
    assert ds.classes == ["0", "1"] and ds.n_labels == 1 and ds.task == "binary"
    assert ds.patient_id.tolist() == ["s1", "s2"] and ds.center_id.tolist() == ["c1", "c2"]
    # slide_path: features found under the root by slide file name; load_dataset keeps paths
    rows = {"slide_path": ["/slides/s3.ndpi", "/slides/s4.tif"], "label": [2, 5]}
    df = load_dataset(str(write(tmp, rows, "b.csv")), features_root_dir=root, load_slide=True)
    assert df["slide_id"].tolist() == ["s3", "s4"] and df["label"].tolist() == [0.0, 1.0]
    assert df["features_path"].str.endswith("features.npy").all()
    assert df.attrs["classes"] == ["2", "5"]


def test_survival_signed_encoding(own):
    tmp, root = own
    rows = {"slide_id": ["s1", "s2", "s3", "s4"], "patient_id": ["a", "b", "c", "c"],
            "time": [10.5, 20, 30, 30], "event": [1, 0, "true", "True"]}
    ds = SlideClassificationDataset(root, str(write(tmp, rows)))
    assert ds.task == "survival" and ds.classes is None and ds.n_labels == 1
    assert ds.labels.tolist() == [10.5, -20.0, 30.0, 30.0]
    assert ds.stratified.tolist() == [1, 0, 1, 1] and ds.event.tolist() == [1, 0, 1, 1]
    # label="OS" picks time/event even with a label column present
    rows["label"] = ["x", "y", "x", "x"]
    ds = SlideClassificationDataset(root, str(write(tmp, rows)), label="OS")
    assert ds.task == "survival"
    ds = SlideClassificationDataset(root, str(write(tmp, rows)))
    assert ds.task == "binary" and ds.classes == ["x", "y"]


def test_missing_features_are_listed_and_counted(own):
    tmp, root = own
    rows = {"slide_id": ["s1", "s2", "ghost1", "ghost2"], "label": ["a", "b", "a", "b"]}
    with pytest.warns(MissingFeaturesWarning, match=r"2 of 4 slide\(s\).*ghost1, ghost2"):
        ds = SlideClassificationDataset(root, str(write(tmp, rows)))
    assert ds.n_slides == 2 and ds.missing_features == ["ghost1", "ghost2"]


def test_blank_labels_are_dropped_with_a_warning(own):
    tmp, root = own
    rows = {"slide_id": ["s1", "s2", "s3"], "label": ["a", None, "b"]}
    with pytest.warns(UserWarning, match=r"1 slide\(s\) without a label.*s2"):
        ds = SlideClassificationDataset(root, str(write(tmp, rows)))
    assert ds.slide_id.tolist() == ["s1", "s3"]


@pytest.mark.parametrize(
    "rows,kwargs,match",
    [
        ({"patient_id": ["a"], "label": [1]}, {},
         r"cohort.csv: needs a 'slide_id', 'slide_path' or 'features_path' column"),
        ({"slide_id": ["s1"], "patient_id": ["a"]}, {}, r"needs a 'label' column or 'time' and 'event' columns"),
        ({"slide_id": ["s1"], "time": [3]}, {"label": "OS"}, r"missing column\(s\) 'event'"),
        ({"slide_id": ["s1"], "label": [1]}, {"label": "MSI"}, r"missing column\(s\) 'MSI'"),
        ({"slide_id": ["s1", "s2"], "label": ["tumor", "tumour"]}, {"classes": ["normal", "tumor"]},
         r"column 'label' has unknown label value\(s\) tumour"),
        ({"slide_id": ["s1", "s2", "s3"], "patient_id": ["p", "p", "q"], "label": ["a", "b", "a"]}, {},
         r"1 patient\(s\) with conflicting labels \(p: \['a', 'b'\]\)"),
        ({"slide_id": ["s1", "s2"], "time": [4, -5], "event": [1, 0]}, {},
         r"column 'time' has 1 negative survival time\(s\) \(s2=-5\)"),
        ({"slide_id": ["s1", "s2"], "time": [4, "soon"], "event": [1, 0]}, {},
         r"column 'time' has non-numeric value\(s\) soon"),
        ({"slide_id": ["s1", "s2"], "time": [4, 5], "event": [1, 2]}, {},
         r"column 'event' has unknown label value\(s\) 2"),
        ({"slide_id": ["s1", "s1"], "label": [1, 1]}, {}, r"slide id\(s\) listed more than once: s1"),
        ({"slide_id": ["s1", "s2"], "patient_id": ["p", "p"], "time": [4, 5], "event": [1, 1]}, {},
         r"conflicting labels \(p: \['4/1', '5/1'\]\)"),
    ],
)
def test_validation_errors_name_file_and_cause(own, rows, kwargs, match):
    tmp, root = own
    csv = write(tmp, rows)
    with pytest.raises(CohortError, match=match):
        load_csv_cohort(csv, root, **kwargs)


def test_missing_csv_and_no_features(own):
    tmp, root = own
    with pytest.raises(FileNotFoundError, match="cohort CSV not found: .*nope.csv"):
        SlideClassificationDataset(root, str(tmp / "nope.csv"))
    csv = write(tmp, {"slide_id": ["zz"], "label": [1]})
    with pytest.warns(MissingFeaturesWarning), pytest.raises(CohortError, match="no slide has features"):
        SlideClassificationDataset(root, str(csv))
    with pytest.raises(CohortError, match="needs a 'slide_path' column to read the slides"):
        load_dataset(str(csv), root)  # load_slide=True by default


def test_ambiguous_feature_lookup(own, ref):
    tmp, root = own
    ref.write_features(root / "other_cohort" / "s1.svs", 3, seed=0)
    csv = write(tmp, {"slide_id": ["s1"], "label": [1]})
    with pytest.raises(CohortError, match="matches several features files"):
        load_csv_cohort(csv, root)


def test_inconsistent_feature_widths(own):
    tmp, root = own
    np.save(root / "s2.svs" / "features.npy", np.zeros((4, 20), dtype=np.float32))
    csv = write(tmp, {"slide_id": ["s1", "s2"], "label": [0, 1]})
    with pytest.raises(CohortError, match="features have different widths"):
        SlideClassificationDataset(root, str(csv))
    np.save(root / "s2.svs" / "features.npy", np.zeros((4,), dtype=np.float32))
    with pytest.raises(CohortError, match=r"s2.svs/features.npy: features must have shape"):
        SlideClassificationDataset(root, str(csv))
