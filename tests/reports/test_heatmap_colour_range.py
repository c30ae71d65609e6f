"""``rlbench heatmap vmin=… vmax=…``: the documented keys are accepted without ``+``, listed in
``--help``, and fix the colour scale (issue S)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from openslide import OpenSlide
from openslide.deepzoom import DeepZoomGenerator

from rl_benchmarks.cli.main import main as rlbench
from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

TILE = 64


@pytest.fixture(scope="module")
def slide_and_scores(tmp_path_factory):
    """A 256 x 192 px slide, the coords of its level-0 DeepZoom tiles and scores in [0.2, 0.8]."""
    root = tmp_path_factory.mktemp("hm")
    rng = np.random.default_rng(0)
    slide = write_pyramidal_tiff(root / "s.tif", rng.integers(0, 255, (192, 256, 3), np.uint8),
                                 0.5, tile_size=64, compression="deflate")
    with OpenSlide(str(slide)) as osr:
        dz = DeepZoomGenerator(osr, tile_size=TILE, overlap=0)
        level = dz.level_count - 1
        cols, rows = dz.level_tiles[level]
    coords = np.array([[level, c, r] for c in range(cols) for r in range(rows)], np.int64)
    scores = np.linspace(0.2, 0.8, len(coords))
    np.save(root / "coords.npy", coords)
    np.save(root / "scores.npy", scores)
    return root, slide


def _heatmap(root, slide, *extra: str) -> list[str]:
    return ["heatmap", f"slide_path={slide}", f"coords_path={root / 'coords.npy'}",
            f"scores_path={root / 'scores.npy'}", f"tile_size={TILE}", "thumbnail_size=128",
            f"output={root / 'h.png'}", *extra]


def _colour_range(out: str) -> tuple[float, float]:
    match = re.search(r"colour range ([-\d.e]+)\.\.([-\d.e]+);", out)
    assert match, out
    return float(match.group(1)), float(match.group(2))


def test_vmin_vmax_without_plus_fix_the_colour_scale(slide_and_scores, capsys):
    root, slide = slide_and_scores
    assert rlbench(_heatmap(root, slide)) == 0
    out = capsys.readouterr().out
    assert _colour_range(out) == pytest.approx((0.2, 0.8))  # default: the scores' range
    assert "scores 0.2..0.8" in out
    assert rlbench(_heatmap(root, slide, "vmin=0", "vmax=2")) == 0
    out = capsys.readouterr().out
    assert _colour_range(out) == (0.0, 2.0) and "scores 0.2..0.8" in out
    assert rlbench(_heatmap(root, slide, "vmax=1.5")) == 0
    assert _colour_range(capsys.readouterr().out) == pytest.approx((0.2, 1.5))


def test_fixed_range_changes_the_picture(slide_and_scores, capsys):
    from PIL import Image

    root, slide = slide_and_scores
    assert rlbench(_heatmap(root, slide)) == 0
    auto = np.asarray(Image.open(root / "h.png").convert("RGB"), np.int16)
    assert rlbench(_heatmap(root, slide, "vmin=-10", "vmax=10")) == 0
    fixed = np.asarray(Image.open(root / "h.png").convert("RGB"), np.int16)
    assert auto.shape == fixed.shape and np.abs(auto - fixed).max() > 30
    capsys.readouterr()


@pytest.mark.parametrize(("extra", "message"), [
    (["vmin=1", "vmax=0.5"], "vmin=1 must be below vmax=0.5"),
    (["vmin=abc"], "vmin must be a finite number or null, got 'abc'"),
])
def test_bad_colour_range_is_one_line(slide_and_scores, capsys, extra, message):
    root, slide = slide_and_scores
    assert rlbench(_heatmap(root, slide, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_help_lists_vmin_and_vmax(capsys):
    assert rlbench(["heatmap", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("vmin", "vmax"):
        assert re.search(rf"^\s*{key}: null\b", out, re.M), out
