"""Utilities. Names of the reference's ``rl_benchmarks.utils`` are importable from
here; they are resolved lazily so that importing this package stays cheap."""

from __future__ import annotations

from rl_benchmarks.utils.lazy import lazy_exports

_LAZY = {
    # reference name -> module that defines it
    "slide_level_train_step": "rl_benchmarks.trainers.utils",
    "slide_level_val_step": "rl_benchmarks.trainers.utils",
    "pad_collate_fn": "rl_benchmarks.utils.features",
    "preload_features": "rl_benchmarks.utils.features",
    "set_seed": "rl_benchmarks.utils.seed",
    "params2experiment_name": "rl_benchmarks.utils.cross_validation",
    "resume_training": "rl_benchmarks.utils.cross_validation",
    "sigmoid": "rl_benchmarks.utils.functional",
    "softmax": "rl_benchmarks.utils.functional",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
