"""DeepZoom geometry: levels, the level chosen for a target mpp, the tile grid, and which
level-0 pixels a ``coords.npy`` row ``[dz_level, col, row]`` covers.

Why: coordinates are those of ``DeepZoomGenerator(slide, tile_size, overlap=0,
limit_bounds=False)`` (docs/protocol.md). Tiling, heatmaps, the demo's planted signal and
ground-truth checks must all put a tile exactly where ``get_tile(level, (col, row))`` reads
it, without opening the slide; this module is the one place that re-does OpenSlide's
arithmetic in numpy (tests compare it with OpenSlide's ``DeepZoomGenerator``):

* DeepZoom level ``L-1`` is level 0 of the slide; each level below halves the one above,
  sizes rounded up, down to 1×1 (level 0). The downsample of level ``l`` is
  ``2**(L-1-l)`` and its mpp ``mpp0 * 2**(L-1-l)``.
* Tile ``(col, row)`` of level ``l`` starts at level-0 pixel ``(col, row) * tile_size *
  downsample``; border tiles are cut at the level's (hence the slide's) edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LevelChoice",
    "choose_level",
    "deepzoom_dimensions",
    "deepzoom_level_count",
    "grid_coords",
    "level_downsample",
    "tile_boxes_level0",
    "tile_extents_level0",
    "tile_grid",
]


def deepzoom_dimensions(width: int, height: int) -> list[tuple[int, int]]:
    """Sizes ``(width, height)`` of the DeepZoom levels, level 0 (1×1) first, full
    resolution last (OpenSlide's ``DeepZoomGenerator.level_dimensions``)."""
    dims = [(int(width), int(height))]
    while dims[-1][0] > 1 or dims[-1][1] > 1:
        w, h = dims[-1]
        dims.append((max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))))
    return dims[::-1]


def deepzoom_level_count(width: int, height: int) -> int:
    """Number of DeepZoom levels of a ``width``×``height`` slide (``dz.level_count``)."""
    return len(deepzoom_dimensions(width, height))


def level_downsample(level: int, level_count: int) -> int:
    """Level-0 pixels per pixel of DeepZoom ``level`` (a power of two)."""
    return 2 ** (int(level_count) - 1 - int(level))


@dataclass(frozen=True)
class LevelChoice:
    """The DeepZoom level chosen for a target mpp."""

    level: int
    level_count: int
    downsample: int
    """Level-0 pixels per pixel of this level (a power of two)."""
    mpp: float
    """mpp of this level."""
    size: tuple[int, int]
    """(width, height) of this level."""


def choose_level(
    width: int, height: int, mpp0: float, target_mpp: float, mpp_tolerance: float = 0.2
) -> LevelChoice:
    """DeepZoom level whose mpp is nearest ``target_mpp`` (the finer one on a tie).

    Raises ValueError when that level's mpp is more than ``mpp_tolerance`` (relative) away:
    tiles at the wrong magnification would silently change what the extractor sees.
    """
    if not (target_mpp > 0):
        raise ValueError(f"target_mpp={target_mpp}: must be positive")
    if not (mpp_tolerance >= 0):
        raise ValueError(f"mpp_tolerance={mpp_tolerance}: must be >= 0")
    dims = deepzoom_dimensions(width, height)
    n = len(dims)
    mpps = [mpp0 * level_downsample(lvl, n) for lvl in range(n)]
    best = min(range(n), key=lambda lvl: (abs(mpps[lvl] - target_mpp), -lvl))
    rel = abs(mpps[best] - target_mpp) / target_mpp
    if rel > mpp_tolerance:
        raise ValueError(
            f"no DeepZoom level within {mpp_tolerance:.0%} of target_mpp={target_mpp} "
            f"(slide mpp {mpp0:.4g}; nearest level {best} has mpp {mpps[best]:.4g}, "
            f"{rel:.0%} off); change target_mpp or mpp_tolerance"
        )
    return LevelChoice(best, n, level_downsample(best, n), mpps[best], dims[best])


def tile_grid(size: tuple[int, int], tile_size: int) -> tuple[int, int]:
    """(cols, rows) of the DeepZoom tile grid of a level of ``size`` (border tiles included),
    as ``dz.level_tiles``."""
    return math.ceil(size[0] / tile_size), math.ceil(size[1] / tile_size)


def tile_extents_level0(
    index: np.ndarray, tile_size: int, downsample: int, slide_extent: int
) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 ``(start, end)`` (int64) of tiles ``index`` along one axis.

    A tile starts at ``index * tile_size * downsample``; it ends ``tile_size * downsample``
    later, cut at the slide edge. (DeepZoom cuts at the level edge ``ceil(extent /
    downsample)``, whose level-0 extent is never below the slide's, so cutting at the slide
    edge gives the same box.)
    """
    step = np.int64(tile_size) * np.int64(downsample)
    start = np.asarray(index, np.int64) * step
    return start, np.minimum(start + step, np.int64(slide_extent))


def tile_boxes_level0(coords: np.ndarray, tile_size: int, width: int, height: int) -> np.ndarray:
    """Level-0 pixel boxes ``(x0, y0, x1, y1)`` (N, 4) int64 of tiles ``[level, col, row]``.

    The region ``DeepZoomGenerator(slide, tile_size, overlap=0).get_tile(level, (col, row))``
    reads; ValueError when ``coords`` is not (N, 3) or names a level the slide lacks.
    """
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must have shape (N, 3) [level, col, row], got {coords.shape}")
    n_levels = deepzoom_level_count(width, height)
    boxes = np.zeros((len(coords), 4), np.int64)
    for level in np.unique(coords[:, 0]):
        if not 0 <= level < n_levels:
            raise ValueError(
                f"coords level {level} outside the slide's DeepZoom levels 0..{n_levels - 1}"
            )
        sel = coords[:, 0] == level
        ds = level_downsample(int(level), n_levels)
        x0, x1 = tile_extents_level0(coords[sel, 1], tile_size, ds, width)
        y0, y1 = tile_extents_level0(coords[sel, 2], tile_size, ds, height)
        boxes[sel] = np.stack([x0, y0, x1, y1], 1)
    return boxes


def grid_coords(width: int, height: int, tile_size: int, level: int | None = None) -> np.ndarray:
    """All whole tiles of one DeepZoom level as ``(N, 3)`` int64 ``[level, col, row]``
    (row-major).

    ``level`` defaults to the full-resolution DeepZoom level. Partial border tiles are
    left out, as a tiler would.
    """
    dims = deepzoom_dimensions(width, height)
    level = len(dims) - 1 if level is None else int(level)
    if not 0 <= level < len(dims):
        raise ValueError(f"level={level} outside the slide's DeepZoom levels 0..{len(dims) - 1}")
    lw, lh = dims[level]
    rows, cols = np.meshgrid(np.arange(lh // tile_size), np.arange(lw // tile_size), indexing="ij")
    out = np.stack([np.full(rows.size, level), cols.ravel(), rows.ravel()], axis=1)
    return out.astype(np.int64)
