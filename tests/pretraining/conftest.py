"""Tiny iBOT set-ups: a 2-block ViT with 8-px patches on 32/16-px crops of small images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> str:
    """Eight 40x40 H&E-ish images (pink/purple noise) plus one RGBA image."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(8):
        base = np.array([200, 120, 180]) if i % 2 else np.array([120, 80, 170])
        arr = np.clip(base + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"tile{i}.png")
    return str(root)
