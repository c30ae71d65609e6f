"""Heatmap localisation (issue Q item 3): tile-level AUROC of tile scores against lesion masks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from rl_benchmarks.reports.localisation import (
    LESION_THRESHOLD,
    localisation_auroc,
    localisation_from_cv,
    localisation_html,
    localisation_table,
    slide_localisation,
    summarise_localisation,
    tile_labels,
)
from rl_benchmarks.slides.annotations import LesionTruth
from rl_benchmarks.slides.geometry import grid_coords, tile_boxes_level0

W, H, TS, DS = 640, 480, 32, 8


def _mask(seed: int) -> np.ndarray:
    """A blobby lesion mask at 1/8 of a 640x480 slide."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(H // DS, W // DS)), 4)
    return field > np.quantile(field, 0.8)


def _brute_fraction(mask: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Share of each tile inside the mask, from the mask blown up to level-0 pixels."""
    full = np.kron(mask.astype(float), np.ones((DS, DS)))
    return np.array([full[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in tile_boxes_level0(coords, TS, W, H)])


def test_auroc_equals_scikit_learn_on_hand_built_scores_and_masks():
    coords = grid_coords(W, H, TS)
    for seed in range(3):
        mask = _mask(seed)
        scores = np.random.default_rng(10 + seed).normal(size=len(coords)) + 2 * _brute_fraction(mask, coords)
        got = slide_localisation(scores, coords, LesionTruth(mask=mask, mask_downsample=DS), TS, (W, H))
        labels = _brute_fraction(mask, coords) >= LESION_THRESHOLD
        assert 0 < labels.sum() < len(labels)
        assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert got["n_lesion_tiles"] == labels.sum() and got["n_tiles"] == len(coords)
        np.testing.assert_allclose(got["fraction"], _brute_fraction(mask, coords), atol=1e-12)


def test_the_mask_itself_scores_one_and_random_scores_about_half():
    coords = grid_coords(W, H, TS)
    mask = _mask(0)
    truth = LesionTruth(mask=mask, mask_downsample=DS)
    frac = truth.tile_fraction(coords, TS, W, H)
    assert slide_localisation(frac, coords, truth, TS, (W, H))["auroc"] == 1.0
    assert slide_localisation(-frac, coords, truth, TS, (W, H))["auroc"] == 0.0
    rng = np.random.default_rng(0)
    labels = tile_labels(frac)
    random = [localisation_auroc(rng.normal(size=len(coords)), labels)[0] for _ in range(200)]
    assert np.mean(random) == pytest.approx(0.5, abs=0.02)
    assert 0.3 < min(random) and max(random) < 0.7


def test_one_label_only_is_nan_with_a_reason():
    auroc, note = localisation_auroc(np.arange(5.0), np.zeros(5))
    assert math.isnan(auroc) and "no lesion tile" in note
    auroc, note = localisation_auroc(np.arange(5.0), np.ones(5))
    assert math.isnan(auroc) and "every tile" in note
    # NaN scores (padding) are left out.
    auroc, _ = localisation_auroc(np.array([0.0, 1.0, np.nan, 2.0]), np.array([0, 1, 0, 1]))
    assert auroc == 1.0
    np.testing.assert_array_equal(tile_labels([0.0, 0.24, 0.25, 1.0]), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="threshold"):
        tile_labels([0.5], threshold=0)


def test_summary_is_the_mean_over_positive_slides_per_model_and_fold(tmp_path):
    slides = pd.DataFrame({
        "experiment": ["e1"] * 5 + ["e2"] * 2, "model": ["ABMIL"] * 5 + ["Chowder"] * 2,
        "fold": ["f1", "f1", "f2", "f2", "f2", "f1", "f2"],
        "slide_id": list("abcdefg"), "n_tiles": 10, "n_lesion_tiles": [3, 0, 2, 4, 1, 3, 3],
        "auroc": [0.9, np.nan, 0.7, 0.8, 1.0, 0.2, 0.4], "note": "", "truth": "",
    })
    summary = summarise_localisation(slides).set_index(["experiment", "fold"])
    assert summary.loc[("e1", "f1"), "mean_auroc"] == pytest.approx(0.9)
    assert summary.loc[("e1", "f1"), "n_undefined"] == 1 and summary.loc[("e1", "f1"), "n_slides"] == 1
    assert summary.loc[("e1", "f2"), "mean_auroc"] == pytest.approx(np.mean([0.7, 0.8, 1.0]))
    assert summary.loc[("e1", "all"), "mean_auroc"] == pytest.approx(np.mean([0.9, 0.7, 0.8, 1.0]))
    assert summary.loc[("e2", "all"), "mean_auroc"] == pytest.approx(0.3)
    (tmp_path / "x").mkdir()
    slides.to_csv(tmp_path / "x" / "localisation.csv", index=False)
    table = localisation_table(tmp_path)
    assert list(table["mean tile AUROC"]) == ["0.900", "0.833", "0.850", "0.200", "0.400", "0.300"]
    page = localisation_html(tmp_path)
    assert 'id="localisation-table"' in page and "25%" in page and "0.850" in page
    assert page.count("</tr>") == 7  # the header and six rows
    assert localisation_html(tmp_path / "x" / "nothing.csv") == ""


def test_localisation_from_a_cv_run_uses_each_slides_fold_model(small_cohort, tmp_path):
    """A hand-set Chowder with a negative-slope head, on features that mark the planted tiles:
    every positive slide localises perfectly (oriented scores); negative slides are NaN."""
    import torch

    from rl_benchmarks.models.slide_models import create_slide_model
    from rl_benchmarks.utils.io import write_csv

    frame = small_cohort.frame
    coords = grid_coords(768, 768, 64)
    rng = np.random.default_rng(0)
    slides, truths, exp = {}, {}, tmp_path / "exp"
    for row in frame.itertuples():
        planted = small_cohort.tile_labels(row.slide_id, coords, 64, min_fraction=LESION_THRESHOLD)
        x = np.stack([planted.astype(float), rng.normal(0, 0.01, len(coords))], 1)
        np.save(tmp_path / f"{row.slide_id}.npy", np.concatenate([coords, x], 1).astype(np.float32))
        slides[row.slide_id] = (row.slide_path, tmp_path / f"{row.slide_id}.npy")
        truths[row.slide_id] = LesionTruth(mask=small_cohort.planted_mask(row.slide_id),
                                           mask_downsample=small_cohort.mask_downsample, source="planted")
    net = create_slide_model("chowder", in_features=2, out_features=1, n_top=2, n_bottom=2)
    with torch.no_grad():
        net.score_model.hidden_layers[0].weight.copy_(torch.tensor([[-3.0, 0.0]]))
        net.mlp[0].weight.fill_(-1.0)
    for k in (1, 2):
        key = f"repeat_1_split_{k}"
        (exp / "models").mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), exp / "models" / f"{key}.pt")
        part = frame.iloc[(k - 1) * 3: k * 3]
        write_csv(exp / "predictions" / f"{key}.csv", pd.DataFrame({
            "fold": key, "slide_id": part.slide_id, "patient_id": part.patient_id,
            "label": part.label, "score": 0.0}), index=False)
    got = localisation_from_cv(exp, slides, truths, "chowder", model_kwargs={"n_top": 2, "n_bottom": 2},
                               use_reference_kwargs=False, tile_size=64, experiment="demo")
    assert len(got) == 6 and set(got["fold"]) == {"repeat_1_split_1", "repeat_1_split_2"}
    pos = got[got.slide_id.isin(frame.slide_id[frame.label == 1])]
    neg = got[~got.slide_id.isin(pos.slide_id)]
    assert len(pos) == 3 and (pos["auroc"] == 1.0).all()
    assert neg["auroc"].isna().all() and (neg["note"].str.contains("no lesion")).all()
    summary = summarise_localisation(got)
    assert summary.loc[summary.fold == "all", "mean_auroc"].item() == 1.0
