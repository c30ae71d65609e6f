"""Shared fixtures. Tier-2 tests use ``real_data`` (the folder in $RLB_REAL_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
