"""Evaluation of frozen features: linear probe, kNN probe (and fine-tuning, in
:mod:`rl_benchmarks.evaluation.finetune`). Names resolve lazily so that importing the
package stays cheap."""

from __future__ import annotations

from rl_benchmarks.utils.lazy import lazy_exports

_LAZY = {
    "LinearProbeConfig": "rl_benchmarks.evaluation.linear_probe",
    "linear_probe": "rl_benchmarks.evaluation.linear_probe",
    "fit_predict_ensemble": "rl_benchmarks.evaluation.linear_probe",
    "draw_portion": "rl_benchmarks.evaluation.linear_probe",
    "knn_predict": "rl_benchmarks.evaluation.knn",
    "knn_probe": "rl_benchmarks.evaluation.knn",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
