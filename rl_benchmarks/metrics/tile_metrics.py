"""Tile-level classification metrics of the linear probe, on ``(labels, scores)`` with
``scores`` an (n, K) matrix of class probabilities.

One sample (scikit-learn, the reference-style path): :func:`auc_score`,
:func:`accuracy_metric`, :func:`f1_metric`, :func:`balanced_accuracy_metric`, and the
per-class one-vs-rest table :func:`get_binary_class_metrics`.

Bootstrapped (:func:`get_bootstrapped_metrics`): AUC, accuracy, F1 and balanced accuracy of
every resample from per-resample sample *counts* (a resample is a multiset of the evaluation
tiles), sorting the scores once instead of once per resample. It gives the same numbers as
calling scikit-learn on ``y[idx]`` for the same index draws (``method="sklearn"`` does
exactly that, through :func:`rl_benchmarks.metrics.bootstrap.bootstrap`). The interval is
the basic one by default (the reference's), or the percentile one (``interval=``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)

from rl_benchmarks.metrics.bootstrap import (
    bootstrap,
    bootstrap_interval,
    check_confidence_level,
    check_interval_method,
    resample_indices,
)

#: overall metrics of the bootstrapped table, in the reference's column order
OVERALL_METRICS = ("auc", "acc", "f1")
#: every overall metric we bootstrap (balanced accuracy is our addition)
ALL_METRICS = ("auc", "acc", "f1", "bacc")

# elements of one (resamples x samples) block of counts; bounds the memory of the fast path
_BLOCK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------
# metrics on one sample (scikit-learn; the reference-style path)
# --------------------------------------------------------------------------------------
def auc_score(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AUC as in the reference: ``scores[:, 1]`` for 2 classes, macro one-vs-rest otherwise.

    With more than 2 classes and some class absent from ``y_true`` (scikit-learn refuses
    that case), the macro average runs over the classes present; NaN below 2 classes.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    n_classes = scores.shape[1]
    if n_classes == 2:
        return float(roc_auc_score(y_true, scores[:, 1]))
    present = np.unique(y_true)
    if len(present) == n_classes:
        return float(roc_auc_score(y_true, scores, average="macro", multi_class="ovr"))
    if len(present) < 2:
        raise ValueError("AUC is undefined with fewer than 2 classes in y_true")
    return float(np.mean([roc_auc_score(y_true == k, scores[:, k]) for k in present]))


def accuracy_metric(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Accuracy of the argmax prediction."""
    return float(accuracy_score(y_true, np.argmax(scores, axis=1)))


def f1_metric(y_true: np.ndarray, scores: np.ndarray) -> float:
    """F1 of the argmax prediction: binary (class 1) for 2 classes, macro otherwise."""
    average = "binary" if scores.shape[1] == 2 else "macro"
    return float(f1_score(y_true, np.argmax(scores, axis=1), average=average, zero_division=0))


def balanced_accuracy_metric(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Balanced accuracy (mean recall over the classes present in ``y_true``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        return float(balanced_accuracy_score(y_true, np.argmax(scores, axis=1)))


SKLEARN_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": auc_score,
    "acc": accuracy_metric,
    "f1": f1_metric,
    "bacc": balanced_accuracy_metric,
}


def get_binary_class_metrics(
    y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str]
) -> dict[str, float]:
    """Per-class one-vs-rest metrics: ``<Class>_auc`` from ``scores[:, k]``, and
    ``<Class>_acc`` / ``<Class>_f1`` of the binarised argmax prediction (``pred == k``).

    The AUC of a class absent from ``y_true`` (or the only class present) is NaN.
    """
    y_true, scores = _check_scores(y_true, scores)
    if len(class_names) != scores.shape[1]:
        raise ValueError(
            f"{len(class_names)} class names for {scores.shape[1]} score columns: "
            f"{list(class_names)}"
        )
    pred = np.argmax(scores, axis=1)
    out: dict[str, float] = {}
    for k, name in enumerate(class_names):
        truth, hit = y_true == k, pred == k
        if truth.all() or not truth.any():
            out[f"{name}_auc"] = float("nan")
        else:
            out[f"{name}_auc"] = float(roc_auc_score(truth, scores[:, k]))
        out[f"{name}_acc"] = float(accuracy_score(truth, hit))
        out[f"{name}_f1"] = float(f1_score(truth, hit, zero_division=0))
    return out


# --------------------------------------------------------------------------------------
# bootstrapped overall metrics
# --------------------------------------------------------------------------------------
def get_bootstrapped_metrics(
    y_true: np.ndarray,
    scores: np.ndarray,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    metrics: Sequence[str] = ALL_METRICS,
    method: str = "fast",
    interval: str = "basic",
) -> dict[str, float]:
    """Overall metrics and their bootstrap CIs (basic by default, as the reference).

    Returns ``{m: θ, "bt_<m>_low": ..., "bt_<m>_high": ...}`` for each ``m`` in ``metrics``
    (``auc``, ``acc``, ``f1``, ``bacc``). ``method="fast"`` uses resample counts (one sort
    of the scores); ``method="sklearn"`` calls scikit-learn on every resample. Both use the
    resamples of :func:`resample_indices` with ``seed`` and agree to rounding error.
    ``interval`` is the interval method of :func:`~rl_benchmarks.metrics.bootstrap.
    bootstrap_interval` (``"basic"`` or ``"percentile"``). ``n_resamples=0`` gives NaN
    intervals.
    """
    y_true, scores = _check_scores(y_true, scores)
    check_confidence_level(confidence_level)
    check_interval_method(interval)
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown:
        raise ValueError(
            f"unknown bootstrap metrics {unknown}; expected some of {list(ALL_METRICS)}"
        )
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples}")
    if method == "sklearn":
        out: dict[str, float] = {}
        for name in metrics:
            theta, low, high = bootstrap(
                y_true, scores, SKLEARN_METRICS[name], n_resamples, confidence_level, seed,
                method=interval,
            )
            out.update({name: theta, f"bt_{name}_low": low, f"bt_{name}_high": high})
        return out
    if method != "fast":
        raise ValueError(f"method must be 'fast' or 'sklearn', got {method!r}")

    stats = _CountStats(y_true, scores)
    theta = stats.compute(np.ones((1, len(y_true))), metrics)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    n = len(y_true)
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    indices = resample_indices(n, n_resamples, seed)
    remaining = n_resamples
    while remaining > 0:
        b = min(block, remaining)
        remaining -= b
        idx = np.stack([next(indices) for _ in range(b)])
        idx += (np.arange(b) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        for name, values in stats.compute(counts, metrics).items():
            samples[name].append(values)
    out = {}
    for name in metrics:
        th = float(theta[name][0])
        if n_resamples:
            low, high = bootstrap_interval(th, np.concatenate(samples[name]), confidence_level,
                                           interval)
        else:
            low = high = float("nan")
        out.update({name: th, f"bt_{name}_low": low, f"bt_{name}_high": high})
    return out


class _CountStats:
    """Metrics of weighted samples: row r of ``counts`` says how many times each tile is
    drawn in resample r. Everything reduces to count-weighted sums over the tiles."""

    def __init__(self, y_true: np.ndarray, scores: np.ndarray) -> None:
        self.y = y_true
        self.scores = scores
        self.n_classes = k = scores.shape[1]
        self.pred = np.argmax(scores, axis=1)
        eye = np.eye(k)
        self.truth = eye[y_true]  # (n, K)
        self.predicted = eye[self.pred]  # (n, K)
        self.hits = self.truth * (self.pred == y_true)[:, None]
        # one ascending sort of each class' scores, with tie groups (for the AUC)
        cols = [1] if k == 2 else range(k)
        self._auc_parts = []
        for c in cols:
            order = np.argsort(scores[:, c], kind="stable")
            s = scores[order, c]
            starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
            ties = len(starts) < len(s)
            self._auc_parts.append((order, (y_true[order] == c).astype(np.float64), starts, ties))

    def compute(self, counts: np.ndarray, metrics: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        t = counts @ self.truth  # true counts per class (B, K)
        need_pred = {"f1", "bacc", "acc"} & set(metrics)
        if need_pred:
            tp = counts @ self.hits
            p = counts @ self.predicted
            total = counts.sum(axis=1)
            if "acc" in metrics:
                out["acc"] = tp.sum(axis=1) / total
            if "f1" in metrics:
                denom = t + p
                with np.errstate(invalid="ignore", divide="ignore"):
                    f1 = np.where(denom > 0, 2.0 * tp / np.where(denom > 0, denom, 1.0), 0.0)
                if self.n_classes == 2:
                    out["f1"] = f1[:, 1]
                else:
                    present = denom > 0
                    out["f1"] = (f1 * present).sum(axis=1) / present.sum(axis=1)
            if "bacc" in metrics:
                present = t > 0
                recall = np.where(present, tp / np.where(present, t, 1.0), 0.0)
                out["bacc"] = (recall * present).sum(axis=1) / present.sum(axis=1)
        if "auc" in metrics:
            aucs = np.stack([self._auc(counts, part) for part in self._auc_parts], axis=1)
            if self.n_classes == 2:
                out["auc"] = aucs[:, 0]
            else:
                with np.errstate(invalid="ignore"):
                    valid = ~np.isnan(aucs)
                    n_valid = valid.sum(axis=1)
                    auc = np.where(valid, aucs, 0.0).sum(axis=1) / np.maximum(n_valid, 1)
                # fewer than 2 classes present: undefined
                out["auc"] = np.where((t > 0).sum(axis=1) >= 2, auc, np.nan)
        return out

    @staticmethod
    def _auc(counts: np.ndarray, part: tuple) -> np.ndarray:
        """Count-weighted Mann-Whitney AUC (ties count 1/2), the area scikit-learn's
        ``roc_auc_score`` gives for the resample."""
        order, is_pos, starts, ties = part
        w = counts[:, order]
        pos = w * is_pos
        neg = w - pos
        if ties:
            pos = np.add.reduceat(pos, starts, axis=1)
            neg = np.add.reduceat(neg, starts, axis=1)
        neg_below = np.cumsum(neg, axis=1) - neg
        num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((n_pos > 0) & (n_neg > 0), num / (n_pos * n_neg), np.nan)


def _check_scores(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (n_samples, n_classes>=2), got shape {scores.shape}")
    if y_true.ndim != 1 or len(y_true) != len(scores):
        raise ValueError(
            f"y_true must be 1-d with {len(scores)} labels, got shape {y_true.shape}"
        )
    if len(y_true) == 0:
        raise ValueError("no evaluation samples")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"labels must be integers 0..K-1, got dtype {y_true.dtype}")
    if y_true.min() < 0 or y_true.max() >= scores.shape[1]:
        raise ValueError(
            f"labels must lie in 0..{scores.shape[1] - 1}, got {y_true.min()}..{y_true.max()}"
        )
    return y_true.astype(np.int64, copy=False), scores
