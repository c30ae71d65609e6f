"""Slide-level metrics, numpy, called as ``metric(labels, logits)``."""

from __future__ import annotations

from .classification_metrics import (
    compute_binary_accuracy,
    compute_binary_auc,
    compute_mean_one_vs_all_auc,
    compute_multiclass_accuracy,
    compute_one_vs_all_auc,
)
from .survival_metrics import compute_cindex

METRICS = {
    "accuracy": compute_binary_accuracy,
    "binary_accuracy": compute_binary_accuracy,
    "multiclass_accuracy": compute_multiclass_accuracy,
    "auc": compute_binary_auc,
    "binary_auc": compute_binary_auc,
    "mean_one_vs_all_auc": compute_mean_one_vs_all_auc,
    "cindex": compute_cindex,
}

__all__ = [
    "METRICS",
    "compute_binary_accuracy",
    "compute_binary_auc",
    "compute_cindex",
    "compute_mean_one_vs_all_auc",
    "compute_multiclass_accuracy",
    "compute_one_vs_all_auc",
]
