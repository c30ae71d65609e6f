"""Lesion annotations: the ASAP XML reader (Camelyon16), GeoJSON, masks, and the share of
each tile inside a lesion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rl_benchmarks.slides.annotations import (
    AnnotationError,
    LesionTruth,
    box_fraction_in_geometry,
    box_fraction_in_mask,
    geometry_mask,
    load_truth,
    read_asap_xml,
    read_geojson,
)
from rl_benchmarks.slides.geometry import tile_boxes_level0

# Two lesions: a 100x100 square with a 50x50 Exclusion hole in its middle, and a rectangle.
ASAP = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="0" Y="0" />
        <Coordinate Order="1" X="100" Y="0" />
        <Coordinate Order="3" X="0" Y="100" />
        <Coordinate Order="2" X="100" Y="100" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="150.0" Y="50" />
        <Coordinate Order="1" X="250.0" Y="50" />
        <Coordinate Order="2" X="250.0" Y="100" />
        <Coordinate Order="3" X="150.0" Y="100" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Hole" Type="Polygon" PartOfGroup="Exclusion" Color="#000000">
      <Coordinates>
        <Coordinate Order="0" X="25" Y="25" />
        <Coordinate Order="1" X="75" Y="25" />
        <Coordinate Order="2" X="75" Y="75" />
        <Coordinate Order="3" X="25" Y="75" />
      </Coordinates>
    </Annotation>
    <Annotation Name="A dot" Type="Dot" PartOfGroup="_0" Color="#000000">
      <Coordinates><Coordinate Order="0" X="290" Y="140" /></Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>
    <Group Name="Tumor" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>
    <Group Name="Exclusion" PartOfGroup="None" Color="#000000"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""


def _expected_mask(width: int = 300, height: int = 150) -> np.ndarray:
    """The same lesions drawn by hand in numpy (pixel centres)."""
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    square = (xx < 100) & (yy < 100)
    hole = (xx > 25) & (xx < 75) & (yy > 25) & (yy < 75)
    rect = (xx > 150) & (xx < 250) & (yy > 50) & (yy < 100)
    return (square & ~hole) | rect


@pytest.fixture
def asap(tmp_path):
    path = tmp_path / "tumor_001.xml"
    path.write_text(ASAP)
    return path


def test_asap_xml_gives_the_expected_mask(asap):
    geom = read_asap_xml(asap)
    assert geom.area == pytest.approx(100 * 100 - 50 * 50 + 100 * 50)
    np.testing.assert_array_equal(geometry_mask(geom, 300, 150), _expected_mask())
    # At 1/5 resolution the mask is the cells whose centre is inside.
    coarse = geometry_mask(geom, 300, 150, downsample=5)
    assert coarse.shape == (30, 60)
    np.testing.assert_array_equal(coarse, _expected_mask()[2::5, 2::5])


def test_camelyon16_group_2_is_a_hole_and_groups_can_be_renamed(tmp_path):
    (tmp_path / "c.xml").write_text(ASAP.replace('PartOfGroup="Exclusion"', 'PartOfGroup="_2"'))
    assert read_asap_xml(tmp_path / "c.xml").area == pytest.approx(12500)
    # Without exclusion groups the hole is part of the lesion.
    assert read_asap_xml(tmp_path / "c.xml", exclusion_groups=()).area == pytest.approx(15000)


def test_tile_fraction_is_the_exact_share_of_the_deepzoom_box(asap):
    truth = load_truth(asap)
    # 50-px tiles of a 300x150 slide at full resolution (DeepZoom level 9 of 300x150).
    coords = np.array([[9, c, r] for r in range(3) for c in range(6)])
    boxes = tile_boxes_level0(coords, 50, 300, 150)
    got = truth.tile_fraction(coords, 50, 300, 150)
    # By hand: each 50x50 tile of the square loses a 25x25 corner to the hole; the rectangle
    # fills tiles (3..4, 1) entirely.
    want = np.zeros(18)
    want[[0, 1, 6, 7]] = 0.75
    want[[9, 10]] = 1.0
    np.testing.assert_allclose(got, want, atol=1e-12)
    # The same from a pixel mask with exact area weights (1 px cells, then 4 px cells).
    mask = _expected_mask()
    np.testing.assert_allclose(box_fraction_in_mask(mask, 1, boxes), want, atol=1e-12)
    coarse = mask.reshape(30, 5, 60, 5).mean((1, 3))
    np.testing.assert_allclose(box_fraction_in_mask(coarse, 5, boxes), want, atol=1e-12)


def test_mask_fraction_on_unaligned_boxes_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.uniform(size=(20, 30)) > 0.6
    ds = 8
    full = np.kron(mask, np.ones((ds, ds)))  # level-0 pixels
    boxes = np.array([[3, 5, 41, 77], [0, 0, 240, 160], [200, 150, 240, 160], [17, 9, 18, 10]])
    want = [full[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in boxes]
    np.testing.assert_allclose(box_fraction_in_mask(mask, ds, boxes), want, atol=1e-12)
    geom_truth = LesionTruth(mask=mask, mask_downsample=ds)
    assert not geom_truth.is_empty


def test_geojson_polygons_and_classes(tmp_path, asap):
    square = {"type": "Polygon", "coordinates": [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]],
                                                  [[25, 25], [75, 25], [75, 75], [25, 75], [25, 25]]]}
    rect = {"type": "Polygon", "coordinates": [[[150, 50], [250, 50], [250, 100], [150, 100], [150, 50]]]}
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": square, "properties": {"classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": rect, "properties": {"classification": {"name": "Stroma"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
    ]}
    (tmp_path / "a.geojson").write_text(json.dumps(doc))
    both = read_geojson(tmp_path / "a.geojson")
    assert both.symmetric_difference(read_asap_xml(asap)).area == pytest.approx(0.0)
    assert read_geojson(tmp_path / "a.geojson", classes=["Tumor"]).area == pytest.approx(7500)
    boxes = np.array([[0, 0, 50, 50], [150, 50, 200, 100], [260, 0, 300, 50]])
    np.testing.assert_allclose(box_fraction_in_geometry(both, boxes), [0.75, 1.0, 0.0])


def test_bad_annotation_files_name_the_file(tmp_path):
    (tmp_path / "bad.xml").write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(AnnotationError, match="bad.xml: not an XML file"):
        read_asap_xml(tmp_path / "bad.xml")
    (tmp_path / "x.xml").write_text(ASAP.replace('X="100" Y="0"', 'X="abc" Y="0"'))
    with pytest.raises(AnnotationError, match="x.xml: Coordinate X='abc' is not a number"):
        read_asap_xml(tmp_path / "x.xml")
    with pytest.raises(FileNotFoundError, match="nope.xml: annotation file not found"):
        load_truth(tmp_path / "nope.xml")
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        load_truth(tmp_path / "a.txt")
    np.save(tmp_path / "m.npy", np.zeros((4, 4)))
    with pytest.raises(AnnotationError, match="needs its downsample"):
        load_truth(tmp_path / "m.npy")
    assert load_truth(tmp_path / "m.npy", mask_downsample=8).is_empty
