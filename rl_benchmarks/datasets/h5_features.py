"""Per-slide features in TRIDENT/CLAM ``.h5`` files: read, convert to DeepZoom coords, write.

Why: users arrive with features that TRIDENT or CLAM already extracted. Those files hold
``features`` (N, D) and ``coords`` (N, 2) = the level-0 pixel ``(x, y)`` of each patch's
top-left corner, with attributes on ``coords`` (TRIDENT: ``patch_size``,
``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``overlap``,
``name``; CLAM patch files: ``patch_size``, ``patch_level``, ``downsample``; CLAM feature
files often carry none). This toolkit's matrices are (N, 3+D) with ``[dz_level, col, row]``
first (docs/protocol.md); :func:`h5_feature_matrix` builds that matrix, so the MIL stack
(which reads only the D feature columns) trains on h5 features unchanged.

Coordinates (docs/interop.md, "h5 coords and DeepZoom coords"): a DeepZoom tile ``(col,
row)`` of a level with downsample ``ds`` covers level-0 pixels from ``(col, row) *
tile_size * ds`` (:mod:`rl_benchmarks.slides.geometry`). So an h5 patch at ``(x, y)`` with
footprint ``s = patch_size_level0`` is DeepZoom tile ``(x / s, y / s)`` of the level with
``ds = s / patch_size``. The mapping is **exact** when ``ds`` is a power of two, every
``x``, ``y`` is a multiple of ``s`` (a grid starting at 0 without overlap) and the
DeepZoom level is known (recorded by our writer, or computed from the slide's size);
otherwise it is **approximate**. The level-0 boxes ``[x, x + s) × [y, y + s)``
(:func:`h5_boxes_level0`) are always exact.

Errors are :class:`H5FeaturesError` (a ``ValueError``): one line naming the file and the
cause (no ``coords``, shapes that disagree, ...).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

H5_SUFFIXES = (".h5", ".hdf5")
"""File suffixes read as h5 feature files."""

H5_FEATURES_NAME = "features.h5"
"""The h5 file ``extract-slides output_format=h5|both`` writes in each slide's folder."""

DEEPZOOM_LEVEL_ATTR = "deepzoom_level"
"""``coords`` attribute our writer adds: the DeepZoom level of the tiles (exact mapping)."""


class H5FeaturesError(ValueError):
    """A bad h5 feature file; ``str(err)`` is one line naming the file and the cause."""


def is_h5(path: str | os.PathLike) -> bool:
    """True when ``path`` names an h5 feature file (by suffix)."""
    return str(path).lower().endswith(H5_SUFFIXES)


def _attrs(node) -> dict:
    """h5 attributes as plain Python values (bytes decoded, numpy scalars unwrapped)."""
    out = {}
    for k, v in node.attrs.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[str(k)] = v
    return out


@dataclass
class H5Features:
    """One slide's h5 features and what its attributes say."""

    path: Path
    features: np.ndarray = field(repr=False)
    """(N, D) float32."""
    coords: np.ndarray = field(repr=False)
    """(N, 2) int64 level-0 ``(x, y)`` of each patch's top-left corner."""
    attrs: dict
    """Attributes of ``coords`` merged over the file's and ``features``' (coords win)."""
    patch_size: int | None
    """Patch side in pixels of the magnification the encoder saw (None: not recorded)."""
    patch_size_level0: int
    """Patch footprint in level-0 pixels."""
    patch_size_level0_source: str
    """Where ``patch_size_level0`` came from: "attrs", "patch_size*downsample" or
    "coords spacing" (inferred: the smallest step between patches)."""

    @property
    def n_tiles(self) -> int:
        return int(len(self.coords))


def _open(path: Path):
    import h5py

    if not path.is_file():
        raise H5FeaturesError(f"{path}: h5 features file not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise H5FeaturesError(f"{path}: not a readable h5 file ({str(exc).splitlines()[0]})") from None


def _datasets(path: Path, f) -> tuple:
    """The ``features`` and ``coords`` datasets, checked: (N, D) and (N, 2) with the same N."""
    import h5py

    names = sorted(k for k in f.keys() if isinstance(f[k], h5py.Dataset))
    for need in ("features", "coords"):
        if need not in f or not isinstance(f[need], h5py.Dataset):
            raise H5FeaturesError(
                f"{path}: no '{need}' dataset (h5 features need 'features' (N, D) and 'coords' "
                f"(N, 2) in level-0 pixels, as TRIDENT and CLAM write them); datasets: {names}")
    feats, coords = f["features"], f["coords"]
    fshape = feats.shape
    if len(fshape) == 3 and fshape[0] == 1:  # some tools keep a leading batch axis
        fshape = fshape[1:]
    if len(fshape) != 2 or fshape[1] < 1:
        raise H5FeaturesError(f"{path}: 'features' must be (N, D), got {feats.shape}")
    cshape = coords.shape
    if len(cshape) == 3 and cshape[0] == 1:
        cshape = cshape[1:]
    if len(cshape) != 2 or cshape[1] != 2:
        raise H5FeaturesError(f"{path}: 'coords' must be (N, 2) level-0 (x, y), got {coords.shape}")
    if fshape[0] != cshape[0]:
        raise H5FeaturesError(
            f"{path}: 'features' has {fshape[0]} rows but 'coords' has {cshape[0]}")
    if fshape[0] == 0:
        raise H5FeaturesError(f"{path}: no tiles (empty 'features')")
    if not np.issubdtype(feats.dtype, np.number) or not np.issubdtype(coords.dtype, np.number):
        raise H5FeaturesError(f"{path}: 'features'/'coords' must be numeric, got "
                              f"{feats.dtype}/{coords.dtype}")
    return feats, coords, (int(fshape[0]), int(fshape[1]))


def h5_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(N, D) of an h5 feature file, checked without reading the matrices."""
    path = Path(path)
    with _open(path) as f:
        return _datasets(path, f)[2]


def _positive_int(value: object) -> int | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(round(v)) if math.isfinite(v) and v > 0 else None


def _infer_step(coords: np.ndarray) -> int | None:
    """Smallest positive gap between distinct x (or y) values: the grid step of a tiling."""
    steps = []
    for axis in (0, 1):
        u = np.unique(coords[:, axis])
        if len(u) > 1:
            steps.append(int(np.diff(u).min()))
    return min(steps) if steps else None


def read_h5(path: str | os.PathLike, patch_size_level0: int | None = None) -> H5Features:
    """Read an h5 feature file (TRIDENT or CLAM layout); ``patch_size_level0`` overrides the
    attributes (CLAM feature files carry none; otherwise it is inferred from the coords)."""
    path = Path(path)
    with _open(path) as f:
        feats_ds, coords_ds, (n, _) = _datasets(path, f)
        attrs = {**_attrs(f), **_attrs(feats_ds), **_attrs(coords_ds)}
        feats = np.asarray(feats_ds[()], dtype=np.float32).reshape(n, -1)
        coords = np.asarray(coords_ds[()]).reshape(n, 2)
    if not np.isfinite(coords).all():
        raise H5FeaturesError(f"{path}: 'coords' holds NaN or inf")
    if np.any(coords != np.round(coords)) or coords.min() < 0:
        raise H5FeaturesError(f"{path}: 'coords' must be non-negative level-0 pixel integers")
    coords = coords.astype(np.int64)
    patch_size = _positive_int(attrs.get("patch_size"))
    source = "attrs"
    psl0 = _positive_int(patch_size_level0) or _positive_int(attrs.get("patch_size_level0"))
    if psl0 is None and patch_size and attrs.get("downsample") is not None:
        ds = np.atleast_1d(np.asarray(attrs["downsample"], dtype=float))
        psl0, source = _positive_int(patch_size * float(ds[0])), "patch_size*downsample"
    if psl0 is None:
        psl0, source = _infer_step(coords), "coords spacing"
    if psl0 is None:
        psl0 = patch_size
        source = "patch_size (one patch, no spacing to infer from)"
    if psl0 is None:
        raise H5FeaturesError(f"{path}: patch footprint unknown (no 'patch_size_level0' or "
                              f"'patch_size' attribute and a single patch); pass patch_size_level0")
    return H5Features(path, feats, coords, attrs, patch_size, psl0, source)


@dataclass(frozen=True)
class DeepZoomMapping:
    """h5 level-0 coords as ``[dz_level, col, row]`` and whether that is exact."""

    coords: np.ndarray
    """(N, 3) float64 ``[dz_level, col, row]``; level -1 when unknown (no slide size)."""
    exact: bool
    why: str
    """Empty when exact; otherwise what makes it approximate."""


def deepzoom_mapping(h5: H5Features, slide_dims: tuple[int, int] | None = None) -> DeepZoomMapping:
    """Map ``h5.coords`` to this toolkit's DeepZoom ``[dz_level, col, row]`` (see module doc).

    ``slide_dims`` (level-0 width, height) gives the DeepZoom level when the file does not
    record it. Columns/rows are ``x / patch_size_level0`` (fractional when off the grid).
    """
    from rl_benchmarks.slides.geometry import deepzoom_level_count

    s = h5.patch_size_level0
    why = []
    cr = h5.coords.astype(np.float64) / s
    if np.any(h5.coords % s):
        why.append(f"coords are not multiples of patch_size_level0={s} (overlap or offset grid)")
    raw = h5.attrs.get(DEEPZOOM_LEVEL_ATTR)
    level = int(raw) if isinstance(raw, (int, float)) and raw >= 0 else None
    ds = s / h5.patch_size if h5.patch_size else None
    if ds is None:
        why.append("patch_size not recorded, DeepZoom downsample unknown")
    elif ds < 1 or abs(math.log2(ds) - round(math.log2(ds))) > 1e-9:
        why.append(f"patch_size_level0/patch_size = {ds:g} is not a power of two (the "
                   "encoder saw resized patches)")
    if level is None:
        if slide_dims is not None and ds is not None and ds >= 1:
            n_levels = deepzoom_level_count(*slide_dims)
            level = n_levels - 1 - int(round(math.log2(ds)))
        else:
            why.append("DeepZoom level unknown (give the slide's size)")
    lvl = np.full(len(cr), -1.0 if level is None else float(level))
    return DeepZoomMapping(np.column_stack([lvl, cr]), not why, "; ".join(why))


def h5_feature_matrix(path: str | os.PathLike, slide_dims: tuple[int, int] | None = None) -> np.ndarray:
    """The (N, 3+D) float32 matrix of an h5 file: ``[dz_level, col, row]`` of
    :func:`deepzoom_mapping`, then the D features (what a ``features.npy`` holds)."""
    h5 = read_h5(path)
    meta = deepzoom_mapping(h5, slide_dims).coords.astype(np.float32)
    return np.concatenate([meta, h5.features], axis=1)


def h5_boxes_level0(h5: H5Features, slide_dims: tuple[int, int] | None = None) -> np.ndarray:
    """Level-0 boxes ``(x0, y0, x1, y1)`` (N, 4) int64 of the patches (exact placement, cut
    at the slide edge when ``slide_dims`` is given)."""
    x0, y0 = h5.coords[:, 0], h5.coords[:, 1]
    x1, y1 = x0 + h5.patch_size_level0, y0 + h5.patch_size_level0
    if slide_dims is not None:
        x1, y1 = np.minimum(x1, slide_dims[0]), np.minimum(y1, slide_dims[1])
    return np.stack([x0, y0, x1, y1], 1).astype(np.int64)


def deepzoom_to_level0(coords: np.ndarray, tile_size: int, slide_dims: tuple[int, int]) -> np.ndarray:
    """``[dz_level, col, row]`` rows -> level-0 ``(x, y)`` (N, 2) int64 of the tiles' top-left
    corners (the inverse used when writing h5)."""
    from rl_benchmarks.slides.geometry import tile_boxes_level0

    coords = np.asarray(coords).astype(np.int64).reshape(-1, 3)
    return tile_boxes_level0(coords, tile_size, *slide_dims)[:, :2]


def write_h5_features(
    path: str | os.PathLike,
    features: np.ndarray,
    coords_level0: np.ndarray,
    attrs: dict,
) -> None:
    """Write a TRIDENT-layout h5 atomically (temporary file, then rename): ``features`` (N, D)
    and ``coords`` (N, 2) int64 level-0 ``(x, y)`` with ``attrs`` on ``coords`` (TRIDENT
    reads ``patch_size``, ``patch_size_level0``, ``level0_magnification``,
    ``target_magnification``, ``overlap``, ``name``)."""
    import h5py

    from rl_benchmarks.utils.io import atomic_open

    features = np.asarray(features)
    coords_level0 = np.asarray(coords_level0, dtype=np.int64)
    if features.ndim != 2 or coords_level0.shape != (len(features), 2):
        raise ValueError(f"{path}: need features (N, D) and coords (N, 2), got "
                         f"{features.shape} and {coords_level0.shape}")
    with atomic_open(path, "w+b") as fh, h5py.File(fh, "w") as f:
        f.create_dataset("features", data=features)
        c = f.create_dataset("coords", data=coords_level0)
        for k, v in attrs.items():
            if v is not None:
                c.attrs[k] = v
