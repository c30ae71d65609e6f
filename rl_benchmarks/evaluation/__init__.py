"""Evaluation of frozen features: linear probe, kNN probe (and fine-tuning, in
:mod:`rl_benchmarks.evaluation.finetune`). Names resolve lazily so that importing the
package stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LinearProbeConfig": "rl_benchmarks.evaluation.linear_probe",
    "linear_probe": "rl_benchmarks.evaluation.linear_probe",
    "fit_predict_ensemble": "rl_benchmarks.evaluation.linear_probe",
    "draw_portion": "rl_benchmarks.evaluation.linear_probe",
    "knn_predict": "rl_benchmarks.evaluation.knn",
    "knn_probe": "rl_benchmarks.evaluation.knn",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rl_benchmarks.evaluation' has no attribute {name!r}")
