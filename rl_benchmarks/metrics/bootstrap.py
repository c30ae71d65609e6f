"""The one bootstrap of the package: resamples, confidence intervals, and a generic
``bootstrap(y_true, y_score, metric)``.

Two interval methods, chosen with ``method``:

* ``"basic"`` (reverse percentile, the reference's linear-probe interval and the default):
  ``(2θ - q_{1-α/2}, 2θ - q_{α/2})``;
* ``"percentile"`` (the slide-level test-cohort interval): ``(q_{α/2}, q_{1-α/2})``;

where θ is the statistic on the full sample and q the quantiles of the statistic over
``n_resamples`` resamples drawn with replacement. Every path draws its resamples from
:func:`resample_indices`, so the same seed gives the same resamples everywhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np

#: the interval methods :func:`bootstrap_interval` knows
INTERVAL_METHODS = ("basic", "percentile")


def resample_indices(n: int, n_resamples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Yield ``n_resamples`` index arrays of length ``n`` drawn with replacement.

    One ``rng.integers(0, n, n)`` call per resample from ``np.random.default_rng(seed)``,
    so every bootstrap path sees the same resamples for the same seed.
    """
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield rng.integers(0, n, size=n)


def check_confidence_level(confidence_level: float) -> None:
    """Raise a one-line error unless ``0 < confidence_level < 1``."""
    if not 0.0 < float(confidence_level) < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}")


def check_interval_method(method: str) -> None:
    """Raise a one-line error unless ``method`` is one of :data:`INTERVAL_METHODS`."""
    if method not in INTERVAL_METHODS:
        raise ValueError(
            f"bootstrap interval method must be one of {list(INTERVAL_METHODS)}, got {method!r}"
        )


def bootstrap_interval(
    theta: float, stats: np.ndarray, confidence_level: float = 0.95, method: str = "basic"
) -> tuple[float, float]:
    """Bootstrap interval of a statistic from its resample values ``stats``.

    Resamples where the statistic is undefined (NaN or infinite, e.g. an AUC on a resample
    holding a single class) are left out; with none left the interval is (NaN, NaN). The
    basic interval is also (NaN, NaN) when ``theta`` is NaN; the percentile interval does
    not use ``theta``.
    """
    check_confidence_level(confidence_level)
    check_interval_method(method)
    stats = np.asarray(stats, dtype=np.float64).reshape(-1)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0 or (method == "basic" and np.isnan(theta)):
        return float("nan"), float("nan")
    alpha = 1.0 - confidence_level
    q_low, q_high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    if method == "percentile":
        return float(q_low), float(q_high)
    return float(2.0 * theta - q_high), float(2.0 * theta - q_low)


def basic_interval(
    theta: float, stats: np.ndarray, confidence_level: float = 0.95
) -> tuple[float, float]:
    """Basic (reverse-percentile) interval: ``bootstrap_interval(..., method="basic")``."""
    return bootstrap_interval(theta, stats, confidence_level, method="basic")


def percentile_interval(stats: np.ndarray, confidence_level: float = 0.95) -> tuple[float, float]:
    """Percentile interval: ``bootstrap_interval(..., method="percentile")``."""
    return bootstrap_interval(float("nan"), stats, confidence_level, method="percentile")


def safe_metric(
    metric: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray, y_score: np.ndarray
) -> float:
    """``metric(y_true, y_score)`` as a float, NaN where the metric is undefined (it raises
    ``ValueError``, or scikit-learn >= 1.6 warns and returns NaN where older versions raised)."""
    from sklearn.exceptions import UndefinedMetricWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            return float(metric(y_true, y_score))
    except ValueError:
        return float("nan")


def bootstrap(
    y_true: np.ndarray,
    y_score: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    method: str = "basic",
) -> tuple[float, float, float]:
    """Point estimate and bootstrap CI of ``metric(y_true, y_score)``: ``(theta, low, high)``.

    Resamples the (label, score) rows with replacement ``n_resamples`` times (see
    :func:`resample_indices`); a resample on which ``metric`` is undefined is left out.
    ``method`` is the interval: ``"basic"`` (default) or ``"percentile"``.
    """
    check_confidence_level(confidence_level)
    check_interval_method(method)
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    if len(y_true) != len(y_score):
        raise ValueError(
            f"bootstrap: y_true has {len(y_true)} rows but y_score has {len(y_score)}"
        )
    if int(n_resamples) < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples}")
    theta = safe_metric(metric, y_true, y_score)
    stats = np.array(
        [
            safe_metric(metric, y_true[idx], y_score[idx])
            for idx in resample_indices(len(y_true), int(n_resamples), seed)
        ],
        dtype=np.float64,
    )
    low, high = bootstrap_interval(theta, stats, confidence_level, method)
    return theta, low, high
