"""DeepZoom level choice and the tile grid (reference §3.2 convention).

Why: coordinates are ``[dz_level, col, row]`` of ``DeepZoomGenerator(slide, tile_size,
overlap=0, limit_bounds=False)``. DeepZoom level ``L-1`` is level 0 of the slide and
each level below halves it (sizes rounded up), so the mpp of level ``l`` is
``mpp0 * 2**(L-1-l)``. The level nearest the target mpp is used; it is an error when
its mpp is more than ``mpp_tolerance`` (relative) away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def deepzoom_dimensions(width: int, height: int) -> list[tuple[int, int]]:
    """Sizes of the DeepZoom levels, level 0 (1×1) first, full resolution last."""
    dims = [(int(width), int(height))]
    while dims[-1][0] > 1 or dims[-1][1] > 1:
        w, h = dims[-1]
        dims.append((max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))))
    return dims[::-1]


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
    """DeepZoom level whose mpp is nearest ``target_mpp``; ValueError if too far."""
    if not (target_mpp > 0):
        raise ValueError(f"target_mpp={target_mpp}: must be positive")
    if not (mpp_tolerance >= 0):
        raise ValueError(f"mpp_tolerance={mpp_tolerance}: must be >= 0")
    dims = deepzoom_dimensions(width, height)
    n = len(dims)
    mpps = [mpp0 * 2 ** (n - 1 - lvl) for lvl in range(n)]
    best = min(range(n), key=lambda lvl: (abs(mpps[lvl] - target_mpp), -lvl))
    rel = abs(mpps[best] - target_mpp) / target_mpp
    if rel > mpp_tolerance:
        raise ValueError(
            f"no DeepZoom level within {mpp_tolerance:.0%} of target_mpp={target_mpp} "
            f"(slide mpp {mpp0:.4g}; nearest level {best} has mpp {mpps[best]:.4g}, "
            f"{rel:.0%} off); change target_mpp or mpp_tolerance"
        )
    return LevelChoice(best, n, 2 ** (n - 1 - best), mpps[best], dims[best])


def tile_grid(size: tuple[int, int], tile_size: int) -> tuple[int, int]:
    """(cols, rows) of the DeepZoom tile grid of a level of ``size`` (border tiles included)."""
    return math.ceil(size[0] / tile_size), math.ceil(size[1] / tile_size)


def tile_boxes_level0(
    choice: LevelChoice, tile_size: int, slide_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Level-0 extents of all grid tiles: x0 (cols,), x1 (cols,), y0 (rows,), y1 (rows,).

    Border tiles end at the slide edge (their padded part is outside the slide).
    """
    cols, rows = tile_grid(choice.size, tile_size)
    d = choice.downsample
    x0 = np.arange(cols, dtype=np.float64) * tile_size * d
    y0 = np.arange(rows, dtype=np.float64) * tile_size * d
    x1 = np.minimum(x0 + tile_size * d, slide_size[0])
    y1 = np.minimum(y0 + tile_size * d, slide_size[1])
    return x0, x1, y0, y1


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
    x0, x1, y0, y1 = tile_boxes_level0(choice, tile_size, slide_size)
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
