"""TRIDENT/CLAM h5 features: the one reader, the DeepZoom mapping, cohorts over h5 folders and
nested CV numbers equal to the same features in ``features.npy``."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
from testlib.cohorts import SMALL, write_cohort

from rl_benchmarks.cli.main import main as rlbench
from rl_benchmarks.datasets.h5_features import (
    H5FeaturesError,
    deepzoom_mapping,
    h5_boxes_level0,
    read_h5,
)
from rl_benchmarks.datasets.slides_classification.core import SlideClassificationDataset
from rl_benchmarks.datasets.validation import CohortError
from rl_benchmarks.slides.geometry import deepzoom_level_count, tile_boxes_level0
from rl_benchmarks.utils.features import feature_boxes_level0, read_feature_matrix
from rl_benchmarks.val_schemes.experiment import ExperimentFolder

STEP = 448  # level-0 px of a 224-px tile at 0.5 mpp on a 0.25-mpp slide
DIMS = (100_000, 80_000)  # a 40x slide's size: DeepZoom level of 0.5 mpp = level_count - 2


def _write_trident(path, feats, cols, rows, trident_attrs=True):
    """A TRIDENT-layout file written with h5py only (as TRIDENT writes it)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        c = f.create_dataset("coords", data=np.stack([cols * STEP, rows * STEP], 1).astype(np.int64))
        if trident_attrs:
            c.attrs.update(patch_size=224, patch_size_level0=STEP, level0_magnification=40,
                           target_magnification=20, overlap=0, name=path.stem)


def _trident_copy(tmp_path):
    """The generated cohort twice: its features.npy (reference) and a folder of TRIDENT
    ``<slide>.h5`` with the same features and their DeepZoom tiles as level-0 coords."""
    csv = write_cohort(tmp_path)
    frame = pd.read_csv(csv)
    h5_dir = tmp_path / "trident" / "20x_224px_0px_overlap" / "features_phikon"
    h5_dir.mkdir(parents=True)
    for row in frame.itertuples():
        m = np.load(tmp_path / row.features_path)
        _write_trident(h5_dir / f"{row.slide_id}.h5", m[:, 3:], m[:, 1].astype(int),
                       m[:, 2].astype(int))
    h5_csv = tmp_path / "cohort_h5.csv"
    frame.drop(columns="features_path").to_csv(h5_csv, index=False)
    return csv, h5_csv, tmp_path / "trident"


def test_reader_gives_the_npy_matrix_features_and_deepzoom_tiles(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(7, 5)).astype(np.float32)
    cols, rows = rng.integers(0, 50, 7), rng.integers(0, 40, 7)
    path = tmp_path / "s.h5"
    _write_trident(path, feats, cols, rows)
    m = read_feature_matrix(path)
    assert m.shape == (7, 8) and m.dtype == np.float32
    np.testing.assert_array_equal(m[:, 3:], feats)
    np.testing.assert_array_equal(m[:, 1:3], np.stack([cols, rows], 1))
    assert (m[:, 0] == -1).all()  # level unknown without the slide's size
    h5 = read_h5(path)
    assert h5.patch_size_level0 == STEP and h5.patch_size_level0_source == "attrs"
    mapping = deepzoom_mapping(h5, DIMS)
    assert mapping.exact, mapping.why
    level = deepzoom_level_count(*DIMS) - 2
    dz = mapping.coords.astype(np.int64)
    assert (dz[:, 0] == level).all()
    # the DeepZoom boxes of the mapped tiles are the h5 patches' level-0 boxes
    np.testing.assert_array_equal(tile_boxes_level0(dz, 224, *DIMS), h5_boxes_level0(h5, DIMS))


def test_heatmap_boxes_of_h5_equal_those_of_the_same_tiles_in_npy(tmp_path):
    rng = np.random.default_rng(1)
    cols, rows = rng.integers(0, 200, 9), rng.integers(0, 170, 9)
    level = deepzoom_level_count(*DIMS) - 2
    npy = tmp_path / "features.npy"
    np.save(npy, np.column_stack([np.full(9, level), cols, rows, np.ones((9, 4))]).astype(np.float32))
    _write_trident(tmp_path / "s.h5", np.ones((9, 4), np.float32), cols, rows)
    a, exact_a = feature_boxes_level0(npy, 224, DIMS)
    b, exact_b = feature_boxes_level0(tmp_path / "s.h5", 224, DIMS)
    np.testing.assert_array_equal(a, b)
    assert exact_a and exact_b
    odd = tmp_path / "odd.h5"  # resized patches: approximate in DeepZoom, exact as boxes
    with h5py.File(odd, "w") as f:
        f.create_dataset("features", data=np.zeros((1, 3), np.float32))
        f.create_dataset("coords", data=np.array([[1012, 506]])).attrs.update(
            patch_size=256, patch_size_level0=506)
    boxes, exact = feature_boxes_level0(odd, 224, DIMS)
    assert boxes.tolist() == [[1012, 506, 1518, 1012]] and not exact


def test_clam_file_without_attrs_infers_the_step_and_says_approximate(tmp_path):
    path = tmp_path / "clam.h5"
    _write_trident(path, np.ones((4, 3), np.float32), np.array([0, 1, 3, 4]),
                   np.array([0, 0, 2, 5]), trident_attrs=False)
    h5 = read_h5(path)
    assert h5.patch_size_level0 == STEP and h5.patch_size_level0_source == "coords spacing"
    mapping = deepzoom_mapping(h5, DIMS)
    assert not mapping.exact and "patch_size not recorded" in mapping.why
    assert read_h5(path, patch_size_level0=896).patch_size_level0 == 896  # user override


def test_off_grid_or_resized_patches_are_approximate(tmp_path):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.zeros((2, 3), np.float32))
        c = f.create_dataset("coords", data=np.array([[100, 0], [606, 506]]))
        c.attrs.update(patch_size=256, patch_size_level0=506)  # 0.2527 µm/px -> 0.5 µm/px
    mapping = deepzoom_mapping(read_h5(path), DIMS)
    assert not mapping.exact
    assert "not multiples" in mapping.why and "not a power of two" in mapping.why


@pytest.mark.parametrize("make,needle", [
    (lambda f: f.create_dataset("features", data=np.zeros((3, 4))), "no 'coords' dataset"),
    (lambda f: (f.create_dataset("features", data=np.zeros((3, 4))),
                f.create_dataset("coords", data=np.zeros((2, 2)))), "3 rows but 'coords' has 2"),
    (lambda f: (f.create_dataset("features", data=np.zeros((3, 4))),
                f.create_dataset("coords", data=np.zeros((3, 3)))), "'coords' must be (N, 2)"),
])
def test_bad_h5_is_one_line_naming_the_file(tmp_path, make, needle):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        make(f)
    with pytest.raises(H5FeaturesError) as info:
        read_feature_matrix(path)
    msg = str(info.value)
    assert str(path) in msg and needle in msg and "\n" not in msg
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(H5FeaturesError, match="junk.h5: not a readable h5 file"):
        read_h5(tmp_path / "junk.h5")


def test_csv_cohort_finds_trident_files_and_a_bad_one_names_its_slide(tmp_path):
    csv, h5_csv, root = _trident_copy(tmp_path)
    ref = SlideClassificationDataset(None, str(csv), n_tiles=None, shuffle=False)
    got = SlideClassificationDataset(str(root), str(h5_csv), n_tiles=None, shuffle=False)
    assert list(got.slide_id) == list(ref.slide_id)
    assert all(str(f).endswith(".h5") for f in got.features)
    for i in range(len(ref)):
        a, b = ref.read(i, None), got.read(i, None)
        np.testing.assert_array_equal(a[:, 3:], b[:, 3:])
        np.testing.assert_array_equal(a[:, 1:], b[:, 1:])  # cols/rows from the level-0 coords
    # a file without coords: one line naming it, at dataset build time
    bad = next(root.rglob("slide_00_0.h5"))
    with h5py.File(bad, "w") as f:
        f.create_dataset("features", data=np.zeros((3, 8), np.float32))
    with pytest.raises(CohortError, match=r"slide_00_0\.h5: no 'coords' dataset"):
        SlideClassificationDataset(str(root), str(h5_csv), n_tiles=None)


def test_extract_slides_layout_features_h5_is_found_beside_npy(tmp_path):
    """``<slide>/features.h5`` (output_format=h5) is found; with both, features.npy wins."""
    from rl_benchmarks.datasets.slides_classification.csv_cohort import _index_features

    (tmp_path / "a.svs").mkdir()
    (tmp_path / "b.svs").mkdir()
    for name in ("a.svs/features.h5", "b.svs/features.h5", "b.svs/features.npy"):
        (tmp_path / name).write_bytes(b"x")
    index = _index_features(tmp_path)
    assert index["a"] == [str(tmp_path / "a.svs" / "features.h5")]
    assert index["b.svs"] == [str(tmp_path / "b.svs" / "features.npy")]


def test_reference_cohort_scan_takes_npy_then_folder_h5_then_trident_h5(tmp_path):
    from rl_benchmarks.datasets._tables import scan_features, strip_slide_ext

    for name in ("A.svs/features.npy", "A.svs/features.h5", "B.svs/features.h5", "A.h5", "C.h5"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    frame = scan_features(tmp_path, lambda p: strip_slide_ext(p.parent.name),
                          lambda p: strip_slide_ext(p.stem))
    got = dict(zip(frame["slide_id"], frame["features_path"]))
    assert got == {"A": str(tmp_path / "A.svs" / "features.npy"),
                   "B": str(tmp_path / "B.svs" / "features.h5"), "C": str(tmp_path / "C.h5")}


@pytest.mark.slow
def test_nested_cv_on_trident_h5_equals_features_npy(tmp_path):
    csv, h5_csv, root = _trident_copy(tmp_path)
    metrics = {}
    for name, task, extra in (("npy", csv, []), ("h5", h5_csv, [f"features_root_dir={root}"])):
        logs = tmp_path / f"logs_{name}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert rlbench(["cv", f"task={task}", "model=abmil", f"logs_root_dir={logs}",
                            *extra, *SMALL]) == 0
        (run,) = list((logs / "cross_validation").iterdir())
        metrics[name] = ExperimentFolder(run).read_metrics("test")
        metrics[name + "_selected"] = json.loads((run / "selected_params.json").read_text())
    assert metrics["h5"] == metrics["npy"]
    assert metrics["h5_selected"] == metrics["npy_selected"]
    assert set(metrics["h5"]) >= {"auc"}
