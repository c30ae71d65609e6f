"""Tiles straight from slides through coords: pixels equal OpenSlide's DeepZoom tiles, and
a run can train on them (generated pyramidal TIFF; the real slides in tier 2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from testlib.pretrain import tiny_config

from rl_benchmarks.pretraining.data import SlideTiles, read_slides_csv
from rl_benchmarks.pretraining.train import PretrainError, build_tiles, train


def _deepzoom_tile(slide_path, tile_size, level, col, row) -> np.ndarray:
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    dz = DeepZoomGenerator(openslide.OpenSlide(str(slide_path)), tile_size=tile_size, overlap=0)
    return np.asarray(dz.get_tile(level, (col, row)).convert("RGB"))


def _grid_coords(slide_path, tile_size: int, n: int) -> np.ndarray:
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    dz = DeepZoomGenerator(openslide.OpenSlide(str(slide_path)), tile_size=tile_size, overlap=0)
    level = dz.level_count - 1
    cols, rows = dz.level_tiles[level]
    coords = [(level, c, r) for r in range(rows) for c in range(cols)]
    return np.array(coords[:n], dtype=np.int64)


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory):
    from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

    root = tmp_path_factory.mktemp("slide")
    rng = np.random.default_rng(0)
    img = np.clip(np.array([190, 110, 170]) + rng.normal(0, 25, (160, 224, 3)), 0, 255)
    path = write_pyramidal_tiff(root / "slide.tiff", img.astype(np.uint8), mpp=0.5,
                                tile_size=64, compression="deflate")
    coords = _grid_coords(path, 48, 100)
    np.save(root / "coords.npy", coords)
    pd.DataFrame({"slide_path": ["slide.tiff"], "coords_path": ["coords.npy"]}).to_csv(
        root / "slides.csv", index=False)
    return root


def test_slide_tiles_equal_deepzoom(synthetic_slide):
    entries = read_slides_csv(synthetic_slide / "slides.csv")
    tiles = SlideTiles(entries, tile_size=48)
    coords = np.load(synthetic_slide / "coords.npy")
    assert len(tiles) == len(coords) == 5 * 4  # 224x160 px in 48-px tiles
    for k in (0, 4, len(coords) - 1):  # incl. border tiles (zero-padded to 48 px)
        lv, c, r = coords[k]
        ref = _deepzoom_tile(synthetic_slide / "slide.tiff", 48, lv, c, r)
        got = np.asarray(tiles[k])
        assert got.shape == (48, 48, 3)
        np.testing.assert_array_equal(got[: ref.shape[0], : ref.shape[1]], ref)
        assert (got[ref.shape[0]:] == 0).all() and (got[:, ref.shape[1]:] == 0).all()


def test_training_from_slides_csv(tmp_path, synthetic_slide, image_dir):
    cfg = tiny_config(tmp_path / "run", image_dir, max_steps=2,
                      data={"image_dirs": [], "slides_csv": str(synthetic_slide / "slides.csv"),
                            "slide_tile_size": 48, "num_workers": 0})
    summary = train(cfg)
    assert summary["step"] == 2 and np.isfinite(summary["last_loss"])
    both = build_tiles({"image_dirs": [image_dir],
                        "slides": [f"{synthetic_slide}/slide.tiff:{synthetic_slide}/coords.npy"],
                        "slide_tile_size": 48})
    assert len(both) == 8 + 20


def test_bad_slide_inputs_name_the_file(tmp_path, synthetic_slide):
    np.save(tmp_path / "bad.npy", np.zeros((4, 2)))
    with pytest.raises(ValueError, match="bad.npy: expected \\(N, 3\\)"):
        SlideTiles([(synthetic_slide / "slide.tiff", tmp_path / "bad.npy")], 48)
    with pytest.raises(FileNotFoundError, match="nope.svs: slide file does not exist"):
        SlideTiles([(tmp_path / "nope.svs", synthetic_slide / "coords.npy")], 48)
    (tmp_path / "s.csv").write_text("slide,coords\na,b\n")
    with pytest.raises(ValueError, match="s.csv: missing column"):
        read_slides_csv(tmp_path / "s.csv")
    with pytest.raises(PretrainError, match="no data"):
        build_tiles({"image_dirs": [], "slides": []})


def test_real_slides_and_regions(tmp_path, real_data):
    """Tier 2: DeepZoom tiles of CMU-1-Small-Region.svs and tiles cut from region images."""
    slide = real_data / "slides" / "svs" / "CMU-1-Small-Region.svs"
    coords = _grid_coords(slide, 224, 6)
    np.save(tmp_path / "coords.npy", coords)
    tiles = SlideTiles([(slide, tmp_path / "coords.npy")], tile_size=224)
    for k in (0, 5):
        np.testing.assert_array_equal(np.asarray(tiles[k]), _deepzoom_tile(slide, 224, *coords[k]))
    cfg = tiny_config(tmp_path / "run", str(real_data / "images" / "regions"), max_steps=2,
                      data={"tile_size": 224, "min_tissue": 0.3, "num_workers": 0,
                            "slides": [f"{slide}:{tmp_path / 'coords.npy'}"]})
    summary = train(cfg)
    assert summary["step"] == 2 and np.isfinite(summary["last_loss"])
