"""DeepZoom tile geometry: which level-0 pixels a ``coords.npy`` row ``[level, col, row]`` covers.

Why: heatmaps and ground-truth checks must put each tile exactly where
``DeepZoomGenerator(slide, tile_size, overlap=0).get_tile(level, (col, row))`` read it,
without opening the slide (OpenSlide's arithmetic, re-done in numpy).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["deepzoom_level_count", "grid_coords", "tile_boxes_level0"]


def deepzoom_level_count(width: int, height: int) -> int:
    """Number of DeepZoom levels of a ``width``×``height`` slide (OpenSlide's rule)."""
    w, h, n = int(width), int(height), 1
    while w > 1 or h > 1:
        w, h, n = max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2)), n + 1
    return n


def grid_coords(width: int, height: int, tile_size: int, level: int | None = None) -> np.ndarray:
    """All whole tiles of one DeepZoom level as ``(N, 3)`` ``[level, col, row]`` (row-major).

    ``level`` defaults to the full-resolution DeepZoom level. Partial edge tiles are left
    out, as a tiler would.
    """
    n_levels = deepzoom_level_count(width, height)
    level = n_levels - 1 if level is None else int(level)
    ds = 2 ** (n_levels - 1 - level)
    lw, lh = math.ceil(width / ds), math.ceil(height / ds)
    rows, cols = np.meshgrid(np.arange(lh // tile_size), np.arange(lw // tile_size), indexing="ij")
    out = np.stack([np.full(rows.size, level), cols.ravel(), rows.ravel()], axis=1)
    return out.astype(np.int64)


def tile_boxes_level0(
    coords: np.ndarray, tile_size: int, width: int, height: int
) -> np.ndarray:
    """Level-0 pixel boxes ``(x0, y0, x1, y1)`` of DeepZoom tiles ``[level, col, row]``.

    Same arithmetic as ``DeepZoomGenerator(slide, tile_size, overlap=0)``: level ``l`` is
    the slide downsampled by ``2**(L-1-l)`` (sizes rounded up at each halving), and edge
    tiles are cut at the level border.
    """
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must have shape (N, 3) [level, col, row], got {coords.shape}")
    n_levels = deepzoom_level_count(width, height)
    boxes = np.zeros((len(coords), 4), np.int64)
    for level in np.unique(coords[:, 0]):
        if not 0 <= level < n_levels:
            raise ValueError(f"coords level {level} outside the slide's DeepZoom levels 0..{n_levels - 1}")
        k = n_levels - 1 - int(level)
        lw, lh = width, height
        for _ in range(k):
            lw, lh = math.ceil(lw / 2), math.ceil(lh / 2)
        sel = coords[:, 0] == level
        col, row = coords[sel, 1].astype(np.int64), coords[sel, 2].astype(np.int64)
        x0, y0 = col * tile_size, row * tile_size
        x1, y1 = np.minimum(x0 + tile_size, lw), np.minimum(y0 + tile_size, lh)
        ds = 2**k
        boxes[sel] = np.stack([x0 * ds, y0 * ds, np.minimum(x1 * ds, width), np.minimum(y1 * ds, height)], 1)
    return boxes
