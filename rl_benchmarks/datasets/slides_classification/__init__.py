"""Slide cohorts: Camelyon16, TCGA (+ unions) and one's own CSV; the torch datasets."""

from rl_benchmarks.datasets.slides_classification.camelyon16 import load_camelyon16
from rl_benchmarks.datasets.slides_classification.core import (
    SlideClassificationDataset,
    SlideFeaturesDataset,
    SlideTensors,
)
from rl_benchmarks.datasets.slides_classification.csv_cohort import load_csv_cohort
from rl_benchmarks.datasets.slides_classification.tcga import load_histo, load_label, load_tcga

__all__ = [
    "SlideClassificationDataset",
    "SlideFeaturesDataset",
    "SlideTensors",
    "load_camelyon16",
    "load_csv_cohort",
    "load_histo",
    "load_label",
    "load_tcga",
]
