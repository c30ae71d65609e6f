from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from openslide import OpenSlide
from openslide.deepzoom import DeepZoomGenerator
from testlib.slides import fake_deepzoom

from rl_benchmarks.slides import tiling
from rl_benchmarks.slides.grid import choose_level, deepzoom_dimensions, tissue_fractions
from rl_benchmarks.slides.openslide_io import MPPToleranceError, open_slide
from rl_benchmarks.slides.synthetic import write_pyramidal_tiff
from rl_benchmarks.slides.tiling import read_mask_image, tile_slide

from .conftest import EXPECTED


@pytest.mark.parametrize("size", [(1, 1), (16, 16), (2220, 2967), (4443, 3567), (1000, 7)])
def test_deepzoom_dimensions_match_openslide(tmp_path, size):
    dz = fake_deepzoom(size, 224)
    assert deepzoom_dimensions(*size) == list(dz.level_dimensions)


def test_known_layout_gives_exactly_the_expected_coordinates(layout_slide):
    res = tile_slide(layout_slide)
    dz = DeepZoomGenerator(OpenSlide(str(layout_slide)), tile_size=224, overlap=0)
    assert res.level == dz.level_count - 2  # 40x slide: 0.5 mpp is one level below full res
    assert res.tile_mpp == pytest.approx(0.5)
    assert res.coords.dtype == np.int64 and res.coords.shape == (len(EXPECTED), 3)
    assert set(map(tuple, res.coords[:, 1:].tolist())) == EXPECTED
    assert (res.coords[:, 0] == res.level).all()
    assert res.grid == dz.level_tiles[res.level]
    assert (res.tissue_fraction >= 0.6).all()


def test_min_tissue_threshold_moves_the_half_covered_row(layout_slide):
    res = tile_slide(layout_slide, min_tissue=0.4)
    got = set(map(tuple, res.coords[:, 1:].tolist()))
    assert got == EXPECTED | {(c, 4) for c in range(5)}


def test_background_only_slide_gives_zero_tiles_with_message(tmp_path):
    img = np.full((1500, 1200, 3), 238, np.uint8)
    img += np.random.default_rng(0).integers(0, 4, img.shape, dtype=np.uint8)
    path = write_pyramidal_tiff(tmp_path / "bg.tiff", img, mpp=0.25)
    res = tile_slide(path)
    assert res.n_tiles == 0 and res.coords.shape == (0, 3)
    assert "no tissue detected" in res.message


def test_level_choice_20x_40x_and_tolerance():
    n_levels = len(deepzoom_dimensions(100_000, 80_000))
    assert choose_level(100_000, 80_000, 0.25, 0.5).level == n_levels - 2
    c = choose_level(50_000, 40_000, 0.5, 0.5)
    assert c.level == c.level_count - 1 and c.downsample == 1
    c = choose_level(50_000, 40_000, 0.25, 1.0)
    assert c.downsample == 4 and c.mpp == 1.0
    with pytest.raises(ValueError, match="no DeepZoom level within 20%"):
        choose_level(1000, 1000, 0.35, 0.5)


def test_tolerance_error_is_a_slide_error(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "odd.tiff", np.full((600, 600, 3), 240, np.uint8), 0.35)
    with pytest.raises(MPPToleranceError, match="odd.tiff: no DeepZoom level"):
        tile_slide(path)


def test_default_mpp_rescues_slide_without_mpp(layout_slide_nompp):
    with pytest.raises(tiling.SlideError, match="no pixel size"):
        tile_slide(layout_slide_nompp)
    res = tile_slide(layout_slide_nompp, default_mpp=0.25)
    assert res.mpp_source == "default_mpp"
    assert set(map(tuple, res.coords[:, 1:].tolist())) == EXPECTED


def test_tissue_fractions_equal_bruteforce():
    rng = np.random.default_rng(3)
    mask = rng.random((23, 31)) > 0.5
    slide_size = (31 * 8 - 3, 23 * 8 - 5)  # level-0 px; mask pixel = 8 level-0 px
    choice = choose_level(*slide_size, 0.25, 0.5)
    frac = tissue_fractions(mask, (8.0, 8.0), choice, 10, slide_size)
    full = np.kron(mask, np.ones((8, 8)))[: slide_size[1], : slide_size[0]]
    step = 10 * choice.downsample
    for r in range(frac.shape[0]):
        for c in range(frac.shape[1]):
            block = full[r * step : (r + 1) * step, c * step : (c + 1) * step]
            assert frac[r, c] == pytest.approx(block.sum() / step**2, abs=1e-9)


def test_chunked_mask_image_equals_single_read(layout_slide, monkeypatch):
    with open_slide(layout_slide) as info:
        a = read_mask_image(info, 8.0)
        monkeypatch.setattr(tiling, "_CHUNK", 96)
        b = read_mask_image(info, 8.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2:] == b[2:] and a[3] == pytest.approx(8.0)


def test_large_slide_keeps_memory_bounded(tmp_path):
    """A 24,000 x 20,000 px slide: tiling runs in a fresh process under 300 MiB peak RSS
    (VmHWM: ru_maxrss would inherit the parent's peak across exec)."""
    from rl_benchmarks.slides.synthetic import TissueIslands

    isl = TissueIslands.random(20_000, 24_000, n_islands=6, coverage=0.2, seed=5)
    path = write_pyramidal_tiff(tmp_path / "big.tiff", isl, 0.25, shape=(20_000, 24_000))
    code = (
        "import json, re\n"
        "from rl_benchmarks.slides.tiling import tile_slide\n"
        f"r = tile_slide({str(path)!r})\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print(json.dumps([r.n_tiles, int(hwm) / 1024]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n_tiles, rss_mb = json.loads(out.stdout.strip().splitlines()[-1])
    assert n_tiles > 100
    assert rss_mb < 300, rss_mb
