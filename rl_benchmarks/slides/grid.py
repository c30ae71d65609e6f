"""Tissue fraction of every DeepZoom grid tile (the tiler's keep/drop decision).

Why: a tile is kept when enough of its level-0 footprint is tissue; the footprint is the
one DeepZoom reads (:mod:`rl_benchmarks.slides.geometry`, the single home of the DeepZoom
level/grid arithmetic, whose names are re-exported here for older imports).
"""

from __future__ import annotations

import numpy as np

from rl_benchmarks.slides.geometry import (
    LevelChoice,
    choose_level,
    deepzoom_dimensions,
    tile_extents_level0,
    tile_grid,
)

__all__ = [
    "LevelChoice",
    "choose_level",
    "deepzoom_dimensions",
    "grid_extents_level0",
    "tile_grid",
    "tissue_fractions",
]


def grid_extents_level0(
    choice: LevelChoice, tile_size: int, slide_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Level-0 extents (float64) of all grid tiles of the chosen level: x0 (cols,),
    x1 (cols,), y0 (rows,), y1 (rows,).

    Border tiles end at the slide edge (their padded part is outside the slide).
    """
    cols, rows = tile_grid(choice.size, tile_size)
    x0, x1 = tile_extents_level0(np.arange(cols), tile_size, choice.downsample, slide_size[0])
    y0, y1 = tile_extents_level0(np.arange(rows), tile_size, choice.downsample, slide_size[1])
    return (x0.astype(np.float64), x1.astype(np.float64),
            y0.astype(np.float64), y1.astype(np.float64))


def _integral(sat: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Continuous integral of a piecewise-constant image at fractional (ys × xs) points.

    ``sat`` is the zero-padded summed-area table; the integral is bilinear inside each
    cell, so bilinear interpolation of the table is exact.
    """
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    ys = np.clip(ys, 0, h)
    xs = np.clip(xs, 0, w)
    y0 = np.minimum(np.floor(ys).astype(np.int64), h - 1) if h > 0 else np.zeros_like(ys, int)
    x0 = np.minimum(np.floor(xs).astype(np.int64), w - 1) if w > 0 else np.zeros_like(xs, int)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    y1 = np.minimum(y0 + 1, h)
    x1 = np.minimum(x0 + 1, w)
    a = sat[np.ix_(y0, x0)]
    b = sat[np.ix_(y0, x1)]
    c = sat[np.ix_(y1, x0)]
    d = sat[np.ix_(y1, x1)]
    return a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx


def tissue_fractions(
    mask: np.ndarray,
    mask_scale: tuple[float, float],
    choice: LevelChoice,
    tile_size: int,
    slide_size: tuple[int, int],
) -> np.ndarray:
    """Tissue fraction of every grid tile, shape (rows, cols), float64 in [0, 1].

    ``mask_scale`` = level-0 pixels per mask pixel along (x, y). The fraction is the
    exact area-weighted mean of the mask over the tile's level-0 footprint divided by
    the full ``tile_size²`` area, so the zero padding of border tiles counts as
    background.
    """
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), axis=0), axis=1)
    x0, x1, y0, y1 = grid_extents_level0(choice, tile_size, slide_size)
    sx, sy = mask_scale
    xs = np.concatenate([x0, x1]) / sx
    ys = np.concatenate([y0, y1]) / sy
    integ = _integral(sat, ys, xs)
    nr, nc = len(y0), len(x0)
    a = integ[:nr, :nc]
    b = integ[:nr, nc:]
    c = integ[nr:, :nc]
    d = integ[nr:, nc:]
    area_mask_px = (tile_size * choice.downsample) ** 2 / (sx * sy)
    return np.clip((d - b - c + a) / area_mask_px, 0.0, 1.0)
