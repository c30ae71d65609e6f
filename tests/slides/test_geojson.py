"""QuPath GeoJSON: exact mask polygons and coverage, tissue.geojson round trip, a hand-written
QuPath file restricting the tiles, tile scores as detections, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from scipy import ndimage as ndi
from shapely.geometry import Polygon, box, shape

from rl_benchmarks.slides.geojson import (
    GeoJSONError,
    annotation_regions,
    coverage_raster,
    mask_to_polygons,
    read_annotations,
    tile_scores_to_geojson,
)
from rl_benchmarks.slides.geometry import tile_boxes_level0
from rl_benchmarks.slides.qc import EXCLUDE_COLOR, INCLUDE_COLOR, render_qc
from rl_benchmarks.slides.tiling import tile_slide, tile_slides

from .conftest import EXPECTED, T0


def _masks():
    yield np.zeros((4, 4), bool)
    m = np.zeros((6, 6), bool)
    m[1:5, 1:5] = True
    m[2, 2] = m[3, 3] = False  # two holes touching at a corner
    yield m
    m = np.zeros((5, 5), bool)
    m[1, 1] = m[2, 2] = m[3, 1] = True  # pixels touching only at corners
    yield m
    for seed in range(3):  # blobs with holes, islands in holes, pinches
        rng = np.random.default_rng(seed)
        yield ndi.gaussian_filter(rng.random((30, 40)), 1.2) > 0.5
    yield np.random.default_rng(9).random((24, 24)) > 0.5  # salt and pepper


@pytest.mark.parametrize("mask", list(_masks()))
def test_mask_polygons_are_valid_and_exactly_the_mask(mask):
    polys = mask_to_polygons(mask)
    assert all(p.is_valid for p in polys)
    union = shapely.MultiPolygon(polys) if polys else shapely.MultiPolygon()
    assert union.is_valid and union.area == mask.sum()
    # rasterised again (independently: shapely area of each pixel square), the same mask
    h, w = mask.shape
    cells = np.array([[union.intersection(box(c, r, c + 1, r + 1)).area for c in range(w)]
                      for r in range(h)])
    np.testing.assert_array_equal(cells, mask.astype(float))


def test_coverage_raster_equals_shapely_areas():
    g = Polygon([(-30, -20), (250, 13), (61, 330)], [[(40, 50), (90, 60), (70, 140)]])
    g = g.union(Polygon([(200, 200), (260, 210), (230, 300)]))
    sx, sy = 32.0, 30.5
    cov = coverage_raster(g, (9, 8), (sx, sy))
    ref = np.array([[g.intersection(box(c * sx, r * sy, (c + 1) * sx, (r + 1) * sy)).area
                     / (sx * sy) for c in range(8)] for r in range(9)])
    np.testing.assert_allclose(cov, ref, atol=1e-12)


def _qupath_file(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _ann(x0, y0, x1, y1, klass=None, object_type="annotation", name=None):
    props = {"objectType": object_type}
    if klass is not None:
        props["classification"] = {"name": klass, "color": [200, 0, 0]}
    if name is not None:
        props["name"] = name
    return {"type": "Feature", "id": "x", "properties": props,
            "geometry": {"type": "Polygon",
                         "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}}


def test_qupath_include_and_exclude_give_exactly_the_expected_tiles(layout_slide, tmp_path):
    """Tissue covers tiles (1..4, 1..2) (conftest). A Tumor annotation over tiles
    (1..2, 1..2), a Pen annotation over tile (2, 2), an Ignore* one over (1, 1)'s right
    quarter, a cell detection and a point are in the file too."""
    point = {"type": "Feature", "properties": {"objectType": "annotation"},
             "geometry": {"type": "Point", "coordinates": [10, 10]}}
    path = _qupath_file(tmp_path / "layout.geojson", [
        _ann(T0, T0, 3 * T0, 3 * T0, "Tumor"),
        _ann(2 * T0, 2 * T0, 3 * T0, 3 * T0, "Pen"),
        _ann(T0 + 3 * T0 // 4, T0, 2 * T0, 2 * T0, "Ignore*"),  # leaves 0.75 >= 0.6
        _ann(0, 0, 5 * T0, 5 * T0, "Tumor", object_type="detection"),  # not an area to tile
        point,
    ])
    res = tile_slide(layout_slide, annotations=path)
    got = set(map(tuple, res.coords[:, 1:].tolist()))
    assert got == {(1, 1), (2, 1), (1, 2)}
    assert res.annotations["n_include"] == 1 and res.annotations["n_exclude"] == 2
    np.testing.assert_allclose(res.tissue_fraction[got_order(res, (1, 1))], 0.75, atol=1e-6)
    # min_tissue above 0.75 drops the partly ignored tile
    res = tile_slide(layout_slide, annotations=path, min_tissue=0.8)
    assert set(map(tuple, res.coords[:, 1:].tolist())) == {(2, 1), (1, 2)}
    # only exclusions: every tissue tile but the excluded one
    only_pen = _qupath_file(tmp_path / "pen.geojson", [_ann(2 * T0, 2 * T0, 3 * T0, 3 * T0, "Pen")])
    res = tile_slide(layout_slide, annotations=only_pen)
    assert set(map(tuple, res.coords[:, 1:].tolist())) == EXPECTED - {(2, 2)}
    # named include classes that the file lacks: no region, hence no tile (and a message)
    res = tile_slide(layout_slide, annotations=only_pen, include_classes=["Tumor"])
    assert res.n_tiles == 0 and "inside the annotations" in res.message
    # the QC picture draws them: the include outline and the excluded tint
    img = render_qc(tile_slide(layout_slide, annotations=path))
    assert (img == np.asarray(INCLUDE_COLOR, np.uint8)).all(-1).any()
    assert (np.abs(img.astype(int) - EXCLUDE_COLOR).sum(-1) < 200).any()


def got_order(res, tile):
    """Index of ``tile`` (col, row) in ``res.coords``."""
    return [tuple(c) for c in res.coords[:, 1:].tolist()].index(tile)


@pytest.mark.parametrize("crop", [False, True])
def test_tissue_geojson_round_trip_gives_the_same_tiles(layout_slide, tmp_path, crop):
    if crop:  # a size that is no multiple of the mask pixel: fractional level-0 vertices
        from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

        from .conftest import layout_image

        layout_slide = write_pyramidal_tiff(tmp_path / "odd.tiff", layout_image()[:2213, :2650],
                                            mpp=0.25, compression="jpeg")
    out = tmp_path / "tiles"
    first = tile_slides([layout_slide], out, progress=False, min_tissue=0.5)
    assert first.ok
    tissue = out / layout_slide.name / "tissue.geojson"
    obj = json.loads(tissue.read_text())
    assert obj["type"] == "FeatureCollection" and obj["features"]
    for f in obj["features"]:
        assert f["properties"]["objectType"] == "annotation"
        assert f["properties"]["classification"]["name"] in ("Tissue", "Pen")
        assert shape(f["geometry"]).is_valid
    coords = np.load(out / layout_slide.name / "coords.npy")
    again = tile_slides([layout_slide], tmp_path / "again", progress=False, min_tissue=0.5,
                        annotations=_folder_with(tmp_path, tissue, layout_slide.stem))
    assert again.ok
    rec = json.loads((tmp_path / "again" / layout_slide.name / "tiling.json").read_text())
    assert rec["annotations"]["n_include"] == len([f for f in obj["features"]
                                                   if f["properties"]["classification"]["name"]
                                                   == "Tissue"])
    np.testing.assert_array_equal(np.load(tmp_path / "again" / layout_slide.name / "coords.npy"),
                                  coords)


def _folder_with(tmp_path, geojson, stem):
    folder = tmp_path / "ann"
    folder.mkdir(exist_ok=True)
    (folder / f"{stem}.geojson").write_bytes(geojson.read_bytes())
    return folder


def test_broken_geojson_is_one_line_and_the_other_slides_go_on(layout_slide, tmp_path, capsys):
    import shutil

    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("good.tiff", "bad.tiff", "free.tiff"):
        shutil.copy(layout_slide, slides / name)
    bowtie = _ann(0, 0, 1, 1, "Tumor", name="my tumour")
    bowtie["geometry"]["coordinates"] = [[[0, 0], [900, 900], [900, 0], [0, 900], [0, 0]]]
    ann = tmp_path / "ann.csv"
    _qupath_file(tmp_path / "good.geojson", [_ann(T0, T0, 3 * T0, 3 * T0, "Tumor")])
    _qupath_file(tmp_path / "bad.geojson", [_ann(T0, T0, 2 * T0, 2 * T0, "Tumor"), bowtie])
    ann.write_text("slide_id,path\ngood.tiff,good.geojson\nbad,bad.geojson\n")
    summary = tile_slides(slides, tmp_path / "out", progress=False, annotations=ann)
    assert summary.n_failed == 1 and summary.n_done == 2
    (slide, err), = summary.failures
    assert slide.endswith("bad.tiff") and "\n" not in err
    assert "bad.geojson: feature 1 ('my tumour'): invalid Polygon: Self-intersection" in err
    good = np.load(tmp_path / "out" / "good.tiff" / "coords.npy")
    assert set(map(tuple, good[:, 1:].tolist())) == {(1, 1), (2, 1), (1, 2), (2, 2)}
    free = np.load(tmp_path / "out" / "free.tiff" / "coords.npy")  # no file: tissue alone
    assert set(map(tuple, free[:, 1:].tolist())) == EXPECTED
    assert "free.tiff" in capsys.readouterr().err
    # a rerun with the same annotations skips; a changed file re-tiles that slide only
    _qupath_file(tmp_path / "bad.geojson", [_ann(T0, T0, 2 * T0, 2 * T0, "Tumor")])
    rerun = tile_slides(slides, tmp_path / "out", progress=False, annotations=ann)
    assert rerun.ok and rerun.n_skipped == 2 and rerun.n_done == 1


@pytest.mark.parametrize("text,needle", [
    ("{not json", "not valid JSON (line 1, column 2"),
    ('{"type": "Topology"}', "expected a FeatureCollection"),
    ('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}}]}',
     "feature 0: no geometry"),
    ('[{"type": "Feature", "properties": {"name": "t"}, "geometry": {"type": "Polygon", '
     '"coordinates": [[[0, 0], [1]]]}}]', "feature 0 ('t'): bad Polygon coordinates"),
    ('[{"type": "Feature", "properties": {"classification": "Tumor"}, "geometry": '
     '{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}}]',
     "'classification' must be an object"),
])
def test_bad_geojson_messages_name_file_and_feature(tmp_path, text, needle):
    path = tmp_path / "x.geojson"
    path.write_text(text)
    with pytest.raises(GeoJSONError) as info:
        read_annotations(path)
    assert str(info.value).startswith(f"{path}: ") and needle in str(info.value)
    assert "\n" not in str(info.value)


def test_regions_by_class_patterns(tmp_path):
    path = _qupath_file(tmp_path / "a.geojson", [
        _ann(0, 0, 10, 10, "Tumor"), _ann(20, 0, 30, 10, "Stroma"), _ann(40, 0, 50, 10),
        _ann(0, 20, 10, 30, "Ignore*"), _ann(20, 20, 30, 30, "Artifact"),
    ])
    r = annotation_regions(path)
    assert (r.n_include, r.n_exclude) == (3, 2) and r.include.area == 300
    r = annotation_regions(path, include_classes=["Tum*"], exclude_classes=["Artifact"])
    assert (r.n_include, r.n_exclude) == (1, 1) and r.include.area == 100


def test_tile_scores_as_qupath_detections(tmp_path):
    coords = np.array([[5, 0, 0], [5, 3, 2], [5, 4, 4]])
    scores = np.array([0.25, -1.5, np.nan])
    dims = (900, 1000)
    path = tile_scores_to_geojson(tmp_path / "s.geojson", coords, scores, 224, dims)
    feats = json.loads(path.read_text())["features"]
    assert len(feats) == 2  # the NaN score is left out
    boxes = tile_boxes_level0(coords, 224, *dims)
    for f, b, s in zip(feats, boxes, scores):
        assert f["properties"]["objectType"] == "detection"
        assert f["properties"]["measurements"] == {"score": s}
        assert shape(f["geometry"]).equals(box(*b))
    # level-0 boxes (h5 patches) are taken as they are
    path = tile_scores_to_geojson(tmp_path / "b.geojson", np.array([[0, 0, 448, 448]]), [1.0])
    (f,) = json.loads(path.read_text())["features"]
    assert shape(f["geometry"]).equals(box(0, 0, 448, 448))


def test_rlbench_tile_reads_annotations_from_a_folder(layout_slide, tmp_path):
    """The command passes ``annotations=`` (and the class lists) through to the tiler."""
    from rl_benchmarks.cli.main import run

    folder = tmp_path / "ann"
    folder.mkdir()
    _qupath_file(folder / f"{layout_slide.stem}.geojson", [_ann(T0, T0, 3 * T0, 3 * T0, "Tumor"),
                                                          _ann(2 * T0, 2 * T0, 3 * T0, 3 * T0, "Pen")])
    out = tmp_path / "out"
    assert run("tile", [f"slides={layout_slide}", f"output_dir={out}", f"annotations={folder}",
                        "progress=false", "qc=false"]) == 0
    coords = np.load(next(out.glob("*/coords.npy")))
    assert set(map(tuple, coords[:, 1:].tolist())) == {(1, 1), (2, 1), (1, 2)}
    # without exclusions, the Pen-covered tile comes back
    assert run("tile", [f"slides={layout_slide}", f"output_dir={tmp_path / 'out2'}", f"annotations={folder}",
                        "exclude_classes=[]", "progress=false", "qc=false"]) == 0
    coords = np.load(next((tmp_path / "out2").glob("*/coords.npy")))
    assert set(map(tuple, coords[:, 1:].tolist())) == {(1, 1), (2, 1), (1, 2), (2, 2)}
