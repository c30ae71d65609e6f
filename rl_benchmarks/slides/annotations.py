"""Lesion annotations (ground truth) and the fraction of each tile they cover.

Why: a heatmap can be checked only against a truth drawn by someone else. Three sources are
read, all in **level-0 pixels** of the slide:

* ASAP XML, the format Camelyon16 ships its lesion annotations in: ``Annotation`` elements
  (``Type`` Polygon/Spline/Rectangle) with ``Coordinates/Coordinate`` ``X``/``Y`` attributes,
  each in a group (``PartOfGroup``: ``Tumor``, ``_0``, ``_1``, ...). The groups named
  ``Exclusion`` or ``_2`` (Camelyon16's non-tumour areas drawn inside a lesion) are holes:
  they are subtracted from the union of the other groups.
* GeoJSON (QuPath's export and most tools): ``Polygon``/``MultiPolygon`` geometries of a
  ``FeatureCollection``, a ``Feature`` or a bare geometry, read with
  :func:`shapely.geometry.shape`.
* A binary mask ``.npy`` at ``1/downsample`` of the level-0 size, as the demo's planted
  islands (``cohort/ground_truth/<slide>_planted.npy``: pixel ``(r, c)`` covers level-0
  pixels ``[c*ds, (c+1)*ds) x [r*ds, (r+1)*ds)``, ``ds = 8``).

:meth:`LesionTruth.tile_fraction` gives, for tiles ``[dz_level, col, row]``, the exact share
of each tile's level-0 box (:func:`rl_benchmarks.slides.geometry.tile_boxes_level0`, the box
DeepZoom reads) that lies inside a lesion.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rl_benchmarks.slides.geometry import tile_boxes_level0

#: ASAP groups whose polygons are holes in the lesions (Camelyon16: ``_2``).
EXCLUSION_GROUPS = ("Exclusion", "_2")

__all__ = [
    "EXCLUSION_GROUPS",
    "AnnotationError",
    "LesionTruth",
    "box_fraction_in_geometry",
    "box_fraction_in_mask",
    "geometry_mask",
    "load_truth",
    "read_asap_xml",
    "read_geojson",
]


class AnnotationError(ValueError):
    """An unreadable annotation file (the message names the file and the cause)."""


def _polygon(points: Sequence[tuple[float, float]]):
    """A valid shapely (Multi)Polygon of ``points`` (a self-crossing outline is repaired)."""
    import shapely
    from shapely.geometry import Polygon

    poly = Polygon(points)
    if not poly.is_valid:
        poly = shapely.make_valid(poly)
        poly = shapely.union_all([g for g in getattr(poly, "geoms", [poly])
                                  if g.geom_type in ("Polygon", "MultiPolygon")])
    return poly


def _number(text: str | None, path: Path, what: str) -> float:
    if text is None:
        raise AnnotationError(f"{path}: a Coordinate without {what}")
    try:
        return float(text.replace(",", "."))  # some exports write a decimal comma
    except ValueError:
        raise AnnotationError(f"{path}: Coordinate {what}={text!r} is not a number") from None


def read_asap_xml(path: str | os.PathLike, exclusion_groups: Sequence[str] = EXCLUSION_GROUPS):
    """The lesions of an ASAP XML file (Camelyon16) as one shapely geometry in level-0 px:
    the union of the polygons of every group, minus those of ``exclusion_groups``.

    Annotations with fewer than 3 points (``Dot``) are skipped. A file without any lesion
    polygon gives an empty geometry; an unreadable file is an :class:`AnnotationError`.
    """
    import shapely

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(f"{path}: not an XML file ({exc})") from None
    excluded = {g.lower() for g in exclusion_groups}
    lesions, holes = [], []
    for ann in root.iter("Annotation"):
        pts = [(_number(c.get("X"), path, "X"), _number(c.get("Y"), path, "Y"))
               for c in sorted(ann.iter("Coordinate"), key=lambda c: float(c.get("Order", 0) or 0))]
        if len(pts) < 3:
            continue
        group = str(ann.get("PartOfGroup") or "")
        (holes if group.lower() in excluded else lesions).append(_polygon(pts))
    if root.tag != "ASAP_Annotations" and next(root.iter("Annotation"), None) is None:
        raise AnnotationError(f"{path}: no ASAP Annotation elements (root <{root.tag}>)")
    geom = shapely.union_all(lesions) if lesions else shapely.Polygon()
    if holes:
        geom = geom.difference(shapely.union_all(holes))
    return geom


def read_geojson(path: str | os.PathLike, classes: Sequence[str] | None = None):
    """The lesion region of a QuPath GeoJSON file as one shapely geometry (level-0 px).

    Read and validated by :func:`rl_benchmarks.slides.geojson.annotation_regions` (one
    reader for tiling and for truth): the area annotations of ``classes`` (shell patterns,
    case-sensitive as QuPath's classes; None: every class), minus those of the exclude classes
    (``Ignore*``, ``Pen``, ``Artifact``).
    """
    import shapely

    from rl_benchmarks.slides.geojson import DEFAULT_EXCLUDE, annotation_regions

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    regions = annotation_regions(path, include_classes=classes, exclude_classes=DEFAULT_EXCLUDE)
    if regions.include is None:
        return shapely.Polygon()
    return regions.include if regions.exclude is None else regions.include.difference(regions.exclude)


def box_fraction_in_geometry(geometry, boxes: np.ndarray) -> np.ndarray:
    """Share (N,) of each level-0 box ``[x0, y0, x1, y1]`` that lies inside ``geometry``
    (exact polygon areas, shapely)."""
    import shapely

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    out = np.zeros(len(boxes), np.float64)
    if geometry is None or geometry.is_empty or not len(boxes):
        return out
    rects = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3])
    shapely.prepare(geometry)
    hit = shapely.intersects(geometry, rects)
    if hit.any():
        inter = shapely.area(shapely.intersection(rects[hit], geometry))
        out[hit] = inter / np.maximum(shapely.area(rects[hit]), 1e-12)
    return np.clip(out, 0.0, 1.0)


def _overlaps(lo: float, hi: float, ds: float, n: int) -> tuple[int, np.ndarray]:
    """First mask cell and the overlap lengths of ``[lo, hi)`` with cells ``[k*ds, (k+1)*ds)``."""
    k0 = max(0, int(np.floor(lo / ds)))
    k1 = min(n, int(np.ceil(hi / ds)))
    if k1 <= k0:
        return k0, np.zeros(0)
    edges = np.arange(k0, k1 + 1, dtype=np.float64) * ds
    return k0, np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)


def box_fraction_in_mask(mask: np.ndarray, downsample: float, boxes: np.ndarray) -> np.ndarray:
    """Share (N,) of each level-0 box inside ``mask`` (a lesion mask at ``1/downsample`` of
    level 0: cell ``(r, c)`` covers level-0 ``[c*ds, (c+1)*ds) x [r*ds, (r+1)*ds)``); exact:
    each cell weighs by its overlap area with the box."""
    m = np.asarray(mask, np.float64)
    if m.ndim != 2:
        raise ValueError(f"a lesion mask must be 2-D, got shape {m.shape}")
    ds = float(downsample)
    out = np.zeros(len(boxes), np.float64)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
        area = (x1 - x0) * (y1 - y0)
        if area <= 0:
            continue
        c0, wx = _overlaps(x0, x1, ds, m.shape[1])
        r0, wy = _overlaps(y0, y1, ds, m.shape[0])
        if len(wx) and len(wy):
            out[i] = float(wy @ m[r0:r0 + len(wy), c0:c0 + len(wx)] @ wx) / area
    return np.clip(out, 0.0, 1.0)


def geometry_mask(geometry, width: int, height: int, downsample: float = 1.0) -> np.ndarray:
    """Boolean (ceil(height/ds), ceil(width/ds)) mask: cells whose centre lies in ``geometry``."""
    import shapely

    ds = float(downsample)
    h, w = int(np.ceil(height / ds)), int(np.ceil(width / ds))
    if geometry is None or geometry.is_empty:
        return np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    return shapely.contains_xy(geometry, (xx + 0.5) * ds, (yy + 0.5) * ds)


@dataclass
class LesionTruth:
    """A slide's lesions: a shapely ``geometry`` (level-0 px) or a ``mask`` at
    ``1/mask_downsample`` of level 0; ``source`` names where it came from."""

    geometry: Any = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    mask_downsample: float = 1.0
    source: str = ""

    def box_fraction(self, boxes: np.ndarray) -> np.ndarray:
        """Share of each level-0 box ``[x0, y0, x1, y1]`` inside a lesion."""
        if self.mask is not None:
            return box_fraction_in_mask(self.mask, self.mask_downsample, boxes)
        return box_fraction_in_geometry(self.geometry, boxes)

    def tile_fraction(self, coords: np.ndarray, tile_size: int, width: int, height: int) -> np.ndarray:
        """Share of each tile ``[dz_level, col, row]`` (of a ``width`` x ``height`` slide) inside
        a lesion, over the exact level-0 box DeepZoom reads for it."""
        coords = np.rint(np.asarray(coords)[:, :3]).astype(np.int64)
        return self.box_fraction(tile_boxes_level0(coords, tile_size, width, height))

    @property
    def is_empty(self) -> bool:
        """True when the truth holds no lesion at all."""
        if self.mask is not None:
            return not np.asarray(self.mask).any()
        return self.geometry is None or self.geometry.is_empty

    def contours(self) -> list[np.ndarray]:
        """Outlines (level-0 px, (K, 2) x/y) of the polygons, holes included (geometry only)."""
        if self.geometry is None or self.geometry.is_empty:
            return []
        out = []
        for poly in getattr(self.geometry, "geoms", [self.geometry]):
            if poly.geom_type == "Polygon":
                out.append(np.asarray(poly.exterior.coords))
                out += [np.asarray(r.coords) for r in poly.interiors]
            elif hasattr(poly, "geoms"):
                out += LesionTruth(geometry=poly).contours()
        return out


def load_truth(path: str | os.PathLike, mask_downsample: float | None = None,
               classes: Sequence[str] | None = None) -> LesionTruth:
    """Read a slide's lesions: ASAP ``.xml``, GeoJSON ``.geojson``/``.json`` (``classes`` keeps
    those QuPath classes), or a mask ``.npy`` at ``1/mask_downsample`` of level 0."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".xml":
        return LesionTruth(geometry=read_asap_xml(p), source=str(p))
    if suffix in (".geojson", ".json"):
        return LesionTruth(geometry=read_geojson(p, classes), source=str(p))
    if suffix == ".npy":
        if mask_downsample is None or float(mask_downsample) <= 0:
            raise AnnotationError(f"{p}: a mask needs its downsample (level-0 px per mask px)")
        if not p.is_file():
            raise FileNotFoundError(f"{p}: lesion mask file not found")
        try:
            mask = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise AnnotationError(f"{p}: not a readable .npy mask ({exc})") from None
        if mask.ndim != 2:
            raise AnnotationError(f"{p}: a lesion mask must be 2-D, got shape {mask.shape}")
        return LesionTruth(mask=mask > 0, mask_downsample=float(mask_downsample), source=str(p))
    raise AnnotationError(f"{p}: unknown annotation format {suffix!r} (expected .xml, .geojson, "
                          ".json or .npy)")
