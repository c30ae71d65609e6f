"""Metrics against scikit-learn and lifelines; numpy sigmoid / softmax per row."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lifelines.utils import concordance_index
from scipy.special import expit
from sklearn.metrics import accuracy_score, roc_auc_score

from rl_benchmarks.metrics import (
    compute_binary_accuracy,
    compute_binary_auc,
    compute_cindex,
    compute_mean_one_vs_all_auc,
    compute_multiclass_accuracy,
    compute_one_vs_all_auc,
)
from rl_benchmarks.utils.functional import sigmoid, softmax

RNG = np.random.default_rng(0)


def test_softmax_is_per_row():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    p = softmax(x)
    np.testing.assert_allclose(p.sum(axis=1), [1.0, 1.0])
    e = np.exp(x[0] - 3.0)
    np.testing.assert_allclose(p[0], e / e.sum())
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0], atol=1e-12)
    assert not np.allclose(p, np.exp(x[:1]) / np.exp(x[:1]).sum())  # not whole-array


def test_sigmoid_stable():
    x = np.array([-1000.0, 0.0, 1000.0, 2.0])
    np.testing.assert_allclose(sigmoid(x), [0.0, 0.5, 1.0, 1 / (1 + math.exp(-2))])


def test_binary_auc_one_column_against_sklearn():
    labels = RNG.integers(0, 2, size=(40, 1))
    logits = RNG.normal(size=(40, 1)) + labels
    expected = roc_auc_score(labels[:, 0], expit(logits[:, 0]))
    assert compute_binary_auc(labels, logits) == pytest.approx(expected, abs=1e-12)


def test_binary_auc_two_columns_uses_row_softmax():
    labels = RNG.integers(0, 2, size=30)
    logits = RNG.normal(size=(30, 2)) * 3
    p1 = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    assert compute_binary_auc(labels, logits) == pytest.approx(roc_auc_score(labels, p1))


def test_binary_auc_nan_with_one_class():
    assert math.isnan(compute_binary_auc(np.ones((5, 1)), RNG.normal(size=(5, 1))))


def test_accuracies_against_sklearn():
    labels = RNG.integers(0, 2, size=(25, 1))
    logits = RNG.normal(size=(25, 1))
    expected = accuracy_score(labels[:, 0], (logits[:, 0] > 0).astype(int))
    assert compute_binary_accuracy(labels, logits) == pytest.approx(expected)
    labels3 = RNG.integers(0, 3, size=(25, 1))
    logits3 = RNG.normal(size=(25, 3))
    expected3 = accuracy_score(labels3[:, 0], logits3.argmax(1))
    assert compute_multiclass_accuracy(labels3, logits3) == pytest.approx(expected3)


def test_one_vs_all_auc_against_sklearn():
    labels = np.repeat([0, 1, 3], 10)  # class 2 absent
    logits = RNG.normal(size=(30, 4)) + np.eye(4)[labels]
    per_class = compute_one_vs_all_auc(labels, logits)
    for k in (0, 1, 3):
        assert per_class[k] == pytest.approx(roc_auc_score(labels == k, logits[:, k]))
    assert math.isnan(per_class[2])
    expected = np.mean([roc_auc_score(labels == k, logits[:, k]) for k in (0, 1, 3)])
    assert compute_mean_one_vs_all_auc(labels[:, None], logits) == pytest.approx(expected)
    assert math.isnan(compute_mean_one_vs_all_auc(np.zeros(6), RNG.normal(size=(6, 3))))
    assert math.isnan(compute_mean_one_vs_all_auc(np.array([0, 5, 5]), RNG.normal(size=(3, 2))))


def _brute_force_harrell(times, scores, events):
    """Comparable pairs: event i with t_i < t_j, or t_i == t_j with j censored (censored at
    the same time outlives the event); concordant when risk_i > risk_j, half for a tie."""
    num = den = 0.0
    for i in range(len(times)):
        for j in range(len(times)):
            later = times[i] < times[j] or (times[i] == times[j] and not events[j])
            if events[i] and later:
                den += 1
                if scores[i] > scores[j]:
                    num += 1
                elif scores[i] == scores[j]:
                    num += 0.5
    return num / den


def test_cindex_against_lifelines_and_brute_force():
    times = RNG.integers(1, 20, size=50).astype(float)
    events = RNG.random(50) < 0.7
    risks = -times + RNG.normal(size=50) * 5
    labels = np.where(events, times, -times)[:, None]
    got = compute_cindex(labels, risks[:, None])
    assert got == pytest.approx(concordance_index(times, -risks, events))
    assert got == pytest.approx(_brute_force_harrell(times, risks, events))
    assert got > 0.5  # higher risk, shorter time


def test_cindex_nan_cases():
    assert math.isnan(compute_cindex(np.array([-1.0, -2.0]), np.array([0.1, 0.2])))
    assert math.isnan(compute_cindex(np.array([1.0, -2.0]), np.array([np.nan, 0.2])))
    with pytest.raises(ValueError, match="NaN survival label"):
        compute_cindex(np.array([np.nan, 2.0]), np.array([0.1, 0.2]))
