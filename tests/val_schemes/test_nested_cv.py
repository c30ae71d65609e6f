"""NestedCrossValidation: seeding, fast == plain, epoch selection, planted signal."""

from __future__ import annotations

import numpy as np
import pytest
from testlib.cv import ToyCohort, trainer_cfg

from rl_benchmarks.val_schemes import NestedCrossValidation

GRID = {"learning_rate": [1e-2, 1e-3], "weight_decay": [0.0, 1e-4]}


def ncv(model="MeanPool", task="binary", fast=True, seed=0, epochs=4, **kw):
    params = dict(grid_search_params=GRID, n_splits_outer=2, n_splits_inner=2, seed=seed,
                  fast=fast)
    params.update(kw)
    return NestedCrossValidation(trainer_cfg(model, task, num_epochs=epochs), **params)


@pytest.fixture(scope="module")
def cohort():
    return ToyCohort(n_patients=24, n_tiles=10, ragged=True)


def _last(metrics, name):
    return {k: v[-1] for k, v in metrics[name].items()}


def test_same_seed_identical_results_other_seed_differs(cohort):
    a = ncv(seed=3, epochs=2)
    ra = a.run(cohort)
    b = ncv(seed=3, epochs=2)
    rb = b.run(cohort)
    assert ra == rb
    assert a.selected_params == b.selected_params
    rc = ncv(seed=4, epochs=2).run(cohort)
    assert rc[1]["loss"] != ra[1]["loss"]


def _assert_same_outcome(fast, f_test, plain, p_test) -> None:
    """The fast and plain nested CVs select the same points, with the same inner scores, test
    metrics and predictions (float rounding aside)."""
    for key in fast.selected_params:
        f, p = fast.selected_params[key], plain.selected_params[key]
        assert (f["learning_rate"], f["weight_decay"], f["num_epochs"]) == (
            p["learning_rate"], p["weight_decay"], p["num_epochs"])
        np.testing.assert_allclose([g["score"] for g in f["grid_scores"]],
                                   [g["score"] for g in p["grid_scores"]], atol=1e-6)
        np.testing.assert_allclose(f_test["auc"][key], p_test["auc"][key], atol=1e-6)
        np.testing.assert_allclose(f_test["loss"][key], p_test["loss"][key], rtol=1e-4)
        np.testing.assert_allclose(fast.predictions[key]["logits"],
                                   plain.predictions[key]["logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["MeanPool", "ABMIL"])
def test_fast_path_equals_plain_path(cohort, model):
    fast, plain = ncv(model, fast=True, epochs=3), ncv(model, fast=False, epochs=3)
    f_train, f_test = fast.run(cohort)
    p_train, p_test = plain.run(cohort)
    assert fast.used_fast_path is True and plain.used_fast_path is False
    _assert_same_outcome(fast, f_test, plain, p_test)


def test_selection_retrains_best_epoch_plus_one(cohort, monkeypatch):
    """Check e* = argmax of the inner mean curve and the e*+1 retrain, with planted curves."""
    from rl_benchmarks.val_schemes import nested_cross_validation as mod

    curves = {  # (learning_rate, inner fold) -> val auc per epoch
        (1e-2, 0): [0.5, 0.9, 0.6, 0.6], (1e-2, 1): [0.5, 0.7, 0.8, 0.6],  # mean max at 1: 0.8
        (1e-3, 0): [0.6, 0.6, 0.9, 0.9], (1e-3, 1): [0.6, 0.7, 0.8, 0.9],  # mean max at 3: 0.9
    }
    real = mod.NestedCrossValidation._inner

    def fake_inner(self, fold, grid, data, bar):
        real(self, fold, grid, data, bar)  # runs, then the curves are replaced
        return [[{"auc": curves[(g["learning_rate"], k)]} for k in range(2)] for g in grid]

    monkeypatch.setattr(mod.NestedCrossValidation, "_inner", fake_inner)
    cv = ncv(grid_search_params={"learning_rate": [1e-2, 1e-3]})
    _, test = cv.run(cohort)
    for key, sel in cv.selected_params.items():
        assert sel["learning_rate"] == 1e-3 and sel["best_epoch"] == 3
        assert sel["num_epochs"] == 4 and len(test["auc"][key]) == 4
        assert sel["inner_score"] == pytest.approx(0.9)
        assert [g["num_epochs"] for g in sel["grid_scores"]] == [2, 4]
        # spread over the inner folds at the chosen epoch (fold noise), per grid point
        assert sel["grid_scores"][0]["score_std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
        assert sel["inner_score_std"] == pytest.approx(0.0)


def test_repeats_and_fold_keys(cohort):
    cv = ncv(n_repeats_outer=2, n_repeats_inner=2, epochs=2,
             grid_search_params={"learning_rate": [1e-2]})
    _, test = cv.run(cohort)
    assert sorted(test["auc"]) == [f"repeat_{r}_split_{s}" for r in (1, 2) for s in (1, 2)]
    # in each repeat the test folds cover every slide once and share no patient
    for r in (1, 2):
        parts = [cv.predictions[f"repeat_{r}_split_{s}"]["indices"] for s in (1, 2)]
        assert sorted(np.concatenate(parts)) == list(range(len(cohort)))
        patients = [set(cohort.patient_id[p]) for p in parts]
        assert not patients[0] & patients[1]
    assert [cv.predictions[f"repeat_{r}_split_1"]["indices"].tolist() for r in (1, 2)][0] != [
        cv.predictions[f"repeat_{r}_split_1"]["indices"].tolist() for r in (1, 2)][1]


def test_errors_before_training():
    small = ToyCohort(n_patients=3, n_tiles=4)
    with pytest.raises(ValueError, match="only 3 distinct patients"):
        ncv(n_splits_outer=5).run(small)
    cohort = ToyCohort(n_patients=8, n_tiles=4)
    with pytest.raises(ValueError, match="inner CV of outer fold 1"):
        ncv(n_splits_outer=2, n_splits_inner=5).run(cohort)
    with pytest.raises(ValueError, match="neither 'cindex' nor 'auc'"):
        cfg = trainer_cfg()
        cfg.metrics = {"acc": cfg.metrics.auc}
        NestedCrossValidation(cfg, n_splits_outer=2, n_splits_inner=2).run(cohort)
    # 8 patients -> inner training folds of 2 slides < batch_size 8: no step would run
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        ncv(n_splits_outer=2, n_splits_inner=2).run(cohort)


@pytest.mark.parametrize("model", ["MeanPool", "Chowder", "ABMIL"])
def test_planted_signal_classification(model):
    cohort = ToyCohort(n_patients=40, n_tiles=12, seed=5)
    # the tiny sigmoid-MLP Chowder learns slower than the others: more epochs
    epochs = 15 if model == "Chowder" else 8
    cv = ncv(model, epochs=epochs, grid_search_params={"learning_rate": [3e-2, 1e-2]})
    _, test = cv.run(cohort)
    assert np.mean(list(_last(test, "auc").values())) > 0.9


@pytest.mark.parametrize("model", ["MeanPool", "ABMIL"])
def test_planted_signal_survival(model):
    cohort = ToyCohort(n_patients=40, n_tiles=12, task="survival", seed=6)
    cv = ncv(model, task="survival", epochs=8, grid_search_params={"learning_rate": [1e-2]})
    _, test = cv.run(cohort)
    assert np.mean(list(_last(test, "cindex").values())) > 0.7


@pytest.mark.parametrize("model", ["Chowder", "ABMIL"])
def test_bf16_fast_path_selects_like_fp32(model):
    """precision=bf16 (fast path): on a planted cohort it selects the fp32 hyper-parameters
    and epochs, and its test metrics agree with fp32 within a small tolerance."""
    data = ToyCohort(n_patients=30, n_tiles=12, strength=2.0)
    runs = {}
    for precision in ("fp32", "bf16"):
        cv = ncv(model, epochs=3, precision=precision)
        runs[precision] = (cv, cv.run(data)[1])
    (f, f_test), (b, b_test) = runs["fp32"], runs["bf16"]
    assert f.used_fast_path and b.used_fast_path
    for key in f.selected_params:
        fs, bs = f.selected_params[key], b.selected_params[key]
        assert (fs["learning_rate"], fs["weight_decay"], fs["num_epochs"]) == (
            bs["learning_rate"], bs["weight_decay"], bs["num_epochs"])
        assert abs(fs["inner_score"] - bs["inner_score"]) < 0.05
        np.testing.assert_allclose(b_test["auc"][key], f_test["auc"][key], atol=0.05)
        np.testing.assert_allclose(b_test["loss"][key], f_test["loss"][key], atol=0.02)


class _FixedOrderCohort(ToyCohort):
    """Reads keep each slide's tile order (TransMIL depends on it; a dataset built with
    ``shuffle=False`` behaves so) and draw no random numbers (HIPT-MIL's dropout)."""

    shuffle = False

    def __getitem__(self, i: int):
        import torch

        return self.features[i], torch.tensor([self.labels[i]], dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("model", [
    {"_target_": "rl_benchmarks.models.HIPTMIL"},
    {"_target_": "rl_benchmarks.models.TransMIL", "kw_cor": {"num_heads": 2},
     "kw_agg": {"num_heads": 2}},
], ids=["HIPTMIL", "TransMIL"])
def test_fast_path_equals_plain_path_hipt_transmil(model):
    """The two models added to the fast path: same selections, curves and predictions."""
    from omegaconf import OmegaConf

    cohort = _FixedOrderCohort(n_patients=16, n_tiles=8, ragged=True)
    runs = []
    for fast in (True, False):
        cfg = trainer_cfg("MeanPool", num_epochs=2, batch_size=4)
        cfg.model = OmegaConf.create({**model, "in_features": 8, "out_features": 1})
        cv = NestedCrossValidation(cfg, grid_search_params=GRID, n_splits_outer=2,
                                   n_splits_inner=2, seed=0, fast=fast, outer_folds=[0])
        runs.append((cv, cv.run(cohort)[1]))
    (f, f_test), (p, p_test) = runs
    assert f.used_fast_path is True and p.used_fast_path is False
    _assert_same_outcome(f, f_test, p, p_test)
