"""Models: tile feature extractors and MIL slide models.

The reference's names import from here (``from rl_benchmarks.models import iBOTViT,
Chowder``). They are resolved lazily, so importing one family does not import the other.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Extractor": "rl_benchmarks.models.feature_extractors",
    "ParallelExtractor": "rl_benchmarks.models.feature_extractors",
    "iBOTViT": "rl_benchmarks.models.feature_extractors",
    "create_extractor": "rl_benchmarks.models.feature_extractors",
    "MeanPool": "rl_benchmarks.models.slide_models",
    "Chowder": "rl_benchmarks.models.slide_models",
    "ABMIL": "rl_benchmarks.models.slide_models",
    "DSMIL": "rl_benchmarks.models.slide_models",
    "HIPTMIL": "rl_benchmarks.models.slide_models",
    "TransMIL": "rl_benchmarks.models.slide_models",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rl_benchmarks.models' has no attribute {name!r}")
