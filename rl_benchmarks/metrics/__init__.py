"""Every metric of the package, numpy.

* slide level, called as ``metric(labels, logits)`` (the cross-validation run and the
  report's plots): :data:`METRICS`, from :mod:`.classification_metrics` and
  :mod:`.survival_metrics`;
* tile level (the linear probe): :mod:`.tile_metrics`;
* the one bootstrap, basic or percentile interval: :mod:`.bootstrap` (not re-exported
  here: a package attribute ``bootstrap`` would hide the submodule of that name).
"""

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
