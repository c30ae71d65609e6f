"""Fixtures of the report tests: a small synthetic cohort and helpers."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    """Six 768-px synthetic slides (three positive), generated once per session."""
    from rl_benchmarks.demo.synthetic import generate_cohort

    root = tmp_path_factory.mktemp("cohort")
    return generate_cohort(root, n_patients=6, n_slides=6, slide_size=768, seed=1, progress=False)
