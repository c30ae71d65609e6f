"""Paired comparison of two methods scored on the same outer folds (docs/results.md).

Why: "extractor A beats extractor B" in a benchmark table is only a claim once the
difference is measured fold by fold on the same splits, with an interval. Two pieces:

* :func:`paired_interval`: the mean of the per-fold differences ``a - b`` with a two-sided
  interval from Student's t over the folds. ``interval="t"`` is the plain t-interval
  (``sd / sqrt(n)``); ``interval="corrected_t"`` (the default of ``rlbench results``) is
  Nadeau & Bengio's corrected resampled t (Machine Learning 52, 2003), whose variance
  ``(1/n + n_test/n_train) * sd²`` accounts for the overlap of the folds' training sets
  (k-fold CV: ``n_test/n_train = 1/(k-1)``); the plain one is too narrow for CV folds.
* :func:`wilcoxon_pairs`: the Wilcoxon signed-rank test (scipy) over all pairs; with every
  difference zero it returns p = 1 (scipy has no statistic to compute there).

A difference whose interval includes 0 is "not significant".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: the intervals :func:`paired_interval` knows
INTERVALS = ("corrected_t", "t")


@dataclass(frozen=True)
class PairedInterval:
    """Mean difference ``a - b`` over ``n`` pairs and its interval at ``confidence``."""

    mean: float
    low: float
    high: float
    n: int
    interval: str
    confidence: float

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0 (False when it is undefined, e.g. one pair)."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return False
        return self.low > 0 or self.high < 0


def _pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need two 1-d arrays of one length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired values must be finite")
    return a - b


def paired_interval(a: np.ndarray, b: np.ndarray, interval: str = "corrected_t",
                    confidence: float = 0.95, test_train_ratio: float | None = None,
                    ) -> PairedInterval:
    """The mean of ``a - b`` and its two-sided ``confidence`` interval (module docstring).

    ``test_train_ratio`` (``n_test / n_train`` of one fold; ``1/(k-1)`` for k-fold CV) is
    needed by ``corrected_t``. Fewer than two pairs give an undefined (nan) interval; pairs
    that are all equal give the interval ``[d, d]``.
    """
    from scipy import stats

    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(INTERVALS)}, got {interval!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = _pairs(a, b)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return PairedInterval(mean, float("nan"), float("nan"), n, interval, confidence)
    var = float(d.var(ddof=1))
    if interval == "t":
        scale = math.sqrt(var / n)
    else:
        if test_train_ratio is None or not test_train_ratio > 0:
            raise ValueError("corrected_t needs test_train_ratio = n_test / n_train > 0")
        scale = math.sqrt(var * (1.0 / n + float(test_train_ratio)))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * scale
    return PairedInterval(mean, mean - half, mean + half, n, interval, confidence)


def wilcoxon_pairs(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(statistic, p)`` of scipy's two-sided Wilcoxon signed-rank test of ``a - b``
    (zero differences dropped, scipy's default); ``(0, 1)`` when every difference is zero
    and ``(nan, nan)`` with no pair."""
    from scipy import stats

    d = _pairs(a, b)
    if len(d) == 0:
        return float("nan"), float("nan")
    if np.all(d == 0):
        return 0.0, 1.0
    res = stats.wilcoxon(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return float(res.statistic), float(res.pvalue)


__all__ = ["INTERVALS", "PairedInterval", "paired_interval", "wilcoxon_pairs"]
