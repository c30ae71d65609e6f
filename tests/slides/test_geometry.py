"""DeepZoom geometry (``slides/geometry.py``) against OpenSlide's own ``DeepZoomGenerator``,
and the one-home contract: tiling and heatmaps use the same functions."""

from __future__ import annotations

import numpy as np
import pytest
from testlib.slides import fake_deepzoom  # noqa: E402

from rl_benchmarks.slides import geometry
from rl_benchmarks.slides.geometry import (
    choose_level,
    deepzoom_dimensions,
    deepzoom_level_count,
    grid_coords,
    tile_boxes_level0,
    tile_grid,
)
from rl_benchmarks.slides.grid import grid_extents_level0

SIZES = [(1, 1), (5, 3), (700, 452), (1000, 7), (2220, 2967), (4443, 3567)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("tile_size", [64, 100, 224])
def test_levels_grid_and_boxes_equal_openslide(size, tile_size):
    dz = fake_deepzoom(size, tile_size)
    assert deepzoom_dimensions(*size) == list(dz.level_dimensions)
    assert deepzoom_level_count(*size) == dz.level_count
    coords = []
    for lvl in range(dz.level_count):
        assert tile_grid(dz.level_dimensions[lvl], tile_size) == dz.level_tiles[lvl]
        cols, rows = dz.level_tiles[lvl]
        picks = {(0, 0), (cols - 1, rows - 1), (cols // 2, rows - 1), (cols - 1, rows // 2)}
        coords += [(lvl, c, r) for c, r in sorted(picks)]
    coords = np.array(coords)
    boxes = tile_boxes_level0(coords, tile_size, *size)
    assert boxes.dtype == np.int64
    for (lvl, c, r), (x0, y0, x1, y1) in zip(coords.tolist(), boxes.tolist()):
        (lx, ly), _, (rw, rh) = dz.get_tile_coordinates(lvl, (c, r))
        tw, th = dz.get_tile_dimensions(lvl, (c, r))
        ds = 2 ** (dz.level_count - 1 - lvl)
        assert (x0, y0) == (lx, ly)
        # the level-0 region DeepZoom reads (rw, rh at slide level 0) ends where our box does
        assert (x1 - x0, y1 - y0) == (rw, rh)
        assert (x1, y1) == (min(lx + tw * ds, size[0]), min(ly + th * ds, size[1]))


def test_grid_extents_of_the_tiler_equal_the_boxes_of_the_heatmap():
    size, tile_size = (4443, 3567), 100
    choice = choose_level(*size, 0.25, 1.0)
    x0, x1, y0, y1 = grid_extents_level0(choice, tile_size, size)
    cols, rows = len(x0), len(y0)
    coords = np.array([(choice.level, c, r) for r in range(rows) for c in range(cols)])
    boxes = tile_boxes_level0(coords, tile_size, *size)
    want = np.stack([np.tile(x0, rows), np.repeat(y0, cols), np.tile(x1, rows),
                     np.repeat(y1, cols)], 1)
    np.testing.assert_array_equal(boxes, want)


def test_grid_coords_whole_tiles_of_a_level():
    dz = fake_deepzoom((700, 452), 64)
    full = grid_coords(700, 452, 64)
    assert full.shape == ((700 // 64) * (452 // 64), 3) and full.dtype == np.int64
    assert (full[:, 0] == dz.level_count - 1).all()
    assert full[:3, 1:].tolist() == [[0, 0], [1, 0], [2, 0]]  # row-major
    lvl = dz.level_count - 3
    w, h = dz.level_dimensions[lvl]
    coarse = grid_coords(700, 452, 64, level=lvl)
    assert len(coarse) == (w // 64) * (h // 64) and (coarse[:, 0] == lvl).all()
    with pytest.raises(ValueError, match="level=99 outside"):
        grid_coords(700, 452, 64, level=99)


def test_bad_coords_are_named_errors():
    with pytest.raises(ValueError, match=r"coords must have shape \(N, 3\)"):
        tile_boxes_level0(np.zeros((2, 2)), 64, 100, 100)
    with pytest.raises(ValueError, match="coords level 9 outside"):
        tile_boxes_level0(np.array([[9, 0, 0]]), 64, 100, 100)


def test_every_user_shares_the_slides_geometry():
    from rl_benchmarks.reports import heatmap
    from rl_benchmarks.slides import grid, tiling

    assert heatmap.tile_boxes_level0 is geometry.tile_boxes_level0
    assert tiling.choose_level is geometry.choose_level and grid.tile_grid is geometry.tile_grid
