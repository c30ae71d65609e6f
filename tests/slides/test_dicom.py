"""DICOM-WSI: a series is one slide (folder, folder of several series, CSV of files), its
tiles and features equal the SVS it was converted from, a series without a VOLUME
instance fails alone, and the non-conformant sample is refused with one line."""

from __future__ import annotations

import csv
import shutil
import warnings

import numpy as np
import pytest

from rl_benchmarks.slides.dicom import list_series, read_instance, resolve
from rl_benchmarks.slides.openslide_io import NotASlideError, open_slide
from rl_benchmarks.slides.reader import TileReader
from rl_benchmarks.slides.tiling import collect_slide_entries, collect_slides, tile_slide, tile_slides

CMU = "slides/dicom-wsi/CMU-1-Small-Region"
SVS = "slides/svs/CMU-1-Small-Region.svs"
NONCONFORMANT = "slides/dicom/tcga-xk-aaju-01a-01-ts1_small.dcm"


def copy_series(src, dst, container_id: str | None = None, keep=("volume", "label", "overview",
                                                                    "thumbnail"), prefix=""):
    """Copy the instances ``keep`` of series folder ``src`` into ``dst`` as a new series
    (new SeriesInstanceUID and SOPInstanceUIDs; ContainerIdentifier set when given)."""
    import pydicom
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    for name in keep:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(src / f"{name}.dcm")
            ds.SeriesInstanceUID = uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            if container_id is not None:
                ds.ContainerIdentifier = container_id
            ds.save_as(dst / f"{prefix}{name}.dcm")
    return uid


def test_the_shared_folder_is_one_slide_whatever_the_input(real_data, tmp_path):
    folder = real_data / CMU
    table = tmp_path / "slides.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_path"])
        w.writerows([[folder / "label.dcm"], [folder / "volume.dcm"], [folder / "thumbnail.dcm"]])
    folders = tmp_path / "folders.csv"
    folders.write_text(f"slide_path\n{folder}\n")
    for given in (folder, folder.parent, str(folder / "overview.dcm"), table, folders, [folder]):
        entries = collect_slide_entries(given)
        assert [(e.path, e.name) for e in entries] == [(folder, "CMU-1-Small-Region")], given
    kinds = sorted(read_instance(p).flavor for p in folder.iterdir())
    assert kinds == ["LABEL", "OVERVIEW", "THUMBNAIL", "VOLUME"]
    series, volume = resolve(folder)
    assert volume.path == folder / "volume.dcm" and len(series.instances) == 4


@pytest.mark.slow
def test_dicom_tiles_and_features_equal_the_svs(real_data, tmp_path):
    from rl_benchmarks.extraction.slides import (
        SlideExtractionSettings,
        list_slides,
        run_slide_extraction,
    )
    from rl_benchmarks.models.feature_extractors import create_extractor
    from rl_benchmarks.utils.seed import set_seed

    folder, svs = real_data / CMU, real_data / SVS
    summary = tile_slides(folder, tmp_path / "tiles", progress=False)
    assert summary.ok and summary.n_slides == 1 and summary.n_done == 1
    assert [p.name for p in (tmp_path / "tiles").iterdir() if p.is_dir()] == ["CMU-1-Small-Region"]
    coords = np.load(tmp_path / "tiles" / "CMU-1-Small-Region" / "coords.npy")
    ref = tile_slide(svs)
    np.testing.assert_array_equal(coords, ref.coords)
    assert len(coords) >= 20
    with open_slide(folder) as dcm, open_slide(svs) as s:
        assert (dcm.dimensions, dcm.mpp, dcm.backend) == (s.dimensions, s.mpp, "openslide")
    a, b = TileReader(folder, 224), TileReader(svs, 224)
    for lvl, col, row in np.concatenate([coords, [[coords[0, 0], 9, 13]]]):  # + a border tile
        np.testing.assert_array_equal(a.read(lvl, col, row), b.read(lvl, col, row))

    # extract-slides' path: listing, tiling on the fly, reading, a tiny random-init ViT
    (slide,) = list_slides(folder)
    assert (slide.slide_path, slide.slide_id) == (folder, "CMU-1-Small-Region")
    set_seed(0)
    extractor = create_extractor("iBOTViTBasePANCAN", pretrained=False, depth=1, embed_dim=32,
                                 num_heads=2)
    settings = SlideExtractionSettings(n_tiles=16, batch_size=8, num_workers=0, progress=False)
    out = tmp_path / "features"
    summary = run_slide_extraction(list_slides(folder) + list_slides([svs]), out, extractor,
                                   settings)
    assert sorted(summary.done) == ["CMU-1-Small-Region", "CMU-1-Small-Region.svs"]
    got = np.load(out / "CMU-1-Small-Region" / "features.npy")
    assert got.shape == (16, 3 + 32)
    np.testing.assert_array_equal(got, np.load(out / "CMU-1-Small-Region.svs" / "features.npy"))
    np.testing.assert_array_equal(np.load(out / "CMU-1-Small-Region" / "coords.npy"), ref.coords)


def test_a_folder_of_two_series_gives_two_slides(real_data, tmp_path):
    folder = tmp_path / "two"
    copy_series(real_data / CMU, folder, "SLIDE-A", prefix="a_")
    copy_series(real_data / CMU, folder, "SLIDE-B", prefix="b_")
    entries = collect_slide_entries(folder)
    assert [(e.path.name, e.name) for e in entries] == [("a_volume.dcm", "SLIDE-A"),
                                                        ("b_volume.dcm", "SLIDE-B")]
    assert collect_slides([folder / "b_label.dcm"]) == [folder / "b_volume.dcm"]
    with pytest.raises(NotASlideError, match=r"two: holds 2 DICOM series"):
        open_slide(folder)
    with open_slide(folder / "b_overview.dcm") as info:  # any instance opens its series
        assert info.dimensions == (2220, 2967)
    same = tmp_path / "same-id"  # ContainerIdentifier shared: made unique with the UID
    uid_a = copy_series(real_data / CMU, same, "X", keep=("volume",), prefix="a_")
    uid_b = copy_series(real_data / CMU, same, "X", keep=("volume",), prefix="b_")
    assert sorted(s.name for s in list_series([same])) == sorted([f"X_{uid_a}", f"X_{uid_b}"])


def test_a_series_without_volume_fails_alone(real_data, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "no-volume"
    copy_series(real_data / CMU, good, keep=("volume", "label"))
    copy_series(real_data / CMU, bad, keep=("label", "overview", "thumbnail"))
    with pytest.raises(NotASlideError) as err:
        open_slide(bad)
    assert str(err.value).startswith(f"{bad}: DICOM series ")
    assert str(err.value).endswith("has no VOLUME instance (only LABEL, OVERVIEW, THUMBNAIL): "
                                   "nothing to tile")
    assert "\n" not in str(err.value)
    summary = tile_slides([bad, good], tmp_path / "out", progress=False)
    assert summary.n_failed == 1 and summary.n_done == 1
    ((slide, error),) = summary.failures
    assert slide == str(bad) and error.startswith("NotASlideError: DICOM series")
    assert len(np.load(tmp_path / "out" / "good" / "coords.npy")) > 0


def test_the_nonconformant_sample_is_refused_with_one_line(real_data, tmp_path):
    path = real_data / NONCONFORMANT
    assert collect_slides(path.parent) == [path.parent]
    for given in (path, path.parent):
        with pytest.raises(NotASlideError) as err:
            open_slide(given)
        assert str(err.value) == (
            f"{path}: non-conformant DICOM-WSI: no ImageType, no DimensionOrganizationType, no "
            "PixelSpacing (SharedFunctionalGroupsSequence); its tile order and pixel size are "
            "unknown (OpenSlide and wsidicom refuse it too): convert it to conformant DICOM-WSI "
            "(e.g. with wsidicomizer) or to a pyramidal TIFF")
    shutil.copy(path, tmp_path / "nc.dcm")
    summary = tile_slides([tmp_path / "nc.dcm", real_data / "slides/svs/CMU-1-crop-16x16.svs"],
                          tmp_path / "out", progress=False, min_tissue=0.0,
                          empty_is_failure=False, target_mpp=0.499)
    assert summary.n_failed == 1 and summary.failures[0][1].startswith(
        "NotASlideError: non-conformant DICOM-WSI")


def test_why_no_fallback_the_implicit_frame_order_is_wrong(real_data):
    """The refusal's reason, checked on pydicom-decoded frames: read in the implicit
    TILED_FULL order (row by row) the frames do not join; read column by column (an order
    the file does not state) they do. A fallback reader would have had to guess."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(real_data / NONCONFORMANT)
        frames = ds.pixel_array
    n, size = frames.shape[0], int(ds.Rows)
    cols = -(-int(ds.TotalPixelMatrixColumns) // size)
    rows = -(-int(ds.TotalPixelMatrixRows) // size)
    assert (n, cols, rows) == (42, 7, 6)

    def seam_gap(order: str) -> float:
        img = np.zeros((rows * size, cols * size, 3), np.float64)
        for k in range(n):
            r, c = divmod(k, cols) if order == "row" else (k % rows, k // rows)
            img[r * size:(r + 1) * size, c * size:(c + 1) * size] = frames[k]
        seams = [np.abs(img[:, c * size - 1] - img[:, c * size]).mean() for c in range(1, cols)]
        seams += [np.abs(img[r * size - 1] - img[r * size]).mean() for r in range(1, rows)]
        return float(np.mean(seams))

    inner = float(np.abs(np.diff(frames[20].astype(np.float64), axis=1)).mean())
    assert seam_gap("column") < 2 * inner < seam_gap("row") / 5
