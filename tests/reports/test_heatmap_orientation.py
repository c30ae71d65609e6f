"""Oriented tile scores (issue Q item 4): a tile score points the way of the slide's
prediction for the class drawn, even when the model's head learned a negative slope."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from rl_benchmarks.models.slide_models import create_slide_model
from rl_benchmarks.reports.heatmap import (
    compute_tile_scores,
    model_tile_scores,
    oriented_tile_scores,
    score_slope,
)


def _slide(n: int = 40, n_tumour: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A hand-built slide: feature 0 is 1 on tumour tiles, 0 elsewhere (plus a little noise)."""
    rng = np.random.default_rng(seed)
    tumour = np.zeros(n, bool)
    tumour[rng.choice(n, n_tumour, replace=False)] = True
    x = np.stack([tumour.astype(np.float32), rng.normal(0, 0.05, n).astype(np.float32)], 1)
    coords = np.stack([np.full(n, 9), np.arange(n) % 8, np.arange(n) // 8], 1).astype(np.float32)
    return np.concatenate([coords, x], 1), tumour


def _inverted_chowder() -> torch.nn.Module:
    """Chowder whose tile scorer gives tumour tiles LOW scores and whose head has a NEGATIVE
    slope: the slide logit still rises with tumour, but the raw tile scores are inverted."""
    net = create_slide_model("chowder", in_features=2, out_features=1, n_top=2, n_bottom=2)
    with torch.no_grad():
        net.score_model.hidden_layers[0].weight.copy_(torch.tensor([[-3.0, 1.0]]))  # + distinct noise
        net.score_model.hidden_layers[0].bias.zero_()
        net.mlp[0].weight.copy_(torch.tensor([[-1.0, -1.0, -1.0, -1.0]]))
        net.mlp[0].bias.zero_()
    return net.eval()


def test_chowder_with_a_negative_slope_head_is_oriented():
    net = _inverted_chowder()
    feats, tumour = _slide()
    normal, _ = _slide(n_tumour=0, seed=1)
    with torch.no_grad():  # the model is a valid tumour detector: tumour raises the logit
        logit_tumour = float(net(torch.from_numpy(feats)[None]))
        logit_normal = float(net(torch.from_numpy(normal)[None]))
    assert logit_tumour > logit_normal + 1.0
    raw = model_tile_scores(net, feats)
    assert roc_auc_score(tumour, raw) == pytest.approx(0.0)  # the raw heatmap is inverted
    got = oriented_tile_scores(net, feats)
    assert got.sign == -1 and got.slope < 0
    assert roc_auc_score(tumour, got.scores) == pytest.approx(1.0)
    assert got.scores[tumour].min() > got.scores[~tumour].max()
    np.testing.assert_allclose(got.raw, raw)
    assert "sign flipped" in got.label and "oriented" in got.label


def test_slope_equals_a_finite_difference():
    """score_slope is d(logit)/d(shift of every tile score), checked against central differences."""
    torch.manual_seed(0)
    net = create_slide_model("chowder", in_features=2, out_features=1, n_top=3, n_bottom=3,
                             mlp_hidden=[4]).eval()  # a non-linear (sigmoid) head
    feats, _ = _slide(seed=3)
    eps = 1e-3

    def logit_at(t: float) -> float:
        handle = net.score_model.register_forward_hook(lambda m, i, o: o + t)
        try:
            with torch.no_grad():
                return float(net(torch.from_numpy(feats).double()[None].float()))
        finally:
            handle.remove()

    want = (logit_at(eps) - logit_at(-eps)) / (2 * eps)
    assert score_slope(net, feats) == pytest.approx(want, rel=1e-2, abs=1e-5)


def test_positive_slope_and_attention_are_left_as_they_are():
    net = _inverted_chowder()
    with torch.no_grad():
        net.score_model.hidden_layers[0].weight.mul_(-1)  # tumour scores high ...
        net.mlp[0].weight.mul_(-1)  # ... and the head's slope is positive
    feats, tumour = _slide()
    got = oriented_tile_scores(net, feats)
    assert got.sign == 1 and got.slope > 0
    np.testing.assert_allclose(got.scores, model_tile_scores(net, feats))
    assert roc_auc_score(tumour, got.scores) == pytest.approx(1.0)

    torch.manual_seed(0)
    abmil = create_slide_model("abmil", in_features=2, out_features=1).eval()
    att = oriented_tile_scores(abmil, feats)
    assert att.sign == 1 and np.isnan(att.slope) and "attention" in att.label
    assert att.scores.sum() == pytest.approx(1.0, abs=1e-5)


def test_dsmil_max_branch_slope_is_one_half_in_mean_mode():
    """DSMIL's logit is (s_max + s_bag) / 2 and s_max is the top tile score: slope 1/2."""
    torch.manual_seed(0)
    net = create_slide_model("dsmil", in_features=2, out_features=1).eval()
    feats, _ = _slide()
    assert score_slope(net, feats) == pytest.approx(0.5, abs=1e-6)


def test_compute_tile_scores_orients_by_default(tmp_path):
    net = _inverted_chowder()
    feats, tumour = _slide()
    np.save(tmp_path / "f.npy", feats)
    torch.save(net.state_dict(), tmp_path / "c.pt")
    kw = dict(features_path=tmp_path / "f.npy", model="chowder", state_dict_path=tmp_path / "c.pt",
              model_kwargs={"n_top": 2, "n_bottom": 2}, use_reference_kwargs=False)
    oriented = compute_tile_scores(**kw)
    assert roc_auc_score(tumour, oriented.scores) == pytest.approx(1.0)
    raw = compute_tile_scores(**kw, orient=False)
    assert roc_auc_score(tumour, raw.scores) == pytest.approx(0.0) and "not oriented" in raw.label


def test_a_mixed_slope_head_is_oriented_by_the_tiles_contributions():
    """Top weights +1, bottom weights -0.6: the overall slope is positive (+0.8), so flipping
    by that slope alone would keep the inverted raw map; the tiles' signed contributions show
    that the (low-scored) tumour tiles push the logit up."""
    from rl_benchmarks.reports.heatmap import tile_contributions, tile_score_gradients

    net = _inverted_chowder()
    with torch.no_grad():
        net.mlp[0].weight.copy_(torch.tensor([[1.0, 1.0, -0.6, -0.6]]))
    feats, tumour = _slide()
    normal, _ = _slide(n_tumour=0, seed=1)
    with torch.no_grad():
        assert float(net(torch.from_numpy(feats)[None])) > float(net(torch.from_numpy(normal)[None])) + 1.0
    assert score_slope(net, feats) == pytest.approx(0.8, abs=1e-5)
    s, g = tile_score_gradients(net, feats)
    order = np.argsort(-s)
    np.testing.assert_allclose(g[order[:2]], 1.0, atol=1e-6)  # the head's weight at each rank
    np.testing.assert_allclose(g[order[-2:]], -0.6, atol=1e-6)
    assert (g[order[2:-2]] == 0).all()  # unselected tiles are not read
    contrib = tile_contributions(net, feats)
    assert contrib[tumour].min() > contrib[~tumour].max()
    got = oriented_tile_scores(net, feats)
    assert got.sign == -1 and roc_auc_score(tumour, got.scores) == pytest.approx(1.0)
