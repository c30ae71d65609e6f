"""Heatmaps that match the slide (issue Q items 3 and 5): the truth outline, the top-k %
overlay, the scores CSV and the localisation AUROC of ``rlbench heatmap``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from rl_benchmarks.cli.main import main as rlbench
from rl_benchmarks.reports.heatmap import draw_heatmap, top_tiles
from rl_benchmarks.slides.annotations import LesionTruth
from rl_benchmarks.slides.geometry import grid_coords, tile_boxes_level0

TS = 64


@pytest.fixture
def positive(small_cohort):
    """A positive slide of the report tests' cohort, its tiles and their planted fractions."""
    row = small_cohort.frame[small_cohort.frame.label == 1].iloc[0]
    coords = grid_coords(768, 768, TS)
    truth = LesionTruth(mask=small_cohort.planted_mask(row.slide_id), mask_downsample=small_cohort.mask_downsample)
    return row, coords, truth, truth.tile_fraction(coords, TS, 768, 768)


def test_top_percent_paints_only_the_top_tiles(positive, tmp_path):
    row, coords, truth, frac = positive
    scores = frac + np.linspace(0, 1e-3, len(frac))  # distinct scores
    hm = draw_heatmap(row.slide_path, coords, scores, tmp_path / "top.png", tile_size=TS,
                      thumbnail_size=192, top_percent=10, truth=truth)
    k = math.ceil(0.1 * len(coords))
    assert hm.n_drawn == k and hm.truth_drawn
    painted = np.unique(hm.overlay[np.isfinite(hm.overlay)])
    np.testing.assert_allclose(np.sort(painted), np.sort(scores)[-k:], rtol=1e-6)
    np.testing.assert_array_equal(np.flatnonzero(top_tiles(scores, 10)), np.sort(np.argsort(-scores)[:k]))
    full = draw_heatmap(row.slide_path, coords, scores, tmp_path / "all.png", tile_size=TS, thumbnail_size=192)
    assert full.n_drawn == len(coords) and not full.truth_drawn
    assert np.isfinite(full.overlay).sum() > np.isfinite(hm.overlay).sum()
    with pytest.raises(ValueError, match="top_percent"):
        top_tiles(scores, 0)


def test_cli_writes_scores_csv_and_localisation(positive, small_cohort, tmp_path, capsys):
    row, coords, truth, frac = positive
    rng = np.random.default_rng(0)
    scores = frac + rng.normal(0, 0.2, len(frac))
    np.save(tmp_path / "coords.npy", coords)
    np.save(tmp_path / "scores.npy", scores)
    mask_path = small_cohort.root / small_cohort.truth.set_index("slide_id").loc[row.slide_id, "mask_path"]
    out = tmp_path / "hm" / "h.png"
    code = rlbench(["heatmap", f"slide_path={row.slide_path}", f"coords_path={tmp_path / 'coords.npy'}",
                    f"scores_path={tmp_path / 'scores.npy'}", f"tile_size={TS}", "thumbnail_size=192",
                    f"output={out}", f"truth_path={mask_path}", "truth_downsample=8", "top_percent=20"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    lines = printed.out.strip().splitlines()
    assert lines[0].startswith("rlbench heatmap: ") and str(out) in lines[0]
    want = roc_auc_score(frac >= 0.25, scores)
    assert f"tile AUROC {want:.4f}" in printed.out
    table = pd.read_csv(out.with_name("h_scores.csv"))
    assert list(table.columns) == ["level", "col", "row", "x0", "y0", "x1", "y1", "score",
                                   "lesion_fraction", "lesion"]
    np.testing.assert_array_equal(table[["x0", "y0", "x1", "y1"]].to_numpy(), tile_boxes_level0(coords, TS, 768, 768))
    np.testing.assert_allclose(table["lesion_fraction"], frac, atol=1e-6)
    np.testing.assert_allclose(table["score"], scores, rtol=1e-5)
    assert (table["lesion"] == (frac >= 0.25)).all()
    # a bad truth file is one line naming it
    (tmp_path / "bad.xml").write_text("<nope")
    code = rlbench(["heatmap", f"slide_path={row.slide_path}", f"coords_path={tmp_path / 'coords.npy'}",
                    f"scores_path={tmp_path / 'scores.npy'}", f"tile_size={TS}", f"output={out}",
                    f"truth_path={tmp_path / 'bad.xml'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bad.xml: not an XML file" in err[0]
