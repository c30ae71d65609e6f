"""Classification metrics on numpy labels and logits.

``labels`` are (n,) or (n, 1) integers; ``logits`` are (n,), (n, 1) or (n, C) raw model outputs.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from rl_benchmarks.utils.functional import sigmoid, softmax


def _as_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{name}: {y.shape[0]} labels for {n} rows of logits")
    return y


def _as_logits(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    return x.reshape(-1, 1) if x.ndim <= 1 else x.reshape(x.shape[0], -1)


def compute_binary_accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Accuracy of ``1[logit > 0]`` (one logit per sample)."""
    x = _as_logits(logits)
    if x.shape[1] != 1:
        raise ValueError(f"compute_binary_accuracy: expected one logit per sample, got {x.shape}")
    y = _as_labels(labels, x.shape[0], "compute_binary_accuracy")
    return float(np.mean((x[:, 0] > 0).astype(int) == y.astype(int)))


def compute_multiclass_accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Accuracy of the arg-max class (logits (n, C))."""
    x = _as_logits(logits)
    y = _as_labels(labels, x.shape[0], "compute_multiclass_accuracy")
    return float(np.mean(np.argmax(x, axis=1) == y.astype(int)))


def compute_binary_auc(labels: np.ndarray, logits: np.ndarray) -> float:
    """ROC AUC of a binary task: ``sigmoid(logit)`` for one column, ``softmax(row)[1]`` for
    two. NaN when only one class is present (as the reference) or a logit is NaN."""
    x = _as_logits(logits)
    y = _as_labels(labels, x.shape[0], "compute_binary_auc")
    if x.shape[1] == 1:
        scores = sigmoid(x[:, 0])
    elif x.shape[1] == 2:
        scores = softmax(x, axis=1)[:, 1]
    else:
        raise ValueError(f"compute_binary_auc: expected 1 or 2 logit columns, got {x.shape[1]}")
    if len(np.unique(y)) < 2 or np.isnan(scores).any():
        return float("nan")
    return float(roc_auc_score(y, scores))


def compute_one_vs_all_auc(labels: np.ndarray, logits: np.ndarray) -> dict[int, float]:
    """ROC AUC of each class against the rest on its raw logit column: {class: auc}; NaN for a
    class absent from (or the only one in) ``labels``."""
    x = _as_logits(logits)
    y = _as_labels(labels, x.shape[0], "compute_one_vs_all_auc").astype(int)
    out: dict[int, float] = {}
    for k in range(x.shape[1]):
        positives = y == k
        if positives.all() or not positives.any() or np.isnan(x[:, k]).any():
            out[k] = float("nan")
        else:
            out[k] = float(roc_auc_score(positives, x[:, k]))
    return out


def compute_mean_one_vs_all_auc(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean of the one-vs-all AUCs over the classes present in ``labels``; NaN when it cannot
    be computed (e.g. a single class, or a label without a logit column)."""
    try:
        x = _as_logits(logits)
        y = _as_labels(labels, x.shape[0], "compute_mean_one_vs_all_auc").astype(int)
        present = np.unique(y)
        if len(present) < 2 or np.isnan(x).any():
            return float("nan")
        aucs = [roc_auc_score(y == k, x[:, k]) for k in present]
        return float(np.mean(aucs))
    except (ValueError, IndexError):
        return float("nan")
