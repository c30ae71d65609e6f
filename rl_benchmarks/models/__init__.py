"""Models: tile feature extractors and MIL slide models.

The reference's names import from here (``from rl_benchmarks.models import iBOTViT,
Chowder``). They are resolved lazily, so importing one family does not import the other.
"""

from __future__ import annotations

from rl_benchmarks.utils.lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _LAZY)
