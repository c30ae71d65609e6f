"""iBOT pre-training ("train your own Phikon"): ``rlbench pretrain``.

Modules: ``ibot`` (backbones, heads, loss, EMA, schedules), ``masking`` (blockwise masks),
``augment`` (H&E multi-crop), ``data`` (image folders and slides through coords),
``train`` (config composed by Hydra, loop, DDP, checkpoints, resume, export, and
``run(cfg) -> PretrainResult``, the whole command that ``rlbench pretrain`` calls).
"""

from __future__ import annotations

from rl_benchmarks.utils.lazy import lazy_exports

_LAZY = {
    "make_config": "rl_benchmarks.pretraining.train",
    "run": "rl_benchmarks.pretraining.train",
    "PretrainResult": "rl_benchmarks.pretraining.train",
    "Trainer": "rl_benchmarks.pretraining.train",
    "export_teacher": "rl_benchmarks.pretraining.train",
    "PretrainError": "rl_benchmarks.pretraining.train",
    "build_vit": "rl_benchmarks.pretraining.ibot",
    "iBOTHead": "rl_benchmarks.pretraining.ibot",
    "iBOTLoss": "rl_benchmarks.pretraining.ibot",
    "MaskGenerator": "rl_benchmarks.pretraining.masking",
    "MultiCropAugmentation": "rl_benchmarks.pretraining.augment",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
