"""GeoJSON as QuPath reads and writes it: tissue and pen regions out, annotations in, tile
scores out as detections.

Why: pathologists draw and correct regions in QuPath. QuPath exchanges objects as a GeoJSON
``FeatureCollection`` in level-0 pixel coordinates (x right, y down); each ``Feature`` has
``properties.objectType`` ("annotation", "detection", ...), an optional
``properties.classification`` ``{"name", "color": [r, g, b]}`` and optional
``properties.measurements`` (``{"name": value}``). Geometry is handled with shapely.

* :func:`mask_to_polygons` turns a boolean mask into exact pixel-edge polygons (holes
  included), so ``tissue.geojson`` re-imported as an include annotation keeps every tile.
* :func:`read_annotations` validates a file: bad JSON, a feature that is not a Feature, a
  geometry shapely cannot build or an invalid polygon is a :class:`GeoJSONError`, one line
  naming the file and the feature (index and name).
* :func:`annotation_regions` splits annotations into include and exclude regions by class
  (default exclude: ``Ignore*``, ``Pen``, ``Artifact``; every other class includes).
* :func:`coverage_raster` is the exact area of a region inside each pixel of a grid (the
  tissue-mask grid), so the tile rule stays the tissue-fraction rule: a tile is kept when
  area(tile ∩ tissue ∩ include \\ exclude) / tile area ≥ ``min_tissue`` (docs/interop.md).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_EXCLUDE = ("Ignore*", "Pen", "Artifact")
"""Classes whose annotations are removed from tiling (QuPath's ``Ignore*`` included)."""

TISSUE_CLASS = ("Tissue", [0, 170, 0])
PEN_CLASS = ("Pen", [255, 230, 0])
TISSUE_GEOJSON = "tissue.geojson"


class GeoJSONError(ValueError):
    """Bad GeoJSON; ``str(err)`` is one line naming the file and the feature."""


# --------------------------------------------------------------------------- writing


def mask_to_polygons(mask: np.ndarray) -> list:
    """Exact polygons (shapely, pixel units, x = column, y = row) of the True pixels of a 2-D
    mask: the union of the pixel squares, holes included, pixels touching only at a corner
    in separate polygons. Vertices sit on pixel corners; collinear ones are dropped."""
    from shapely import STRtree
    from shapely.geometry import Polygon

    m = np.pad(np.asarray(mask, bool), 1)
    w = m.shape[1] + 1  # vertex id = y * w + x (padded coordinates)
    r, c = np.nonzero(m)
    # directed boundary edges with the tissue on the same side: (x0, y0, x1, y1, direction)
    # directions 0 +x, 1 +y, 2 -x, 3 -y
    parts = []
    for dr, dc, d, (ax, ay) in ((-1, 0, 0, (0, 0)), (0, 1, 1, (1, 0)), (1, 0, 2, (1, 1)),
                                (0, -1, 3, (0, 1))):
        sel = ~m[r + dr, c + dc]
        parts.append(np.stack([c[sel] + ax, r[sel] + ay, np.full(sel.sum(), d)], 1))
    edges = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    if len(edges) == 0:
        return []
    step = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])
    start = edges[:, 1] * w + edges[:, 0]
    end_xy = edges[:, :2] + step[edges[:, 2]]
    end = end_xy[:, 1] * w + end_xy[:, 0]
    order = np.argsort(start, kind="stable")
    sorted_start = start[order]
    first = np.searchsorted(sorted_start, end, side="left")
    count = np.searchsorted(sorted_start, end, side="right") - first
    nxt = order[np.minimum(first, len(order) - 1)]
    two = np.flatnonzero(count == 2)
    if len(two):  # a corner shared by two diagonal pixels: turn towards the tissue side
        a, b = order[first[two]], order[first[two] + 1]
        want = (edges[two, 2] + 1) % 4
        nxt[two] = np.where(edges[a, 2] == want, a, b)
    # follow the successor of each edge around its ring (plain lists: fast in Python)
    succ = nxt.tolist()
    seen = [False] * len(edges)
    rings = []
    for e0 in range(len(edges)):
        if seen[e0]:
            continue
        ring, e = [], e0
        while not seen[e]:
            seen[e] = True
            ring.append(e)
            e = succ[e]
        for loop in _split_at_repeats(np.asarray(ring), start):
            dirs = edges[loop, 2]
            turn = dirs != np.roll(dirs, 1)  # keep the corners only
            rings.append(edges[loop[turn], :2].astype(np.float64) - 1.0)  # undo the padding

    def signed_area(p: np.ndarray) -> float:
        x, y = p[:, 0], p[:, 1]
        return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))

    shells = [p for p in rings if signed_area(p) > 0]
    holes = [p for p in rings if signed_area(p) < 0]
    shell_polys = [Polygon(s) for s in shells]
    owned: list[list[np.ndarray]] = [[] for _ in shells]
    if holes:
        tree = STRtree(shell_polys)
        areas = np.array([p.area for p in shell_polys])
        for h in holes:  # its shell: the smallest one containing it (islands sit inside holes)
            hits = [int(i) for i in tree.query(Polygon(h), predicate="covered_by")]
            if hits:
                owned[min(hits, key=lambda i: areas[i])].append(h)
    return [Polygon(s, owned[i]) for i, s in enumerate(shells)]


def _split_at_repeats(ring: np.ndarray, start: np.ndarray) -> list[np.ndarray]:
    """A closed edge sequence that passes a vertex twice (a pinch where pixels touch at a
    corner) as simple loops: a ring may not touch itself, but two rings may touch."""
    verts = start[ring]
    if len(np.unique(verts)) == len(verts):
        return [ring]
    loops, stack, pos = [], [], {}
    for e, v in zip(ring.tolist(), verts.tolist()):
        if v in pos:  # close the loop that began at v
            k = pos[v]
            loops.append(np.asarray([x for x, _ in stack[k:]]))
            for _, u in stack[k:]:
                pos.pop(u, None)
            del stack[k:]
        pos[v] = len(stack)
        stack.append((e, v))
    if stack:
        loops.append(np.asarray([x for x, _ in stack]))
    return loops


def _feature(geometry, object_type: str, name: str | None, color: Sequence[int] | None,
             measurements: dict | None = None, props: dict | None = None) -> dict:
    from shapely.geometry import mapping

    p: dict = {"objectType": object_type}
    if name is not None:
        p["classification"] = {"name": name, "color": list(color or [255, 0, 0])}
    if measurements:
        p["measurements"] = {k: float(v) for k, v in measurements.items()}
    if props:
        p.update(props)
    geo = mapping(geometry)
    return {"type": "Feature", "geometry": _as_lists(geo), "properties": p}


def _as_lists(obj):
    if isinstance(obj, dict):
        return {k: _as_lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_as_lists(v) for v in obj]
    return obj


def feature_collection(features: list[dict]) -> dict:
    """A GeoJSON ``FeatureCollection`` of ``features``."""
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike, features: list[dict]) -> Path:
    """Write a FeatureCollection atomically; returns the path."""
    from rl_benchmarks.utils.io import write_text

    write_text(path, json.dumps(feature_collection(features)))
    return Path(path)


def scale_geometry(geometry, scale: tuple[float, float]):
    """``geometry`` with x multiplied by ``scale[0]`` and y by ``scale[1]``."""
    import shapely

    s = np.asarray(scale, np.float64)
    return shapely.transform(geometry, lambda xy: xy * s)


def tissue_features(mask: np.ndarray, scale: tuple[float, float], pen: np.ndarray | None = None
                    ) -> list[dict]:
    """QuPath annotations of a tiling: one ``Tissue`` annotation per connected tissue region
    (holes kept) and one ``Pen`` annotation per pen/ink region (an exclude class), in
    level-0 pixels (``scale`` = level-0 px per mask px along x, y)."""
    out = []
    for klass, m in ((TISSUE_CLASS, mask), (PEN_CLASS, pen)):
        if m is None or not np.any(m):
            continue
        for poly in mask_to_polygons(m):
            geom = scale_geometry(poly, scale)
            out.append(_feature(geom, "annotation", klass[0], klass[1],
                                {"Area (level-0 px^2)": geom.area}))
    return out


def tile_scores_to_geojson(
    path: str | os.PathLike,
    coords: np.ndarray,
    scores: np.ndarray,
    tile_size: int | None = None,
    slide_dims: tuple[int, int] | None = None,
    measurement: str = "score",
    class_name: str | None = "Tile",
    color: Sequence[int] = (30, 80, 255),
) -> Path:
    """Write per-tile ``scores`` as QuPath detections (one square per tile, the score as the
    measurement ``measurement``), so QuPath can colour them (Measure > Show measurement maps).

    ``coords``: (N, 3) ``[dz_level, col, row]`` (with ``tile_size`` and ``slide_dims`` =
    level-0 (width, height): boxes of :func:`rl_benchmarks.slides.geometry.tile_boxes_level0`)
    or (N, 4) level-0 boxes ``(x0, y0, x1, y1)`` (e.g. h5 patches,
    :func:`rl_benchmarks.datasets.h5_features.h5_boxes_level0`). Non-finite scores are left
    out. Written atomically; returns ``path``."""
    import shapely

    from rl_benchmarks.slides.geometry import tile_boxes_level0

    coords = np.asarray(coords)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if coords.ndim != 2 or coords.shape[1] not in (3, 4) or len(coords) != len(scores):
        raise ValueError(f"{path}: need coords (N, 3) or boxes (N, 4) and N scores, got "
                         f"{coords.shape} and {scores.shape}")
    if coords.shape[1] == 3:
        if tile_size is None or slide_dims is None:
            raise ValueError(f"{path}: DeepZoom coords need tile_size and slide_dims")
        boxes = tile_boxes_level0(coords.astype(np.int64), int(tile_size), *slide_dims)
    else:
        boxes = coords
    ok = np.isfinite(scores)
    geoms = shapely.box(*boxes[ok].T.astype(np.float64))
    feats = [_feature(g, "detection", class_name, color, {measurement: s})
             for g, s in zip(geoms, scores[ok])]
    return write_geojson(path, feats)


# --------------------------------------------------------------------------- reading


@dataclass
class Annotation:
    """One area annotation of a GeoJSON file (level-0 pixels)."""

    geometry: object = field(repr=False)
    class_name: str | None
    object_type: str
    index: int
    name: str | None = None


def _where(path: Path, i: int, feat: object) -> str:
    name = None
    if isinstance(feat, dict) and isinstance(feat.get("properties"), dict):
        props = feat["properties"]
        cls = props.get("classification")
        name = props.get("name") or (cls.get("name") if isinstance(cls, dict) else None)
    return f"{path}: feature {i}" + (f" ({name!r})" if name else "")


def read_annotations(path: str | os.PathLike) -> list[Annotation]:
    """The area annotations (Polygon/MultiPolygon, objectType "annotation" or none) of a
    QuPath GeoJSON file: a FeatureCollection, a list of Features (older QuPath exports) or
    one Feature. Detections, cells and point/line objects are skipped. Raises
    :class:`GeoJSONError` (one line naming the file and the feature) on bad input."""
    from shapely.geometry import shape
    from shapely.validation import explain_validity

    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GeoJSONError(f"{path}: GeoJSON file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GeoJSONError(f"{path}: cannot read GeoJSON ({exc})") from None
    except json.JSONDecodeError as exc:
        raise GeoJSONError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                           f"{exc.msg})") from None
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        feats = obj.get("features")
        if not isinstance(feats, list):
            raise GeoJSONError(f"{path}: FeatureCollection without a 'features' list")
    elif isinstance(obj, dict) and obj.get("type") == "Feature":
        feats = [obj]
    elif isinstance(obj, list):
        feats = obj
    else:
        kind = obj.get("type") if isinstance(obj, dict) else type(obj).__name__
        raise GeoJSONError(f"{path}: expected a FeatureCollection, a Feature or a list of "
                           f"Features, got {kind!r}")
    out = []
    for i, feat in enumerate(feats):
        where = _where(path, i, feat)
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            raise GeoJSONError(f"{where}: not a GeoJSON Feature")
        props = feat.get("properties") or {}
        if not isinstance(props, dict):
            raise GeoJSONError(f"{where}: 'properties' is not an object")
        object_type = str(props.get("objectType", "annotation"))
        geo = feat.get("geometry")
        if not isinstance(geo, dict) or "type" not in geo:
            raise GeoJSONError(f"{where}: no geometry")
        if object_type != "annotation":
            continue
        if geo["type"] not in ("Polygon", "MultiPolygon"):
            continue  # points and lines have no area
        try:
            geom = shape(geo)
            coords = np.asarray(
                [c for poly in getattr(geom, "geoms", [geom])
                 for ring in [poly.exterior, *poly.interiors] for c in ring.coords], np.float64)
        except Exception as exc:  # shapely/GEOS messages vary
            raise GeoJSONError(f"{where}: bad {geo['type']} coordinates "
                               f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                               ) from None
        if coords.size and not np.isfinite(coords).all():
            raise GeoJSONError(f"{where}: non-finite coordinates")
        if geom.is_empty:
            continue
        if not geom.is_valid:
            raise GeoJSONError(f"{where}: invalid {geo['type']}: {explain_validity(geom)} "
                               "(fix it in QuPath, e.g. Objects > Annotations > Simplify shape)")
        cls = props.get("classification")
        if cls is not None and not isinstance(cls, dict):
            raise GeoJSONError(f"{where}: 'classification' must be an object with a 'name'")
        class_name = cls.get("name") if isinstance(cls, dict) else None
        out.append(Annotation(geom, None if class_name is None else str(class_name),
                              object_type, i, props.get("name")))
    return out


def _matches(name: str | None, patterns: Sequence[str]) -> bool:
    return name is not None and any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass
class AnnotationRegions:
    """Include and exclude regions of one slide (level-0 pixels, shapely or None)."""

    source: Path
    include: object | None = field(repr=False)
    """Union of the include annotations; None when there is none."""
    exclude: object | None = field(repr=False)
    """Union of the exclude annotations; None when there is none."""
    n_include: int = 0
    n_exclude: int = 0
    classes_given: bool = False
    """Include classes were named: without such an annotation the region is empty (with the
    default, any class, a file without include annotations leaves the whole slide)."""

    def region(self, width: int, height: int):
        """The tiling region: include (or, without include annotations, the slide unless
        include classes were named) minus exclude, as one geometry."""
        from shapely.geometry import Polygon, box

        if self.include is not None:
            region = self.include
        else:
            region = Polygon() if self.classes_given else box(0, 0, width, height)
        if self.exclude is not None:
            region = region.difference(self.exclude)
        return region

    def record(self) -> dict:
        """What ``tiling.json`` records about them."""
        from rl_benchmarks.utils.io import sha256_file

        return {"path": str(self.source), "sha256": sha256_file(self.source),
                "n_include": self.n_include, "n_exclude": self.n_exclude,
                "include_area_px": None if self.include is None else float(self.include.area),
                "exclude_area_px": None if self.exclude is None else float(self.exclude.area)}


def annotation_regions(
    path: str | os.PathLike,
    include_classes: Sequence[str] | None = None,
    exclude_classes: Sequence[str] = DEFAULT_EXCLUDE,
) -> AnnotationRegions:
    """Read ``path`` and split its annotations: a class matching ``exclude_classes``
    (shell-style patterns, ``Ignore*`` included) excludes; otherwise it includes when
    ``include_classes`` is None (any class, unclassified too) or its class matches one of
    them; other annotations are ignored. With ``include_classes`` named, a file without such
    an annotation gives an empty region (no tile); with None, the whole slide minus the
    exclusions."""
    from shapely import union_all

    anns = read_annotations(path)
    inc, exc = [], []
    for a in anns:
        if _matches(a.class_name, exclude_classes):
            exc.append(a.geometry)
        elif include_classes is None or _matches(a.class_name, include_classes):
            inc.append(a.geometry)
    return AnnotationRegions(Path(path), union_all(inc) if inc else None,
                             union_all(exc) if exc else None, len(inc), len(exc),
                             include_classes is not None)


# --------------------------------------------------------------------------- rasterising


def coverage_raster(geometry, shape: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """Exact fraction (float64 in [0, 1]) of each pixel of an (H, W) grid covered by
    ``geometry`` (level-0 pixels; one grid pixel spans ``scale`` = (sx, sy) level-0 px).

    The signed-area ("cover and area") accumulation of font rasterisers: every polygon edge
    is cut at the grid lines, each piece adds its signed height to its cell's cover and the
    part of the cell right of it to the cell's area; the running sum along each row is then
    the exact covered area. Holes are oriented opposite to shells, so they subtract.
    """
    import shapely

    H, W = int(shape[0]), int(shape[1])
    out = np.zeros((H, W), np.float64)
    if geometry is None or geometry.is_empty or H == 0 or W == 0:
        return out
    g = shapely.orient_polygons(scale_geometry(geometry, (1.0 / scale[0], 1.0 / scale[1])))
    rings = []
    for poly in getattr(g, "geoms", [g]):
        if poly.geom_type != "Polygon":
            continue
        rings += [np.asarray(r.coords, np.float64) for r in (poly.exterior, *poly.interiors)]
    if not rings:
        return out
    seg = np.concatenate([np.concatenate([r[:-1], r[1:]], 1) for r in rings])  # x0 y0 x1 y1
    x0, y0, x1, y1 = seg.T
    ts = [np.zeros(len(seg)), np.ones(len(seg))]
    ids = [np.arange(len(seg)), np.arange(len(seg))]
    for a, b in ((x0, x1), (y0, y1)):
        lo, hi = np.ceil(np.minimum(a, b)), np.floor(np.maximum(a, b))
        n = np.where((b != a) & (hi >= lo), hi - lo + 1, 0).astype(np.int64)
        if n.sum():
            e = np.repeat(np.arange(len(seg)), n)
            k = lo[e] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
            ts.append((k - a[e]) / (b[e] - a[e]))
            ids.append(e)
    t, e = np.concatenate(ts), np.concatenate(ids)
    order = np.lexsort((t, e))
    t, e = t[order], e[order]
    same = e[1:] == e[:-1]
    ta, tb, e = t[:-1][same], t[1:][same], e[:-1][same]
    keep = tb > ta
    ta, tb, e = ta[keep], tb[keep], e[keep]
    xa, ya = x0[e] + ta * (x1[e] - x0[e]), y0[e] + ta * (y1[e] - y0[e])
    xb, yb = x0[e] + tb * (x1[e] - x0[e]), y0[e] + tb * (y1[e] - y0[e])
    dy = yb - ya
    xm, ym = 0.5 * (xa + xb), 0.5 * (ya + yb)
    i = np.floor(ym).astype(np.int64)
    j = np.floor(xm).astype(np.int64)
    ok = (dy != 0) & (i >= 0) & (i < H) & (j < W)
    i, j, dy, xm = i[ok], j[ok], dy[ok], xm[ok]
    left = j < 0  # left of the grid: covers the whole row from column 0
    frac = np.where(left, 1.0, j + 1 - xm)
    j = np.maximum(j, 0)
    cover = np.zeros((H, W + 1), np.float64)
    area = np.zeros((H, W), np.float64)
    np.add.at(cover, (i, j + 1), dy)
    np.add.at(area, (i, j), dy * frac)
    acc = np.cumsum(cover, axis=1)[:, :W] + area
    # shapely orients shells counter-clockwise in x-right/y-up terms; y grows downwards here
    return np.clip(-acc if acc.sum() < 0 else acc, 0.0, 1.0)


# --------------------------------------------------------------------------- per slide


def annotation_table(source: str | os.PathLike) -> dict[str, Path]:
    """slide name -> GeoJSON path, from a folder (``<slide file name>.geojson``,
    ``<slide stem>.geojson`` or ``.json``) or a CSV with ``slide_id`` and ``path`` columns
    (relative paths against the CSV's folder). Keys are as found (the caller matches a
    slide by its file name, then its stem)."""
    import csv

    src = Path(source).expanduser()
    if src.is_dir():
        return {p.name[: -len(p.suffix)]: p for p in sorted(src.iterdir())
                if p.is_file() and p.suffix.lower() in (".geojson", ".json")}
    if src.suffix.lower() == ".csv" and src.is_file():
        with open(src, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            col = next((c for c in ("path", "geojson", "annotation_path") if c in cols), None)
            if "slide_id" not in cols or col is None:
                raise ValueError(f"{src}: annotations CSV needs 'slide_id' and 'path' columns; "
                                 f"columns are {cols}")
            out = {}
            for line, row in enumerate(reader, start=2):
                sid, value = (row.get("slide_id") or "").strip(), (row.get(col) or "").strip()
                if not sid or not value:
                    raise ValueError(f"{src}: line {line}: empty slide_id or {col}")
                p = Path(value).expanduser()
                out[sid] = p if p.is_absolute() else src.parent / p
            return out
    raise ValueError(f"annotations={src}: not a folder of GeoJSON files or a CSV "
                     "(slide_id, path)")


def annotations_for(table: dict[str, Path], slide: Path) -> Path | None:
    """The GeoJSON of ``slide`` in ``table``: by file name (``a.svs``), then by stem (``a``)."""
    for key in (slide.name, slide.stem, slide.name.split(".", 1)[0]):
        if key in table:
            return table[key]
    return None

