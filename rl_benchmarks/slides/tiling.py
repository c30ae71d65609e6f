"""Raw slides to tissue tile coordinates: ``tile_slide`` (one slide) and ``tile_slides``
(a folder, CSV or list, in parallel, resumable, with ``failures.csv`` and a summary).

Why: the reference ships precomputed ``coords.npy`` files but no way to make them for
one's own slides. Here: open the slide (mpp), read a ~8 µm/px image of it in bounded
memory, detect tissue, choose the DeepZoom level nearest ``target_mpp``, keep the grid
tiles whose tissue fraction is at least ``min_tissue``, and write
``[dz_level, col, row]`` coordinates (docs/protocol.md, "DeepZoom coordinates").
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from rl_benchmarks.slides.geometry import choose_level, tile_grid
from rl_benchmarks.slides.grid import tissue_fractions
from rl_benchmarks.slides.openslide_io import (
    SLIDE_EXTENSIONS,
    MPPToleranceError,
    SlideError,
    SlideInfo,
    SlideReadError,
    open_slide,
)
from rl_benchmarks.slides.tissue import TissueParams, detect_tissue, params_dict
from rl_benchmarks.utils.io import save_npy, write_json, write_text

COORDS_FILE = "coords.npy"
QC_FILE = "qc.png"
RECORD_FILE = "tiling.json"
FAILURES_FILE = "failures.csv"
SUMMARY_FILE = "tiling_summary.json"
TISSUE_GEOJSON_FILE = "tissue.geojson"

_CHUNK = 4096  # read the mask image in chunks of at most this many level pixels per side


@dataclass(frozen=True)
class TilingParams:
    """What decides a slide's tiles: the one list of tiling settings, with their defaults.

    Why one dataclass: ``tile_slide``, ``tile_slides`` and the skip check of finished
    slides (``tiling.json`` ``params``) must agree on the same keys and defaults. Values are
    checked and normalised (ints/floats) when built; a bad value is a ValueError naming the
    field. :meth:`as_dict` is the JSON form recorded as ``params``.
    """

    tile_size: int = 224
    """Tile side in pixels of the chosen DeepZoom level."""
    target_mpp: float = 0.5
    """Wanted µm/px of the tiles; the nearest DeepZoom level is used."""
    min_tissue: float = 0.6
    """Keep a tile when at least this fraction of it is tissue (0 keeps every tile)."""
    default_mpp: float | None = None
    """mpp used for a slide whose file gives none (None: such a slide fails)."""
    mpp_tolerance: float = 0.2
    """Largest relative gap between ``target_mpp`` and the chosen level's mpp."""
    mask_mpp: float = 8.0
    """µm/px of the image the tissue is detected on."""

    def __post_init__(self) -> None:
        def real(v: object) -> bool:
            return (not isinstance(v, bool) and isinstance(v, (int, float, np.number))
                    and math.isfinite(v))

        checks = {
            "tile_size": (lambda v: real(v) and int(v) == v and v > 0,
                          "must be a positive integer", int),
            "target_mpp": (lambda v: real(v) and v > 0, "must be a positive number", float),
            "min_tissue": (lambda v: real(v) and 0 <= v <= 1, "must be a number in [0, 1]",
                           float),
            "default_mpp": (lambda v: v is None or (real(v) and v > 0),
                            "must be a positive number or None", float),
            "mpp_tolerance": (lambda v: real(v) and v >= 0, "must be a number >= 0", float),
            "mask_mpp": (lambda v: real(v) and v > 0, "must be a positive number", float),
        }
        for name, (ok, what, cast) in checks.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"TilingParams.{name}={value!r}: {what}")
            if value is not None:
                object.__setattr__(self, name, cast(value))

    @classmethod
    def build(cls, params: TilingParams | None = None, **overrides: object) -> TilingParams:
        """``params`` (default: the defaults) with the ``overrides`` that are not None.

        This is how the functions' keyword arguments (``tile_slide(path, tile_size=256)``)
        become a :class:`TilingParams`; an unknown keyword is a TypeError.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"TilingParams has no field(s) {unknown}; fields are {sorted(names)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(params, **given) if params is not None else cls(**given)

    def as_dict(self) -> dict:
        """JSON-able dict (the ``params`` of ``tiling.json`` and ``tiling_summary.json``)."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Low-resolution image for tissue detection


def mask_mpp_for(info: SlideInfo, mask_mpp: float = 8.0, max_megapixels: float = 4.0) -> float:
    """``mask_mpp``, raised (up to 2x, i.e. 16 µm/px by default) when the mask image would
    have more than ``max_megapixels`` (keeps detection time and memory bounded)."""
    w0, h0 = info.dimensions
    mp = w0 * h0 * (info.mpp / mask_mpp) ** 2 / 1e6
    if mp <= max_megapixels:
        return mask_mpp
    return min(2.0 * mask_mpp, mask_mpp * float(np.sqrt(mp / max_megapixels)))


def read_mask_image(
    info: SlideInfo, mask_mpp: float = 8.0
) -> tuple[np.ndarray, np.ndarray, tuple[float, float], float, int]:
    """Read the slide at about ``mask_mpp`` µm/px in bounded memory.

    Uses the coarsest pyramid level not coarser than 1.5 × ``mask_mpp`` and
    box-averages it by an integer factor, chunk by chunk. Returns ``(rgb, valid,
    (sx, sy), mpp, level)``: RGB uint8 composited on white, ``valid`` = scanned pixels
    (OpenSlide alpha), level-0 pixels per mask pixel, the mask mpp and the level used.
    """
    mpps = info.level_mpps
    candidates = [i for i, m in enumerate(mpps) if m <= 1.5 * mask_mpp]
    level = max(candidates, key=lambda i: mpps[i]) if candidates else 0
    f = max(1, int(round(mask_mpp / mpps[level])))
    lw, lh = info.level_dimensions[level]
    ow, oh = math.ceil(lw / f), math.ceil(lh / f)
    rgb = np.empty((oh, ow, 3), np.uint8)
    valid = np.empty((oh, ow), bool)
    ds = info.level_downsamples[level]
    chunk = max(f, (_CHUNK // f) * f)
    slide = info.slide
    for y in range(0, lh, chunk):
        for x in range(0, lw, chunk):
            cw, ch = min(chunk, lw - x), min(chunk, lh - y)
            try:
                region = slide.read_region(  # type: ignore[attr-defined]
                    (int(x * ds), int(y * ds)), level, (cw, ch))
            except Exception as err:
                raise SlideReadError(
                    info.path, f"reading level {level} at {(x, y)}: {err}"
                ) from err
            a = np.asarray(region)
            alpha = a[..., 3:4].astype(np.float32) / 255.0
            px = a[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
            px = np.concatenate([px, alpha * 255.0], axis=-1)
            bh, bw = math.ceil(ch / f), math.ceil(cw / f)
            if ch % f or cw % f:
                px = np.pad(px, ((0, bh * f - ch), (0, bw * f - cw), (0, 0)), mode="edge")
            red = px.reshape(bh, f, bw, f, 4).mean(axis=(1, 3))
            oy, ox = y // f, x // f
            rgb[oy : oy + bh, ox : ox + bw] = np.clip(red[..., :3] + 0.5, 0, 255).astype(np.uint8)
            valid[oy : oy + bh, ox : ox + bw] = red[..., 3] >= 127.5
    w0, h0 = info.dimensions
    scale = (w0 / ow if ow else 1.0, h0 / oh if oh else 1.0)
    return rgb, valid, scale, float(mpps[level] * f), level


# --------------------------------------------------------------------------------------------
# One slide


@dataclass
class TilingResult:
    """Tiles of one slide. ``coords`` rows are ``[dz_level, col, row]`` (int64)."""

    slide_path: Path
    coords: np.ndarray
    tissue_fraction: np.ndarray
    level: int
    level_count: int
    downsample: int
    tile_mpp: float
    mpp: float
    mpp_source: str
    vendor: str
    dimensions: tuple[int, int]
    tile_size: int
    target_mpp: float
    min_tissue: float
    grid: tuple[int, int]
    mask: np.ndarray = field(repr=False)
    pen: np.ndarray | None = field(repr=False)
    thumbnail: np.ndarray | None = field(repr=False)
    mask_mpp: float = 8.0
    mask_scale: tuple[float, float] = (1.0, 1.0)
    mask_level: int = 0
    tissue_info: dict = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""
    include: np.ndarray | None = field(default=None, repr=False)
    """Mask-grid coverage (0-1) of the include annotations (None: no include annotation)."""
    exclude: np.ndarray | None = field(default=None, repr=False)
    """Mask-grid coverage (0-1) of the exclude annotations (None: none)."""
    annotations: dict | None = None
    """What the annotations were (file, sha256, counts, classes); None without annotations."""

    @property
    def n_tiles(self) -> int:
        return int(len(self.coords))

    def record(self) -> dict:
        """JSON-able description (written as ``tiling.json`` beside ``coords.npy``)."""
        from rl_benchmarks import __version__

        return {
            "slide": str(self.slide_path),
            "slide_name": self.slide_path.name,
            "status": "ok" if self.n_tiles else "empty",
            "message": self.message,
            "n_tiles": self.n_tiles,
            "coords_format": "[deepzoom_level, col, row]; DeepZoomGenerator(slide, tile_size, "
            "overlap=0, limit_bounds=False)",
            "level": self.level,
            "level_count": self.level_count,
            "downsample": self.downsample,
            "tile_mpp": self.tile_mpp,
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "tile_size": self.tile_size,
            "target_mpp": self.target_mpp,
            "min_tissue": self.min_tissue,
            "grid_cols_rows": list(self.grid),
            "mask_mpp": self.mask_mpp,
            "mask_level": self.mask_level,
            "mask_shape": list(self.mask.shape),
            "tissue": self.tissue_info,
            "annotations": self.annotations,
            "seconds": round(self.seconds, 3),
            "package_version": __version__,
        }


def tile_slide(
    path: str | os.PathLike,
    tile_size: int | None = None,
    target_mpp: float | None = None,
    min_tissue: float | None = None,
    default_mpp: float | None = None,
    mpp_tolerance: float | None = None,
    mask_mpp: float | None = None,
    tissue_params: TissueParams | None = None,
    max_mask_megapixels: float = 4.0,
    params: TilingParams | None = None,
    reader: str | None = None,
    annotations: str | os.PathLike | None = None,
    include_classes: Sequence[str] | None = None,
    exclude_classes: Sequence[str] | None = None,
) -> TilingResult:
    """Detect tissue and return the grid tiles with tissue fraction ≥ ``min_tissue``.

    The tiling settings are ``params`` (default :class:`TilingParams`), with each keyword
    from ``tile_size`` to ``mask_mpp`` that is given (not None) taking precedence; bad
    values are a ValueError naming the field. Tissue is detected on an image at about
    ``mask_mpp`` µm/px (raised up to 2x for slides whose mask would exceed
    ``max_mask_megapixels``). Raises :class:`SlideError` subclasses (one-line messages)
    for unusable slides. A slide without tissue gives 0 tiles and a ``message`` saying why.
    ``reader`` picks the slide backend (None/``auto``: by file, rl_benchmarks/slides/backends.py).

    ``annotations``: a QuPath GeoJSON file (level-0 pixels, :mod:`rl_benchmarks.slides.geojson`).
    Annotations of ``exclude_classes`` (default ``Ignore*``, ``Pen``, ``Artifact``) are
    removed and, when there are annotations of ``include_classes`` (default: any other
    class), only they are tiled: the fraction compared with ``min_tissue`` is then
    area(tile ∩ tissue ∩ include \\ exclude) / tile area (with ``min_tissue=0``: every tile
    touching that region). Bad GeoJSON is a :class:`~rl_benchmarks.slides.geojson.GeoJSONError`.
    """
    t0 = time.perf_counter()
    p = TilingParams.build(
        params, tile_size=tile_size, target_mpp=target_mpp, min_tissue=min_tissue,
        default_mpp=default_mpp, mpp_tolerance=mpp_tolerance, mask_mpp=mask_mpp,
    )
    tile_size, target_mpp, min_tissue = p.tile_size, p.target_mpp, p.min_tissue
    tissue_params = tissue_params or TissueParams()
    with open_slide(path, default_mpp=p.default_mpp, reader=reader) as info:
        try:
            choice = choose_level(*info.dimensions, info.mpp, target_mpp, p.mpp_tolerance)
        except ValueError as err:
            raise MPPToleranceError(info.path, str(err)) from None
        eff_mpp = mask_mpp_for(info, p.mask_mpp, max_mask_megapixels)
        rgb, valid, scale, m_mpp, m_level = read_mask_image(info, eff_mpp)
    det = detect_tissue(rgb, m_mpp, tissue_params, valid=valid)
    ann = None
    if annotations is not None:
        ann = _annotation_coverage(annotations, include_classes, exclude_classes,
                                   det.mask.shape, scale, info.dimensions)
        frac = tissue_fractions(det.mask * ann["region"], scale, choice, int(tile_size),
                                info.dimensions)
        if min_tissue <= 0:  # every tile touching the annotated region
            frac = tissue_fractions(ann["region"], scale, choice, int(tile_size), info.dimensions)
    else:
        frac = tissue_fractions(det.mask, scale, choice, int(tile_size), info.dimensions)
    rows, cols = np.nonzero(frac >= min_tissue - 1e-9) if min_tissue > 0 else (
        np.nonzero(frac > 0) if ann is not None else np.indices(frac.shape).reshape(2, -1))
    coords = np.column_stack(
        [np.full(len(rows), choice.level, np.int64), cols.astype(np.int64), rows.astype(np.int64)]
    ).reshape(-1, 3)
    kept = frac[rows, cols].astype(np.float32)
    info_d = det.info()
    info_d["params"] = params_dict(tissue_params)
    message = ""
    if len(coords) == 0:
        if not det.mask.any():
            message = "no tissue detected (background only)"
        elif ann is not None:
            message = (f"no tile has a fraction of tissue inside the annotations ({ann['path']}) "
                       f">= min_tissue={min_tissue} (best tile "
                       f"{float(frac.max()) if frac.size else 0.0:.2f})")
        else:
            message = (
                f"no tile has tissue fraction >= min_tissue={min_tissue} "
                f"(tissue covers {info_d['tissue_fraction']:.1%} of the mask image; "
                f"best tile {float(frac.max()) if frac.size else 0.0:.2f})"
            )
    return TilingResult(
        slide_path=Path(path),
        coords=coords,
        tissue_fraction=kept,
        level=choice.level,
        level_count=choice.level_count,
        downsample=choice.downsample,
        tile_mpp=choice.mpp,
        mpp=info.mpp,
        mpp_source=info.mpp_source,
        vendor=info.vendor,
        dimensions=info.dimensions,
        tile_size=int(tile_size),
        target_mpp=float(target_mpp),
        min_tissue=float(min_tissue),
        grid=tile_grid(choice.size, int(tile_size)),
        mask=det.mask,
        pen=det.pen,
        thumbnail=rgb,
        mask_mpp=m_mpp,
        mask_scale=scale,
        mask_level=m_level,
        tissue_info=info_d,
        seconds=time.perf_counter() - t0,
        message=message,
        include=None if ann is None else ann["include"],
        exclude=None if ann is None else ann["exclude"],
        annotations=None if ann is None else ann["record"],
    )


def _annotation_coverage(
    annotations: str | os.PathLike,
    include_classes: Sequence[str] | None,
    exclude_classes: Sequence[str] | None,
    shape: tuple[int, int],
    scale: tuple[float, float],
    dims: tuple[int, int],
) -> dict:
    """Exact coverage on the mask grid of the tiling region (include minus exclude) and of
    the include and exclude annotations (for the QC picture), with the record."""
    from rl_benchmarks.slides.geojson import DEFAULT_EXCLUDE, annotation_regions, coverage_raster

    excl = tuple(DEFAULT_EXCLUDE if exclude_classes is None else exclude_classes)
    incl = None if include_classes is None else tuple(include_classes)
    regions = annotation_regions(annotations, incl, excl)
    record = {**regions.record(), "include_classes": None if incl is None else list(incl),
              "exclude_classes": list(excl)}
    return {
        "path": str(annotations),
        "region": coverage_raster(regions.region(*dims), shape, scale),
        "include": None if regions.include is None else coverage_raster(regions.include, shape, scale),
        "exclude": None if regions.exclude is None else coverage_raster(regions.exclude, shape, scale),
        "record": record,
    }


# --------------------------------------------------------------------------------------------
# Many slides


@dataclass
class TilingSummary:
    """What ``tile_slides`` did; ``ok`` is False when any slide failed."""

    output_dir: Path
    n_slides: int = 0
    n_done: int = 0
    n_skipped: int = 0
    n_empty: int = 0
    n_failed: int = 0
    n_tiles: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    slides: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.n_failed == 0

    def line(self) -> str:
        return (
            f"tiled {self.n_slides} slide(s) in {self.seconds:.1f} s: {self.n_done} done, "
            f"{self.n_skipped} already done, {self.n_empty} without tiles, "
            f"{self.n_failed} failed; {self.n_tiles} tiles"
            + (f" (see {self.output_dir / FAILURES_FILE})" if self.n_failed else "")
        )


def read_slide_table(src: Path) -> list[tuple[Path, dict[str, str]]]:
    """Rows of a slides CSV as (slide path, row): the path from the ``slide_path`` (or
    ``path``/``slide``) column, relative paths resolved against the CSV's folder; the row
    keeps every column (``slide_id``, ``coords_path``, ...) as text."""
    if not src.is_file():
        raise ValueError(f"{src}: CSV file not found")
    with open(src, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        col = next((c for c in ("slide_path", "path", "slide") if c in cols), None)
        if col is None:
            raise ValueError(f"{src}: no 'slide_path' (or 'path') column; columns are {cols}")
        out = []
        for i, row in enumerate(reader, start=2):
            value = (row.get(col) or "").strip()
            if not value:
                raise ValueError(f"{src}: line {i}: empty '{col}'")
            p = Path(value).expanduser()
            out.append((p if p.is_absolute() else src.parent / p, row))
    if not out:
        raise ValueError(f"{src}: no slides listed")
    return out


@dataclass(frozen=True)
class SlideEntry:
    """One listed slide: the path the readers open, the name of its output folder, and
    its CSV row (every column as text; empty for folder and list inputs)."""

    path: Path
    name: str
    row: dict = field(default_factory=dict, compare=False)


def _is_dicom_path(path: Path) -> bool:
    from rl_benchmarks.slides.dicom import dicom_files, is_dicom_file

    return (path.is_dir() and bool(dicom_files(path))) or is_dicom_file(path)


def _entries(paths: list[Path], rows: list[dict] | None = None,
             source: str = "slides") -> list[SlideEntry]:
    """Slide entries of paths (with their CSV rows): DICOM folders and instance files are
    grouped into one entry per series (rl_benchmarks/slides/dicom.py), other paths are
    slides named by their file name. A series listed twice (two of its instances, or its
    folder and a file) is one slide; its rows must then agree."""
    from rl_benchmarks.slides.dicom import list_series

    rows = rows if rows is not None else [{} for _ in paths]
    out: list[SlideEntry] = []
    seen: dict[Path, int] = {}  # DICOM slide path -> index in out
    scanned: dict = {}  # folder -> its DICOM series: each header is read once
    for i, (path, row) in enumerate(zip(paths, rows)):
        if not _is_dicom_path(path):
            out.append(SlideEntry(path, path.name, row))
            continue
        found = list_series([path], scanned)
        if len(found) > 1 and (row.get("slide_id") or "").strip():
            raise ValueError(f"{source}: line {i + 2}: {path} holds {len(found)} DICOM series "
                             f"but one slide_id; list one instance file per series instead")
        for s in found:
            if s.path in seen:
                j = seen[s.path]
                other = {k: v for k, v in out[j].row.items() if k not in ("slide_path", "path", "slide")}
                mine = {k: v for k, v in row.items() if k not in ("slide_path", "path", "slide")}
                if other != mine:
                    raise ValueError(f"{source}: {path} and an earlier row are the same DICOM series "
                                     f"({s.path}) with different columns {other} and {mine}")
                continue
            seen[s.path] = len(out)
            out.append(SlideEntry(s.path, s.name, row))
    return out


def collect_slide_entries(
    slides: str | os.PathLike | Sequence[str | os.PathLike],
) -> list[SlideEntry]:
    """Slides from a folder, a CSV or a list: the one place slide inputs are listed.

    * A folder: its files with a slide extension, and its DICOM-WSI series (the folder's
      own ``.dcm`` instances, and those of its subfolders), one slide per
      ``SeriesInstanceUID``: LABEL, OVERVIEW and THUMBNAIL instances are never slides.
    * A CSV (``slide_path`` or ``path`` column, relative paths resolved against the CSV's
      folder): each row a slide file, a DICOM instance file or a DICOM folder.
    * A list of such paths, or one of them.

    A DICOM series is named by its folder, or by its ContainerIdentifier when its folder
    holds several series (rl_benchmarks/slides/dicom.py)."""
    if isinstance(slides, (str, os.PathLike)):
        src = Path(slides)
        if src.is_dir():
            from rl_benchmarks.slides.dicom import dicom_files

            files = sorted(p for p in src.iterdir() if p.is_file()
                           and p.suffix.lower() in SLIDE_EXTENSIONS and p.suffix.lower() != ".dcm")
            dicom = ([src] if dicom_files(src) else []) + sorted(
                p for p in src.iterdir() if p.is_dir() and dicom_files(p))
            found = _entries(files + dicom, source=str(src))
            if not found:
                raise ValueError(
                    f"{src}: no slide files (extensions {', '.join(SLIDE_EXTENSIONS)}) "
                    "and no DICOM folder"
                )
            return found
        if src.suffix.lower() == ".csv":
            table = read_slide_table(src)
            return _entries([p for p, _ in table], [r for _, r in table], source=str(src))
        if src.exists():
            return _entries([src], source=str(src))
        raise ValueError(f"slides={src}: not a folder, a CSV file or a slide file")
    return _entries([Path(p) for p in slides])


def collect_slides(slides: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Slide paths of :func:`collect_slide_entries` (a DICOM series: its folder, or its
    main instance file when the folder holds several series)."""
    return [e.path for e in collect_slide_entries(slides)]


def reference_slide_dir(
    output_dir: Path, cohort: str, tile_size: int, slide_name: str
) -> Path:
    """``coords_<tile_size>/<cohort>/<slide>`` (TCGA cohorts under ``TCGA/``), see
    docs/protocol.md, "On-disk layout"."""
    sub = Path("TCGA") / cohort if cohort.upper().startswith("TCGA_") else Path(cohort)
    return output_dir / f"coords_{tile_size}" / sub / slide_name


def write_tissue_geojson(result: TilingResult, path: str | os.PathLike) -> Path:
    """``tissue.geojson``: the tissue regions (class ``Tissue``, holes kept) and pen marks
    (class ``Pen``, excluded on re-import) of a tiling as QuPath annotations in level-0
    pixels (:mod:`rl_benchmarks.slides.geojson`)."""
    from rl_benchmarks.slides.geojson import tissue_features, write_geojson

    return write_geojson(path, tissue_features(result.mask, result.mask_scale, result.pen))


def _same_annotations(old: dict | None, want: dict | None) -> bool:
    """Whether a finished slide was tiled with the annotations this run asks for (same
    file content and classes)."""
    if not want:
        return not old
    if not old:
        return False
    from rl_benchmarks.utils.io import sha256_file

    try:
        sha = sha256_file(want["path"])
    except OSError:
        return False  # tile again: the missing file is then reported as the failure
    from rl_benchmarks.slides.geojson import DEFAULT_EXCLUDE

    excl = list(DEFAULT_EXCLUDE if want.get("exclude_classes") is None else want["exclude_classes"])
    incl = want.get("include_classes")
    return (old.get("sha256") == sha and old.get("exclude_classes") == excl
            and old.get("include_classes") == (None if incl is None else list(incl)))


def _tile_job(job: dict) -> dict:
    """Tile one slide and write its files; never raises (returns a status row)."""
    path, out = Path(job["path"]), Path(job["out"])
    kw = job["params"]  # TilingParams.as_dict()
    row = {"slide": str(path), "slide_name": job.get("name", path.name), "out": str(out)}
    rec_path, coords_path = out / RECORD_FILE, out / COORDS_FILE
    if not job["overwrite"] and rec_path.is_file() and coords_path.is_file():
        import json

        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            rec = {}
        same = dict(rec.get("params") or {})
        want = dict(kw)
        if rec.get("mpp_source") != "default_mpp":  # default_mpp did not matter for it
            same.pop("default_mpp", None)
            want.pop("default_mpp", None)
        if same == want and _same_annotations(rec.get("annotations"), job.get("annotations")) \
                and (out / TISSUE_GEOJSON_FILE).is_file():
            row.update(status="skipped", n_tiles=rec.get("n_tiles", 0),
                       previous_status=rec.get("status"), message=rec.get("message", ""))
            return row
    try:
        params = TissueParams(**job["tissue"]) if job["tissue"] else None
        ann = job.get("annotations") or {}
        res = tile_slide(path, tissue_params=params, params=TilingParams(**kw),
                         reader=job.get("reader"), annotations=ann.get("path"),
                         include_classes=ann.get("include_classes"),
                         exclude_classes=ann.get("exclude_classes"))
        save_npy(coords_path, res.coords)
        write_tissue_geojson(res, out / TISSUE_GEOJSON_FILE)
        if job["qc"]:
            from rl_benchmarks.slides.qc import save_qc

            save_qc(res, out / QC_FILE)
        rec = res.record()
        rec["params"] = dict(kw)
        write_json(rec_path, rec)
        row.update(status=rec["status"], n_tiles=res.n_tiles, message=res.message,
                   seconds=round(res.seconds, 3), level=res.level, mpp=res.mpp)
    except SlideError as err:
        row.update(status="failed", error=f"{type(err).__name__}: {err.cause}")
    except Exception as err:  # any other failure of one slide must not stop the others
        row.update(status="failed", error=f"{type(err).__name__}: {err}")
    return row


def tile_slides(
    slides: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike | None,
    tile_size: int | None = None,
    target_mpp: float | None = None,
    min_tissue: float | None = None,
    default_mpp: float | None = None,
    mpp_tolerance: float | None = None,
    mask_mpp: float | None = None,
    tissue_params: TissueParams | None = None,
    num_workers: int = 1,
    qc: bool = True,
    overwrite: bool = False,
    empty_is_failure: bool = True,
    cohort: str | None = None,
    layout: str = "flat",
    progress: bool = True,
    params: TilingParams | None = None,
    data_dir: str | os.PathLike | None = None,
    reader: str | None = None,
    annotations: str | os.PathLike | None = None,
    include_classes: Sequence[str] | None = None,
    exclude_classes: Sequence[str] | None = None,
) -> TilingSummary:
    """Tile many slides; write per-slide files, ``failures.csv`` and a summary.

    Per slide, in ``<output_dir>/<slide file name>/`` (or, with ``layout="reference"``,
    ``<output_dir>/coords_<tile_size>/<cohort>/<slide file name>/``): ``coords.npy``,
    ``qc.png`` and ``tiling.json``. Slides already done with the same parameters are
    skipped. A slide that cannot be tiled is listed in ``failures.csv`` (slide, error)
    and the others go on; so is a slide without tiles when ``empty_is_failure``.
    The tiling settings are ``params`` (default :class:`TilingParams`) with the keywords
    ``tile_size`` ... ``mask_mpp`` that are given (not None) taking precedence, as in
    :func:`tile_slide`; they are checked before any slide is opened. With
    ``layout="reference"`` and no ``output_dir``, the output folder is
    ``<data_dir>/preprocessed/slides_classification/coords`` (``data_dir`` default:
    ``$RLB_DATA_DIR`` / conf.yaml). Slides are listed by :func:`collect_slide_entries`
    (a DICOM-WSI series is one slide, its folder named after it); ``reader`` picks the
    slide backend for every slide (None/``auto``: by file).

    ``annotations``: a folder of QuPath GeoJSON files (``<slide name or stem>.geojson``) or
    a CSV (``slide_id``, ``path``): each slide's annotations restrict its tiles as in
    :func:`tile_slide` (``include_classes``, ``exclude_classes``); a slide without a file is
    tiled on its tissue alone (listed on stderr). Every slide also gets ``tissue.geojson``.
    """
    t0 = time.perf_counter()
    settings = TilingParams.build(
        params, tile_size=tile_size, target_mpp=target_mpp, min_tissue=min_tissue,
        default_mpp=default_mpp, mpp_tolerance=mpp_tolerance, mask_mpp=mask_mpp,
    )
    if layout not in ("flat", "reference"):
        raise ValueError(f"layout={layout!r}: expected 'flat' or 'reference'")
    from rl_benchmarks.slides.backends import check_reader

    reader = check_reader(reader)
    if layout == "reference" and not cohort:
        raise ValueError("layout='reference' needs cohort=<e.g. CAMELYON16_FULL or TCGA_COAD>")
    if output_dir is None or str(output_dir) == "":
        if layout != "reference":
            raise ValueError("output_dir is required (or use layout=reference with data_dir set)")
        from rl_benchmarks.paths import data_dir as data_root

        output_dir = data_root(data_dir) / "preprocessed" / "slides_classification" / "coords"
    output_dir = Path(output_dir)
    entries = collect_slide_entries(slides)
    names: dict[str, Path] = {}
    for e in entries:
        if e.name in names and names[e.name] != e.path:
            raise ValueError(
                f"two slides share the name {e.name!r} ({names[e.name]} and {e.path}); "
                "output folders are named after the slide, rename one"
            )
        names[e.name] = e.path
    recorded = settings.as_dict()
    tissue = params_dict(tissue_params) if tissue_params else None
    ann_table = None
    if annotations is not None and str(annotations) != "":
        from rl_benchmarks.slides.geojson import annotation_table, annotations_for

        ann_table = annotation_table(annotations)
    jobs, unannotated = [], []
    for e in entries:
        out = (reference_slide_dir(output_dir, cohort, settings.tile_size, e.name)
               if layout == "reference" else output_dir / e.name)
        ann = None
        if ann_table is not None:
            found = annotations_for(ann_table, Path(e.name))
            if found is None:
                unannotated.append(e.name)
            else:
                ann = {"path": str(found),
                       "include_classes": None if include_classes is None
                       else [str(c) for c in include_classes],
                       "exclude_classes": None if exclude_classes is None
                       else [str(c) for c in exclude_classes]}
        jobs.append(dict(path=str(e.path), name=e.name, out=str(out), params=recorded,
                         tissue=tissue, qc=qc, overwrite=overwrite, reader=reader,
                         annotations=ann))
    if unannotated:
        print(f"rlbench tile: no annotations in {annotations} for {len(unannotated)} slide(s), "
              f"tiled on tissue alone: {', '.join(unannotated[:10])}"
              + (" ..." if len(unannotated) > 10 else ""), file=sys.stderr)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = _run_jobs(jobs, num_workers, progress)
    summary = TilingSummary(output_dir=output_dir, n_slides=len(jobs))
    for row in rows:
        status = row["status"]
        if status == "failed":
            summary.n_failed += 1
            summary.failures.append((row["slide"], row["error"]))
            continue
        summary.n_tiles += int(row.get("n_tiles", 0))
        empty = status == "empty" or (status == "skipped" and row.get("previous_status") == "empty")
        if empty:
            summary.n_empty += 1
        if empty and empty_is_failure:  # a failure only: never counted as done too
            summary.n_failed += 1
            summary.failures.append((row["slide"], f"NoTissue: {row.get('message', '')}"))
        elif status == "skipped":
            summary.n_skipped += 1
        else:
            summary.n_done += 1
    summary.slides = rows
    summary.seconds = time.perf_counter() - t0
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["slide", "error"])
    writer.writerows(summary.failures)
    write_text(output_dir / FAILURES_FILE, buf.getvalue())
    write_json(output_dir / SUMMARY_FILE, {
        "n_slides": summary.n_slides, "n_done": summary.n_done, "n_skipped": summary.n_skipped,
        "n_empty": summary.n_empty, "n_failed": summary.n_failed, "n_tiles": summary.n_tiles,
        "seconds": round(summary.seconds, 3), "params": recorded, "layout": layout,
        "cohort": cohort, "slides": rows,
    })
    for slide, err in summary.failures:
        print(f"rlbench tile: FAILED {slide}: {err}", file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    return summary


def _run_jobs(jobs: list[dict], num_workers: int, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="tiling", unit="slide", disable=not progress,
               dynamic_ncols=True)
    rows: list[dict] = []
    try:
        if num_workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                rows.append(_tile_job(job))
                bar.update(1)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = mp.get_context(_start_method())
            with ProcessPoolExecutor(min(num_workers, len(jobs)), mp_context=ctx) as pool:
                futures = {pool.submit(_tile_job, job): job for job in jobs}
                for fut in as_completed(futures):
                    try:
                        rows.append(fut.result())
                    except Exception as err:  # worker crashed (e.g. killed)
                        job = futures[fut]
                        rows.append({"slide": job["path"], "slide_name": Path(job["path"]).name,
                                     "status": "failed", "error": f"worker crashed: {err}"})
                    bar.update(1)
    finally:
        bar.close()
    order = {j["path"]: i for i, j in enumerate(jobs)}
    rows.sort(key=lambda r: order.get(r["slide"], 0))
    return rows


def _start_method() -> str:
    """"spawn" (safe with threads), or "fork" when ``__main__`` cannot be re-imported
    (code run from stdin or ``-c``), where spawn would crash."""
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main_file is not None and not os.path.isfile(main_file) and os.name == "posix":
        return "fork"
    return "spawn"
