"""Cohorts and datasets: ``load_dataset`` (every reference cohort, or a CSV of one's own),
``SlideClassificationDataset`` (per-slide features for MIL training), the tile loaders.

Names are resolved lazily, so ``import rl_benchmarks.datasets`` stays cheap.
"""

from __future__ import annotations

from rl_benchmarks.utils.lazy import lazy_exports

_SLIDES = "rl_benchmarks.datasets.slides_classification"
_TILES = "rl_benchmarks.datasets.tiles_classification"
_LAZY = {
    "load_dataset": "rl_benchmarks.datasets.loading",
    "load_slide_table": "rl_benchmarks.datasets.loading",
    "SlideClassificationDataset": f"{_SLIDES}.core",
    "SlideFeaturesDataset": f"{_SLIDES}.core",
    "SlideTensors": f"{_SLIDES}.core",
    "load_csv_cohort": f"{_SLIDES}.csv_cohort",
    "load_camelyon16": f"{_SLIDES}.camelyon16",
    "load_tcga": f"{_SLIDES}.tcga",
    "load_histo": f"{_SLIDES}.tcga",
    "load_label": f"{_SLIDES}.tcga",
    "load_nct_crc": f"{_TILES}.nct_crc",
    "load_camelyon17_wilds": f"{_TILES}.camelyon17_wilds",
    "load_image_folder": f"{_TILES}.image_folder",
    "build_task_config": "rl_benchmarks.datasets.tasks",
    "task_type": "rl_benchmarks.datasets.tasks",
    "CohortError": "rl_benchmarks.datasets.validation",
    "MissingFileError": "rl_benchmarks.datasets.validation",
    "MissingFeaturesWarning": "rl_benchmarks.datasets.validation",
    "ZeroSurvivalTimeWarning": "rl_benchmarks.datasets.validation",
    "read_table": "rl_benchmarks.datasets.validation",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
