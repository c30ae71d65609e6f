"""QC picture of a tiling: thumbnail, tissue-mask contour (green), pen (yellow tint),
annotations when given (include regions outlined in magenta, exclude regions tinted red),
and the kept tiles (blue outlines, or a blue tint when tiles are only a few pixels wide).

Why: a glance at the picture tells whether background, pen or debris became tiles.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from rl_benchmarks.utils.io import atomic_open

if TYPE_CHECKING:  # pragma: no cover
    from rl_benchmarks.slides.tiling import TilingResult

TISSUE_CONTOUR = (0, 170, 0)
TILE_COLOR = (30, 80, 255)
PEN_COLOR = (255, 230, 0)
INCLUDE_COLOR = (220, 0, 220)
EXCLUDE_COLOR = (230, 30, 30)


def render_qc(result: TilingResult, max_side: int = 1600) -> np.ndarray:
    """The QC picture as an (H, W, 3) uint8 array (upscaled so tiles are visible)."""
    from scipy import ndimage as ndi

    thumb = result.thumbnail
    if thumb is None or thumb.size == 0:
        return np.full((8, 8, 3), 255, np.uint8)
    h, w = thumb.shape[:2]
    k = max(1, min(8, max_side // max(h, w, 1)))
    img = np.repeat(np.repeat(thumb, k, axis=0), k, axis=1).astype(np.float32)
    mask = np.repeat(np.repeat(result.mask, k, axis=0), k, axis=1)
    if result.pen is not None and result.pen.any():
        pen = np.repeat(np.repeat(result.pen, k, axis=0), k, axis=1)
        img[pen] = img[pen] * 0.5 + np.asarray(PEN_COLOR, np.float32) * 0.5
    exclude = getattr(result, "exclude", None)
    if exclude is not None:
        ex = np.repeat(np.repeat(exclude >= 0.5, k, axis=0), k, axis=1)
        img[ex] = img[ex] * 0.5 + np.asarray(EXCLUDE_COLOR, np.float32) * 0.5
    # Kept tiles, in QC-picture pixels.
    sx, sy = result.mask_scale
    step = result.tile_size * result.downsample
    tw, th = step / sx * k, step / sy * k
    outline = tw >= 6 and th >= 6
    H, W = img.shape[:2]
    tiles = np.zeros((H, W), bool)
    for _, col, row in result.coords:
        x0, y0 = int(round(col * tw)), int(round(row * th))
        x1, y1 = min(W, int(round((col + 1) * tw))), min(H, int(round((row + 1) * th)))
        if x1 <= x0 or y1 <= y0:
            continue
        if outline:
            tiles[y0:y1, x0] = tiles[y0:y1, x1 - 1] = True
            tiles[y0, x0:x1] = tiles[y1 - 1, x0:x1] = True
        else:
            tiles[y0:y1, x0:x1] = True
    color = np.asarray(TILE_COLOR, np.float32)
    if outline:
        img[tiles] = color
    else:
        img[tiles] = img[tiles] * 0.55 + color * 0.45
    border = mask & ~ndi.binary_erosion(mask, iterations=max(1, k // 2 + 1), border_value=0)
    img[border] = np.asarray(TISSUE_CONTOUR, np.float32)
    include = getattr(result, "include", None)
    if include is not None:
        inc = np.repeat(np.repeat(include >= 0.5, k, axis=0), k, axis=1)
        edge = inc & ~ndi.binary_erosion(inc, iterations=max(1, k // 2 + 1), border_value=0)
        img[edge] = np.asarray(INCLUDE_COLOR, np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def save_qc(result: TilingResult, path: str | os.PathLike, max_side: int = 1600) -> None:
    """Write the QC picture as PNG (atomically)."""
    from PIL import Image

    with atomic_open(path, "wb") as f:
        Image.fromarray(render_qc(result, max_side)).save(f, format="PNG")
