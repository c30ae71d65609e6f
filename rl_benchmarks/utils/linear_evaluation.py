"""The reference's module path for the tile-level linear-evaluation helpers.

Users of the reference import ``bootstrap``, ``remove_labels``, ``build_datasets``,
``get_binary_class_metrics``, ``get_bootstrapped_metrics`` and ``dict_to_dataframe`` from
here, so these names stay importable; each lives in its own home:

* metrics and the bootstrap: :mod:`rl_benchmarks.metrics.tile_metrics` and
  :mod:`rl_benchmarks.metrics.bootstrap`;
* features -> ``(X, y)`` tables: :mod:`rl_benchmarks.datasets.tiles_classification.probe_data`;
* the result table: :mod:`rl_benchmarks.evaluation.linear_probe`.
"""

from __future__ import annotations

from rl_benchmarks.datasets.tiles_classification.probe_data import build_datasets, remove_labels
from rl_benchmarks.evaluation.linear_probe import dict_to_dataframe, result_columns
from rl_benchmarks.metrics.bootstrap import (
    basic_interval,
    bootstrap,
    bootstrap_interval,
    percentile_interval,
    resample_indices,
)
from rl_benchmarks.metrics.tile_metrics import (
    ALL_METRICS,
    OVERALL_METRICS,
    SKLEARN_METRICS,
    accuracy_metric,
    auc_score,
    balanced_accuracy_metric,
    f1_metric,
    get_binary_class_metrics,
    get_bootstrapped_metrics,
)

__all__ = [
    "ALL_METRICS",
    "OVERALL_METRICS",
    "SKLEARN_METRICS",
    "accuracy_metric",
    "auc_score",
    "balanced_accuracy_metric",
    "basic_interval",
    "bootstrap",
    "bootstrap_interval",
    "build_datasets",
    "dict_to_dataframe",
    "f1_metric",
    "get_binary_class_metrics",
    "get_bootstrapped_metrics",
    "percentile_interval",
    "remove_labels",
    "resample_indices",
    "result_columns",
]
