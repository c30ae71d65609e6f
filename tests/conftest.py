"""Shared fixtures. Tier-2 tests use ``real_data`` (the folder in $RLB_REAL_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Root of the real slides and tiles; skips with a visible reason when absent."""
    root = os.environ.get("RLB_REAL_DATA")
    if not root:
        pytest.skip("RLB_REAL_DATA is not set: real-data (tier 2) test skipped")
    path = Path(root)
    if not path.is_dir():
        pytest.skip(f"RLB_REAL_DATA={root} is not a folder: real-data (tier 2) test skipped")
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny models: one intra-op thread is faster on a shared 2-core CPU (no
    OpenMP spinning) and keeps results reproducible. Benchmarks are not tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Every test that reaches the ``real_data`` fixture, directly or through another
    fixture, carries the ``real_data`` marker (so ``-m "not real_data"`` deselects it)."""
    for item in items:
        if "real_data" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
                "real_data"):
            item.add_marker(pytest.mark.real_data)
