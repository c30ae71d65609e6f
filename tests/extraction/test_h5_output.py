"""``extract-slides output_format=h5|both``: a TRIDENT-layout ``features.h5`` that round-trips
to the same matrix as ``features.npy``, with the same resume rules."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from openslide import OpenSlide
from openslide.deepzoom import DeepZoomGenerator

from rl_benchmarks.cli.main import run
from rl_benchmarks.datasets.h5_features import deepzoom_mapping, read_h5
from rl_benchmarks.utils.features import read_feature_matrix

TINY = ["feature_extractor.pretrained=false", "+feature_extractor.depth=1",
        "+feature_extractor.embed_dim=32", "+feature_extractor.num_heads=2"]


def _extract(slides, out, *extra):
    return run("extract-slides", [f"slides={slides}", f"output_dir={out}", "num_workers=0",
                                  "batch_size=8", "progress=false", *TINY, *extra])


@pytest.mark.slow
def test_output_format_both_round_trips_and_h5_matches_deepzoom(slide_dir, tmp_path):
    out = tmp_path / "both"
    assert _extract(slide_dir, out, "output_format=both") == 0
    for name in ("a.tif", "b.tif", "c.tif"):
        npy = np.load(out / name / "features.npy")
        with h5py.File(out / name / "features.h5", "r") as f:  # TRIDENT's layout, read raw
            feats, coords = f["features"][()], f["coords"][()]
            attrs = dict(f["coords"].attrs)
        np.testing.assert_array_equal(feats, npy[:, 3:])
        assert coords.shape == (len(npy), 2) and coords.dtype == np.int64
        # level-0 (x, y) = the top-left pixel DeepZoom reads for [level, col, row]
        dz = DeepZoomGenerator(OpenSlide(str(slide_dir / name)), 224, 0)
        for (level, col, row), (x, y) in zip(npy[:, :3].astype(int), coords):
            (ax, ay), _, _ = dz.get_tile_coordinates(int(level), (int(col), int(row)))
            assert (x, y) == (ax, ay)
        assert attrs["patch_size"] == 224 and attrs["overlap"] == 0
        assert attrs["patch_size_level0"] == 224 * 2 ** (dz.level_count - 1 - int(npy[0, 0]))
        # read back through the one reader: the same (N, 3+D) matrix, exactly
        h5 = read_h5(out / name / "features.h5")
        assert deepzoom_mapping(h5).exact
        np.testing.assert_array_equal(read_feature_matrix(out / name / "features.h5"), npy)


def test_output_format_h5_only_and_resume_considers_the_requested_files(slide_dir, tmp_path):
    out = tmp_path / "h5"
    assert _extract(slide_dir, out, "output_format=h5") == 0
    assert (out / "a.tif" / "features.h5").is_file()
    assert not (out / "a.tif" / "features.npy").exists()
    assert (out / "a.tif" / "tissue.geojson").is_file()  # tiled on the fly, as rlbench tile
    mtime = (out / "a.tif" / "features.h5").stat().st_mtime_ns
    assert _extract(slide_dir, out, "output_format=h5") == 0  # all done: skipped
    assert (out / "a.tif" / "features.h5").stat().st_mtime_ns == mtime
    # npy now requested: same settings, but features.npy is missing, so it is made
    assert _extract(slide_dir, out, "output_format=npy") == 0
    npy = np.load(out / "a.tif" / "features.npy")
    np.testing.assert_array_equal(read_feature_matrix(out / "a.tif" / "features.h5"), npy)


def test_bad_output_format_is_one_line_and_exit_2(slide_dir, tmp_path, capsys):
    from rl_benchmarks.cli.main import main

    assert main(["extract-slides", f"slides={slide_dir}", f"output_dir={tmp_path / 'x'}",
                 "num_workers=0", "progress=false", *TINY, "output_format=zarr"]) == 2
    err = capsys.readouterr().err
    assert "output_format" in err and "zarr" in err
    assert not (tmp_path / "x" / "a.tif").exists()
