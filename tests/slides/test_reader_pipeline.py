from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from openslide import OpenSlide
from openslide.deepzoom import DeepZoomGenerator

from rl_benchmarks.cli.main import run
from rl_benchmarks.slides.reader import SlideTileDataset, TileReader
from rl_benchmarks.slides.synthetic import write_pyramidal_tiff
from rl_benchmarks.slides.tiling import tile_slides
from rl_benchmarks.slides.tissue import detect_tissue


def _dz_padded(dz, level, col, row, size):
    t = np.asarray(dz.get_tile(level, (col, row)).convert("RGB"))
    out = np.zeros((size, size, 3), np.uint8)
    out[: t.shape[0], : t.shape[1]] = t
    return out


def test_reader_equals_deepzoom_including_padded_border_tiles(layout_slide):
    dz = DeepZoomGenerator(OpenSlide(str(layout_slide)), tile_size=224, overlap=0)
    reader = TileReader(layout_slide, 224)
    for level in (dz.level_count - 1, dz.level_count - 2, dz.level_count - 4):
        cols, rows = dz.level_tiles[level]
        for col, row in [(0, 0), (cols - 1, rows - 1), (cols // 2, rows - 1), (cols - 1, 0)]:
            got = reader.read(level, col, row)
            assert got.shape == (224, 224, 3) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, _dz_padded(dz, level, col, row, 224))
    with pytest.raises(ValueError, match="invalid tile"):
        reader.read(dz.level_count - 1, 999, 0)


def test_dataset_in_dataloader_workers(layout_slide):
    coords = np.array([[11, c, r] for c in range(4) for r in range(3)])
    ds = SlideTileDataset(layout_slide, coords, 224)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    batches = list(loader)
    x = torch.cat(batches)
    assert x.shape == (12, 3, 224, 224) and x.dtype == torch.uint8
    dz = DeepZoomGenerator(OpenSlide(str(layout_slide)), tile_size=224, overlap=0)
    for i, (lvl, c, r) in enumerate(coords):
        ref = torch.from_numpy(_dz_padded(dz, lvl, c, r, 224)).permute(2, 0, 1)
        assert torch.equal(x[i], ref)
    with pytest.raises(ValueError, match="coords must be"):
        SlideTileDataset(layout_slide, np.zeros((3, 4)), 224)


def test_pen_marks_are_excluded_from_tissue():
    rng = np.random.default_rng(0)
    img = np.full((300, 400, 3), 240, np.uint8)
    img[50:250, 50:350] = (210, 130, 180)  # tissue
    img = np.clip(img.astype(int) + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
    strokes = {"blue": (30, 60, 190), "green": (30, 140, 90), "red": (225, 40, 60),
               "black": (15, 10, 12)}
    truth = {}
    for i, (name, color) in enumerate(strokes.items()):
        m = np.zeros(img.shape[:2], bool)
        m[70 + 45 * i : 80 + 45 * i, 20:380] = True  # crosses tissue and background
        img[m] = color
        truth[name] = m
    res = detect_tissue(img, mpp=8.0)
    for name, m in truth.items():
        assert not res.mask[m].any(), name
    clean = np.zeros(img.shape[:2], bool)
    clean[230:245, 60:340] = True  # tissue far from strokes
    assert res.mask[clean].mean() > 0.95


def _write_folder(tmp_path, layout_slide):
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "good.tiff").symlink_to(layout_slide)
    (folder / "broken.tif").write_text("not a slide")
    write_pyramidal_tiff(folder / "nompp.tiff", np.full((500, 500, 3), 240, np.uint8), None)
    return folder


def test_tile_slides_folder_failures_and_resume(tmp_path, layout_slide):
    folder = _write_folder(tmp_path, layout_slide)
    out = tmp_path / "out"
    s = tile_slides(folder, out, progress=False)
    assert not s.ok and s.n_slides == 3 and s.n_failed == 2
    coords = np.load(out / "good.tiff" / "coords.npy")
    assert coords.shape == (8, 3)
    assert (out / "good.tiff" / "qc.png").is_file()
    assert (out / "good.tiff" / "tiling.json").is_file()
    with open(out / "failures.csv") as f:
        rows = {r["slide"].split("/")[-1]: r["error"] for r in csv.DictReader(f)}
    assert set(rows) == {"broken.tif", "nompp.tiff"}
    assert rows["broken.tif"].startswith("NotASlideError")
    assert rows["nompp.tiff"].startswith("MissingMPPError")
    s2 = tile_slides(folder, out, progress=False)
    assert s2.n_skipped == 1 and s2.n_failed == 2


def test_cli_exit_codes_and_reference_layout(tmp_path, layout_slide):
    folder = _write_folder(tmp_path, layout_slide)
    assert run("tile", [f"slides={folder}", f"output_dir={tmp_path / 'o1'}", "progress=false"]) == 1
    csv_path = tmp_path / "one.csv"
    csv_path.write_text(f"slide_path\n{layout_slide}\n")
    ok = run("tile", [f"slides={csv_path}", f"output_dir={tmp_path / 'o2'}", "layout=reference",
                      "cohort=TCGA_COAD", "progress=false", "num_workers=2"])
    assert ok == 0
    ref = tmp_path / "o2" / "coords_224" / "TCGA" / "TCGA_COAD" / layout_slide.name / "coords.npy"
    assert np.load(ref).shape == (8, 3)
    assert run("tile", [f"slides={tmp_path / 'nothing.csv'}", f"output_dir={tmp_path}",
                        "progress=false"]) == 2


def test_hsv_matches_skimage():
    from skimage.color import rgb2hsv

    from rl_benchmarks.slides.tissue import _hsv

    x = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    x[0, :3] = [(0, 0, 0), (255, 255, 255), (128, 128, 128)]
    h, s, v = _hsv(x)
    ref = rgb2hsv(x)
    np.testing.assert_allclose(h / 360.0, ref[..., 0], atol=1e-5)
    np.testing.assert_allclose(s, ref[..., 1], atol=1e-5)
    np.testing.assert_allclose(v, ref[..., 2], atol=1e-6)
