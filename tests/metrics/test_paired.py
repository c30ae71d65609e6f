"""The paired comparison's interval and test against scipy computed directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rl_benchmarks.metrics.paired import paired_interval, wilcoxon_pairs


def test_t_interval_equals_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.6, 0.9, 10), rng.uniform(0.6, 0.9, 10)
    res = paired_interval(a, b, interval="t")
    d = a - b
    low, high = stats.t.interval(0.95, df=9, loc=d.mean(), scale=stats.sem(d))
    assert (res.mean, res.low, res.high, res.n) == pytest.approx((d.mean(), low, high, 10))
    # the paired t-test and the interval agree: p < 0.05 exactly when 0 is outside
    assert res.significant == (stats.ttest_rel(a, b).pvalue < 0.05)


def test_corrected_t_is_nadeau_bengio():
    d = np.array([0.05, 0.02, 0.04, -0.01, 0.06])
    res = paired_interval(d, np.zeros(5), interval="corrected_t", test_train_ratio=1 / 4)
    scale = d.std(ddof=1) * math.sqrt(1 / 5 + 1 / 4)
    low, high = stats.t.interval(0.95, df=4, loc=d.mean(), scale=scale)
    assert (res.low, res.high) == pytest.approx((low, high))
    plain = paired_interval(d, np.zeros(5), interval="t")
    assert res.high - res.low > plain.high - plain.low  # wider than the plain t over CV folds
    with pytest.raises(ValueError, match="test_train_ratio"):
        paired_interval(d, np.zeros(5), interval="corrected_t")


def test_wilcoxon_equals_scipy_and_self_comparison_is_not_significant():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.8, 0.05, 25), rng.normal(0.75, 0.05, 25)
    ref = stats.wilcoxon(a, b)
    assert wilcoxon_pairs(a, b) == pytest.approx((ref.statistic, ref.pvalue))
    assert wilcoxon_pairs(a, a) == (0.0, 1.0)
    for interval in ("t", "corrected_t"):
        same = paired_interval(a, a, interval=interval, test_train_ratio=0.25)
        assert same.mean == 0 and not same.significant


def test_undefined_interval_is_not_significant():
    one = paired_interval([0.9], [0.1], interval="t")
    assert math.isnan(one.low) and not one.significant
    with pytest.raises(ValueError, match="one length"):
        paired_interval([0.1, 0.2], [0.1], interval="t")
