"""rl_benchmarks.metrics.bootstrap: one bootstrap, two interval methods (basic, percentile)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from rl_benchmarks.metrics import compute_binary_auc
from rl_benchmarks.metrics.bootstrap import (
    bootstrap,
    bootstrap_interval,
    percentile_interval,
    resample_indices,
)
from rl_benchmarks.metrics.tile_metrics import get_bootstrapped_metrics


def _scores(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    s = rng.random((n, k)) + 0.6 * np.eye(k)[y]
    return y, s / s.sum(axis=1, keepdims=True)


def _percentile_loop(metric, labels, logits, n_resamples, level, seed):
    """The slide-level test-cohort bootstrap as it was written in val_schemes/train_test.py
    (percentile interval, undefined resamples skipped): the reference for ``"percentile"``."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    values = []
    for _ in range(int(n_resamples)):
        idx = rng.integers(0, n, n)
        try:
            v = float(metric(labels[idx], logits[idx]))
        except ValueError:
            continue
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def test_percentile_bootstrap_equals_the_slide_level_loop():
    rng = np.random.default_rng(2)
    labels = np.array([0, 1] * 12 + [1] * 3)  # small: some resamples hold one class (NaN AUC)
    logits = (labels * 0.8 + rng.normal(0, 1, len(labels))).reshape(-1, 1)
    theta, low, high = bootstrap(labels, logits, compute_binary_auc, 200, 0.9, seed=4,
                                 method="percentile")
    assert theta == compute_binary_auc(labels, logits)
    assert (low, high) == pytest.approx(
        _percentile_loop(compute_binary_auc, labels, logits, 200, 0.9, seed=4), abs=0)
    # few labels: resamples with a single class are undefined and skipped, not a crash
    tiny = np.array([0, 1, 1]), np.array([[0.1], [0.9], [0.8]])
    got = bootstrap(*tiny, compute_binary_auc, 50, 0.95, seed=0, method="percentile")[1:]
    want = _percentile_loop(compute_binary_auc, *tiny, 50, 0.95, seed=0)
    assert got == pytest.approx(want, abs=0)


def test_basic_and_percentile_mirror_each_other_around_theta():
    stats = np.random.default_rng(0).normal(0.7, 0.05, 500)
    theta = 0.72
    q_low, q_high = np.quantile(stats, [0.025, 0.975])
    assert bootstrap_interval(theta, stats, 0.95, "percentile") == pytest.approx((q_low, q_high))
    assert bootstrap_interval(theta, stats, 0.95, "basic") == pytest.approx(
        (2 * theta - q_high, 2 * theta - q_low))
    assert percentile_interval(stats, 0.95) == pytest.approx((q_low, q_high))
    # undefined resamples (NaN, inf) are left out by both methods
    noisy = np.concatenate([stats, [np.nan, np.inf]])
    for method in ("basic", "percentile"):
        assert bootstrap_interval(theta, noisy, 0.95, method) == pytest.approx(
            bootstrap_interval(theta, stats, 0.95, method))
    assert all(np.isnan(bootstrap_interval(0.5, np.array([np.nan]), 0.95, "percentile")))
    # the percentile interval does not need the point estimate; the basic one does
    assert np.isfinite(bootstrap_interval(np.nan, stats, 0.95, "percentile")).all()
    assert np.isnan(bootstrap_interval(np.nan, stats, 0.95, "basic")).all()


@pytest.mark.parametrize("k", [2, 4])
def test_tile_metrics_percentile_interval_fast_equals_per_resample(k):
    y, s = _scores(120, k, seed=k)
    fast = get_bootstrapped_metrics(y, s, 80, 0.9, seed=3, interval="percentile")
    slow = get_bootstrapped_metrics(y, s, 80, 0.9, seed=3, method="sklearn", interval="percentile")
    for key in fast:
        assert fast[key] == pytest.approx(slow[key], abs=1e-12), key
    pred = s.argmax(axis=1)
    stats = [accuracy_score(y[i], pred[i]) for i in resample_indices(len(y), 80, seed=3)]
    q_low, q_high = np.quantile(stats, [0.05, 0.95])
    assert (fast["bt_acc_low"], fast["bt_acc_high"]) == pytest.approx((q_low, q_high), abs=1e-12)
    basic = get_bootstrapped_metrics(y, s, 80, 0.9, seed=3)  # the default: basic
    theta = basic["acc"]
    assert (basic["bt_acc_low"], basic["bt_acc_high"]) == pytest.approx(
        (2 * theta - q_high, 2 * theta - q_low), abs=1e-12)


def test_generic_bootstrap_default_is_basic():
    y = np.array([0, 1] * 20)
    score = np.linspace(0, 1, 40) + 0.3 * y
    theta, low, high = bootstrap(y, score, roc_auc_score, 100, 0.95, seed=1)
    p_low, p_high = bootstrap(y, score, roc_auc_score, 100, 0.95, seed=1, method="percentile")[1:]
    assert (low, high) == pytest.approx((2 * theta - p_high, 2 * theta - p_low))


def test_bad_interval_method_and_level_are_named():
    y, s = _scores(20, 2)
    with pytest.raises(ValueError, match=r"interval method must be one of .*'bca'"):
        bootstrap(y, s[:, 1], roc_auc_score, 10, method="bca")
    with pytest.raises(ValueError, match=r"interval method.*'studentized'"):
        get_bootstrapped_metrics(y, s, 10, interval="studentized")
    with pytest.raises(ValueError, match=r"confidence_level must be in \(0, 1\), got 1.5"):
        bootstrap_interval(0.5, np.ones(3), 1.5)
    with pytest.raises(ValueError, match="y_true has 20 rows but y_score has 19"):
        bootstrap(y, s[:-1, 1], roc_auc_score, 10)


def test_reference_module_path_reexports_the_same_objects():
    import rl_benchmarks.metrics.bootstrap as boot
    import rl_benchmarks.metrics.tile_metrics as tile
    import rl_benchmarks.utils.linear_evaluation as ref

    assert ref.bootstrap is boot.bootstrap
    assert ref.get_bootstrapped_metrics is tile.get_bootstrapped_metrics
    assert ref.get_binary_class_metrics is tile.get_binary_class_metrics
    for name in ("bootstrap", "remove_labels", "build_datasets", "get_binary_class_metrics",
                 "get_bootstrapped_metrics", "dict_to_dataframe"):
        assert callable(getattr(ref, name)), name
