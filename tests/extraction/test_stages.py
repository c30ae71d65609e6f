"""The extraction stages (rl_benchmarks.extraction.stages): which slides a config names,
its settings, and that run_slides / run_tiles give what the lower-level functions give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from rl_benchmarks.cli.main import compose
from rl_benchmarks.extraction import stages
from rl_benchmarks.extraction.slides import SlideInput

TINY_ARGS = ["feature_extractor.pretrained=false", "+feature_extractor.depth=1",
             "+feature_extractor.embed_dim=32", "+feature_extractor.num_heads=2"]


def _slides_cfg(*overrides: str):
    return compose("extract-slides", ["num_workers=0", "batch_size=8", "progress=false",
                                      *TINY_ARGS, *overrides])


def _fake_slides(folder: Path, names=("x.svs", "y.svs")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")  # listing goes by extension; nothing opens them
    return folder


def test_slide_selection_errors_name_the_missing_key(tmp_path):
    folder = _fake_slides(tmp_path / "slides")
    with pytest.raises(stages.SlideSelectionError, match=r"^give slides=<folder or CSV> or "
                       r"slide_dataset=<cohort>$"):
        stages.slides_and_output(_slides_cfg(f"output_dir={tmp_path}"), "x", 224)
    with pytest.raises(stages.SlideSelectionError, match=r"^give output_dir=<folder>$"):
        stages.slides_and_output(_slides_cfg(f"slides={folder}"), "x", 224)
    csv = tmp_path / "cohort.csv"
    csv.write_text(f"slide_path\n{folder / 'x.svs'}\n")
    both = _slides_cfg(f"slides={folder}", "slide_dataset=csv", f"slide_dataset.cohort={csv}",
                       f"output_dir={tmp_path}")
    with pytest.raises(stages.SlideSelectionError, match="not both"):
        stages.slides_and_output(both, "x", 224)
    # a CSV cohort alone: its slides, and no default output folder
    only = _slides_cfg("slide_dataset=csv", f"slide_dataset.cohort={csv}")
    with pytest.raises(stages.SlideSelectionError, match="give output_dir"):
        stages.slides_and_output(only, "x", 224)
    slides, out = stages.slides_and_output(
        _slides_cfg("slide_dataset=csv", f"slide_dataset.cohort={csv}",
                    f"output_dir={tmp_path / 'o'}"), "x", 224)
    assert slides == [SlideInput(folder / "x.svs", "x.svs", None)] and out == tmp_path / "o"


def test_coords_dir_attaches_rlbench_tile_coords(tmp_path):
    folder = _fake_slides(tmp_path / "slides")
    coords_dir = tmp_path / "tiles"
    (coords_dir / "x.svs").mkdir(parents=True)
    np.save(coords_dir / "x.svs" / "coords.npy", np.zeros((1, 3), np.int64))
    slides, out = stages.slides_and_output(
        _slides_cfg(f"slides={folder}", f"output_dir={tmp_path / 'out'}",
                    f"coords_dir={coords_dir}"), "x", 224)
    assert out == tmp_path / "out"
    assert {s.slide_id: s.coords_path for s in slides} == {
        "x.svs": coords_dir / "x.svs" / "coords.npy", "y.svs": None}


def test_settings_and_weights_path_short_form(tmp_path):
    cfg = _slides_cfg("n_tiles=7", "tile_size=auto", "float16=true")
    settings = stages.settings_from_config(cfg)
    assert (settings.n_tiles, settings.tile_size, settings.float16) == (7, None, True)
    assert stages.settings_from_config(cfg, tile_size=256).tile_size == 256
    bad = OmegaConf.merge(cfg, {"batch_size": 0})
    with pytest.raises(ValueError, match="^batch_size must be a positive integer, got 0$"):
        stages.settings_from_config(bad)

    cfg = _slides_cfg(f"weights_path={tmp_path / 'w.pth'}")
    stages.apply_weights_path(cfg)
    assert cfg.feature_extractor.weights_path == str(tmp_path / "w.pth")
    clash = _slides_cfg(f"weights_path={tmp_path / 'w.pth'}",
                        f"feature_extractor.weights_path={tmp_path / 'v.pth'}")
    with pytest.raises(ValueError, match="differ: give one of them"):
        stages.apply_weights_path(clash)


def test_run_slides_equals_run_slide_extraction(slide_dir, tmp_path):
    """run_slides(cfg) = run_slide_extraction with the extractor and settings it names
    (same seed, same files), records the composed config, and calls on_start once."""
    from rl_benchmarks.extraction.slides import list_slides, run_slide_extraction
    from rl_benchmarks.models.feature_extractors import create_extractor
    from rl_benchmarks.utils.seed import set_seed

    slide = slide_dir / "a.tif"
    cfg = _slides_cfg(f"slides=[{slide}]", f"output_dir={tmp_path / 'stage'}", "n_tiles=5")
    started = []
    summary = stages.run_slides(cfg, on_start=lambda ext, out: started.append((ext.name, out)))
    assert started == [("iBOTViTBasePANCAN", tmp_path / "stage")]
    assert summary.done == ["a.tif"] and not summary.failed and summary.n_tiles == 5

    set_seed(0)
    extractor = create_extractor("iBOTViTBasePANCAN", pretrained=False, depth=1, embed_dim=32,
                                 num_heads=2)
    settings = stages.settings_from_config(cfg, tile_size=224)
    run_slide_extraction(list_slides([str(slide)]), tmp_path / "direct", extractor, settings)
    np.testing.assert_array_equal(np.load(tmp_path / "stage" / "a.tif" / "features.npy"),
                                  np.load(tmp_path / "direct" / "a.tif" / "features.npy"))
    params = json.loads((tmp_path / "stage" / "extraction_params.json").read_text())
    assert params["config"] == OmegaConf.to_container(cfg, resolve=True)
    assert params["tile_size"] == 224 and params["n_tiles"] == 5


def test_run_slides_refuses_a_tile_size_other_than_the_extractors(slide_dir, tmp_path):
    cfg = _slides_cfg(f"slides={slide_dir}", f"output_dir={tmp_path}", "tile_size=256")
    with pytest.raises(ValueError, match="tile_size=256 differs from iBOTViTBasePANCAN's 224"):
        stages.run_slides(cfg)
    assert not any(tmp_path.iterdir())


def test_run_tiles_default_output_under_data_dir(tmp_path):
    """Without output_dir the features go to <data_dir>/preprocessed/tiles_classification/
    features/<extractor>/<folder name>, one row per image in the frame's order."""
    from PIL import Image

    from rl_benchmarks.datasets import load_image_folder

    root = tmp_path / "my_tiles"
    rng = np.random.default_rng(0)
    for cls in ("A", "B"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(
                root / cls / f"{cls}{i}.png")
    cfg = compose("extract-tiles", ["tile_dataset=image_folder", f"tile_dataset.root={root}",
                                    f"data_dir={tmp_path / 'data'}", "num_workers=0",
                                    "batch_size=3", "progress=false", *TINY_ARGS])
    started = []
    summary = stages.run_tiles(cfg, on_start=lambda ext, out: started.append(out))
    expected = (tmp_path / "data" / "preprocessed" / "tiles_classification" / "features"
                / "iBOTViTBasePANCAN" / "my_tiles")
    assert started == [expected] and Path(summary.output_dir) == expected
    feats = np.load(expected / "tile_features.npy")
    ids = np.load(expected / "tile_ids.npy")
    assert feats.shape == (4, 32) and summary.n_tiles == 4
    assert ids.tolist() == load_image_folder(root)["image_id"].astype(str).tolist()
