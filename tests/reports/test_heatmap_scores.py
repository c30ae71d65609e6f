"""``compute_tile_scores``: the tile scores ``rlbench heatmap`` draws, from given scores or
from a trained MIL model, with one clear error per bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl_benchmarks.models.slide_models import REFERENCE_MODEL_KWARGS, create_slide_model
from rl_benchmarks.reports.heatmap import HeatmapError, TileScores, compute_tile_scores


@pytest.fixture
def features(tmp_path):
    rng = np.random.default_rng(0)
    coords = np.stack([np.full(10, 5), np.arange(10), np.arange(10) % 3], 1)
    feats = np.concatenate([coords, rng.normal(size=(10, 8))], 1).astype(np.float32)
    np.save(tmp_path / "features.npy", feats)
    return tmp_path / "features.npy", feats


def test_given_scores_take_coords_from_the_features(tmp_path, features):
    path, feats = features
    np.save(tmp_path / "scores.npy", np.arange(10, dtype=np.float32)[:, None])
    got = compute_tile_scores(features_path=path, scores_path=tmp_path / "scores.npy")
    assert isinstance(got, TileScores) and got.label == "tile score"
    np.testing.assert_array_equal(got.coords, feats[:, :3])
    np.testing.assert_array_equal(got.scores, np.arange(10.0))
    assert got.scores.dtype == np.float64 and got.scores.shape == (10,)
    np.save(tmp_path / "coords.npy", feats[::-1, :3])  # coords_path wins over the features
    got = compute_tile_scores(features_path=path, scores_path=tmp_path / "scores.npy",
                              coords_path=tmp_path / "coords.npy")
    np.testing.assert_array_equal(got.coords, feats[::-1, :3])
    with pytest.raises(HeatmapError, match="needs coords_path or features_path"):
        compute_tile_scores(scores_path=tmp_path / "scores.npy")


def test_model_scores_are_the_models_attention(tmp_path, features):
    path, feats = features
    torch.manual_seed(0)
    model = create_slide_model("abmil", in_features=8, out_features=1,
                               **REFERENCE_MODEL_KWARGS["abmil"])
    torch.save(model.state_dict(), tmp_path / "abmil.pt")
    got = compute_tile_scores(features_path=path, model="abmil",
                              state_dict_path=tmp_path / "abmil.pt")
    with torch.no_grad():
        want = model.tile_scores(torch.from_numpy(feats)[None], None)[0].double().numpy()
    np.testing.assert_allclose(got.scores, want, rtol=1e-6)
    assert got.label.startswith("ABMIL attention weight") and got.scores.sum() == pytest.approx(1.0, abs=1e-5)


def test_bad_inputs_are_one_error_naming_the_cause(tmp_path, features):
    path, _ = features
    with pytest.raises(FileNotFoundError, match="missing.npy: features file not found"):
        compute_tile_scores(features_path=tmp_path / "missing.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(HeatmapError, match="objects.npy: not a readable .npy scores file"):
        compute_tile_scores(features_path=path, scores_path=tmp_path / "objects.npy")
    with pytest.raises(HeatmapError, match="state_dict_path is required"):
        compute_tile_scores(features_path=path, model="abmil")
    with pytest.raises(HeatmapError, match="give features_path"):
        compute_tile_scores(model="abmil", state_dict_path=tmp_path / "x.pt")
    torch.save(create_slide_model("abmil", in_features=5, out_features=1).state_dict(),
               tmp_path / "bad.pt")
    with pytest.raises(HeatmapError, match=r"bad.pt: does not fit model abmil .* in_features=8"):
        compute_tile_scores(features_path=path, model="abmil", state_dict_path=tmp_path / "bad.pt")
