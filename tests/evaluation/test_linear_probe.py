"""The linear probe equals a direct scikit-learn computation of the reference protocol."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from rl_benchmarks.evaluation.linear_probe import (
    EXTRA_COLUMNS,
    LinearProbeConfig,
    draw_portion,
    fit_predict_ensemble,
    linear_probe,
)
from rl_benchmarks.utils.linear_evaluation import result_columns

CLASSES = ["ADI", "DEB", "LYM"]


def _tiles(n, k=3, d=8, seed=0, noise=1.2):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(k, d)) * 2.0
    y = rng.integers(0, k, n)
    return (centers[y] + noise * rng.normal(size=(n, d)) + 5.0).astype(np.float32), y


def _reference_loop(X, y, X_eval, portions, n_ensembling, seed):
    """The protocol of docs/protocol.md#linear-evaluation, written out with plain scikit-learn."""
    rs = np.random.RandomState(seed)
    out = []
    for p in portions:
        idx = rs.choice(len(X), int(p * len(X)), replace=False)
        scaler = StandardScaler().fit(X[idx])
        Xt = scaler.transform(X[idx]).astype(np.float64)  # scikit-learn 1.3 fitted SGD in float64
        Xe = scaler.transform(X_eval).astype(np.float64)
        probas = [
            SGDClassifier(loss="log_loss", penalty="l2", learning_rate="adaptive", eta0=1e-4,
                          early_stopping=False, random_state=s).fit(Xt, y[idx]).predict_proba(Xe)
            for s in range(n_ensembling)
        ]
        out.append((idx, np.mean(probas, axis=0)))
    return out


def test_probe_equals_direct_sklearn_computation():
    X, y = _tiles(240, seed=1)
    Xe, ye = _tiles(90, seed=2)
    portions = [0.25, 1.0]
    cfg = LinearProbeConfig(portions=portions, n_ensembling=3, n_resamples=40, seed=3,
                            num_workers=1, knn_k=7)
    table = linear_probe((X, y), {"valid": (Xe, ye)}, CLASSES, cfg, progress=False)["valid"]
    assert list(table.columns) == result_columns(CLASSES) + list(EXTRA_COLUMNS)
    assert table["portion"].tolist() == portions

    for row, (idx, scores) in zip(table.itertuples(index=False),
                                  _reference_loop(X, y, Xe, portions, 3, seed=3)):
        row = row._asdict()
        pred = scores.argmax(axis=1)
        assert row["n_train"] == len(idx)
        for k, name in enumerate(CLASSES):
            want_auc = roc_auc_score(ye == k, scores[:, k])
            assert row[f"{name}_auc"] == pytest.approx(want_auc, abs=1e-12)
            want_acc = accuracy_score(ye == k, pred == k)
            assert row[f"{name}_acc"] == pytest.approx(want_acc, abs=1e-12)
            assert row[f"{name}_f1"] == pytest.approx(f1_score(ye == k, pred == k), abs=1e-12)
        assert row["auc"] == pytest.approx(roc_auc_score(ye, scores, multi_class="ovr"), abs=1e-12)
        assert row["acc"] == pytest.approx(accuracy_score(ye, pred), abs=1e-12)
        assert row["f1"] == pytest.approx(f1_score(ye, pred, average="macro"), abs=1e-12)
        assert row["bacc"] == pytest.approx(balanced_accuracy_score(ye, pred), abs=1e-12)
        for m in ("auc", "acc", "f1", "bacc"):
            assert row[f"bt_{m}_low"] <= row[m] <= row[f"bt_{m}_high"]
        knn = KNeighborsClassifier(n_neighbors=7, metric="cosine", algorithm="brute")
        knn_pred = knn.fit(X[idx], y[idx]).predict(Xe)
        assert row["knn_acc"] == pytest.approx(accuracy_score(ye, knn_pred))
        assert row["knn_bacc"] == pytest.approx(balanced_accuracy_score(ye, knn_pred))


def test_parallel_workers_give_identical_results():
    X, y = _tiles(150, seed=4)
    evals = {"valid": _tiles(50, seed=5), "test": _tiles(40, seed=6)}
    common = dict(portions=[0.5], n_ensembling=3, n_resamples=20, knn_k=0)
    one = linear_probe((X, y), evals, CLASSES, LinearProbeConfig(**common, num_workers=1),
                       progress=False)
    two = linear_probe((X, y), evals, CLASSES, LinearProbeConfig(**common, num_workers=2),
                       progress=False)
    assert set(one) == {"valid", "test"}
    for name in one:
        pd.testing.assert_frame_equal(one[name], two[name])
    assert one["test"]["eval_set"].tolist() == ["test"]


def test_binary_dataset_columns_and_values():
    X, y = _tiles(200, k=2, seed=7)
    Xe, ye = _tiles(80, k=2, seed=8)
    cfg = LinearProbeConfig(portions=[1.0], n_ensembling=2, n_resamples=0, knn_k=0)
    row = linear_probe((X, y), {"valid": (Xe, ye)}, ["Normal", "Tumor"], cfg,
                       progress=False)["valid"].iloc[0]
    (_, scores), = _reference_loop(X, y, Xe, [1.0], 2, seed=0)
    assert row["auc"] == pytest.approx(roc_auc_score(ye, scores[:, 1]), abs=1e-12)
    assert row["f1"] == pytest.approx(f1_score(ye, scores.argmax(1)), abs=1e-12)
    assert np.isnan(row["bt_auc_low"]) and np.isnan(row["knn_acc"])


def test_unstratified_draws_follow_the_reference_rng():
    y = np.arange(1000) % 4
    rng = np.random.RandomState(0)
    a, b = draw_portion(y, 0.01, rng), draw_portion(y, 0.5, rng)
    ref = np.random.RandomState(0)
    np.testing.assert_array_equal(a, ref.choice(1000, 10, replace=False))
    np.testing.assert_array_equal(b, ref.choice(1000, 500, replace=False))


def test_stratified_portions_keep_class_shares():
    y = np.repeat([0, 1, 2], [700, 250, 50])
    idx = draw_portion(y, 0.1, np.random.RandomState(1), stratified=True)
    assert len(idx) == 100 and len(np.unique(idx)) == 100
    np.testing.assert_array_equal(np.bincount(y[idx]), [70, 25, 5])
    small = draw_portion(y, 0.004, np.random.RandomState(1), stratified=True)  # 4 tiles
    assert len(small) == 4 and set(y[small]) == {0, 1, 2}  # every class kept


def test_missing_class_in_subset_gets_zero_probability():
    X, y = _tiles(60, seed=9)
    keep = y != 2
    probas = fit_predict_ensemble(X[keep].astype(np.float64), y[keep], [X[:5].astype(np.float64)],
                                  n_classes=3, n_ensembling=2)
    assert probas[0].shape == (5, 3)
    np.testing.assert_array_equal(probas[0][:, 2], 0.0)
    np.testing.assert_allclose(probas[0].sum(axis=1), 1.0)


def test_bad_inputs_raise_clear_errors():
    X, y = _tiles(50, seed=10)
    evals = {"valid": _tiles(10, seed=11)}
    with pytest.raises(ValueError, match="portion 0.01 of 50 training tiles gives 0"):
        linear_probe((X, y), evals, CLASSES, LinearProbeConfig(portions=[0.01]), progress=False)
    with pytest.raises(ValueError, match=r"portions must lie in \(0, 1\]"):
        linear_probe((X, y), evals, CLASSES, LinearProbeConfig(portions=[1.5]), progress=False)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        linear_probe((X, y), evals, ["a", "b"], LinearProbeConfig(portions=[1.0]), progress=False)
    with pytest.raises(ValueError, match="feature dimensions"):
        linear_probe((X, y), {"valid": (X[:, :3], y)}, CLASSES, LinearProbeConfig(), progress=False)
    with pytest.raises(ValueError, match="single class"):
        fit_predict_ensemble(X, np.zeros(50, dtype=int), [X], 3, 1)
