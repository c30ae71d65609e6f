"""The demo: a synthetic H&E cohort with a planted signal, for ``rlbench demo`` and tests."""

from rl_benchmarks.demo.synthetic import (
    SyntheticCohort,
    generate_cohort,
    load_cohort,
    planted_tile_fraction,
    render_slide,
)
from rl_benchmarks.slides.geometry import grid_coords

__all__ = [
    "SyntheticCohort",
    "generate_cohort",
    "grid_coords",
    "load_cohort",
    "planted_tile_fraction",
    "render_slide",
]
