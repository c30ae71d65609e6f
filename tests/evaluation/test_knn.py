"""kNN probe (k=20, cosine, majority vote) against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

from rl_benchmarks.evaluation.knn import knn_predict, knn_probe, l2_normalize


def _data(n_train=300, n_eval=120, d=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    ytr, yev = rng.integers(0, k, n_train), rng.integers(0, k, n_eval)
    Xtr = (centers[ytr] + 1.5 * rng.normal(size=(n_train, d))).astype(np.float32)
    Xev = (centers[yev] + 1.5 * rng.normal(size=(n_eval, d))).astype(np.float32)
    return Xtr, ytr, Xev, yev


@pytest.mark.parametrize("k", [20, 5])
def test_knn_predict_equals_sklearn_cosine(k):
    Xtr, ytr, Xev, _ = _data()
    ours = knn_predict(Xtr, ytr, Xev, k=k, batch_size=50)
    ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(Xtr, ytr)
    np.testing.assert_array_equal(ours, ref.predict(Xev))


def test_knn_probe_metrics_equal_sklearn():
    Xtr, ytr, Xev, yev = _data(seed=3)
    pred = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute").fit(
        Xtr, ytr).predict(Xev)
    out = knn_probe(Xtr, ytr, Xev, yev, k=20)
    assert out["knn_acc"] == pytest.approx(accuracy_score(yev, pred))
    assert out["knn_bacc"] == pytest.approx(balanced_accuracy_score(yev, pred))
    # pre-normalised input gives the same answer
    same = knn_probe(l2_normalize(Xtr), ytr, l2_normalize(Xev), yev, k=20, normalized=True)
    assert same == out


def test_cosine_ignores_row_scale_and_k_is_capped():
    Xtr, ytr, Xev, _ = _data(n_train=30, seed=5)
    scale = np.random.default_rng(0).uniform(0.1, 10.0, size=(len(Xtr), 1)).astype(np.float32)
    np.testing.assert_array_equal(knn_predict(Xtr, ytr, Xev, k=7),
                                  knn_predict(Xtr * scale, ytr, Xev, k=7))
    capped = knn_predict(Xtr, ytr, Xev, k=100)  # k > 30 training tiles: all of them vote
    majority = np.bincount(ytr).argmax()
    assert set(capped) == {majority}


def test_knn_errors_name_the_problem():
    Xtr, ytr, Xev, _ = _data(n_train=10, n_eval=3)
    with pytest.raises(ValueError, match="dimensions"):
        knn_predict(Xtr, ytr, Xev[:, :5])
    with pytest.raises(ValueError, match="labels"):
        knn_predict(Xtr, ytr[:5], Xev)
