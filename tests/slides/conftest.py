"""Helpers for slide tests: small generated pyramidal TIFFs with a known layout."""

from __future__ import annotations

import numpy as np
import pytest

from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

BG = (242, 242, 242)
PINK = (214, 120, 170)
T0 = 448  # level-0 px of a 224-px tile at 0.5 mpp on a 0.25-mpp (40x) slide


def layout_image() -> np.ndarray:
    """6 x 5 tiles of 448 px. Block A covers cols 1-3 of rows 1-2 fully and 75% of col 4;
    block B covers the top half of row 4 on cols 0-4 (fraction 0.5 < 0.6)."""
    rng = np.random.default_rng(0)
    img = np.empty((5 * T0, 6 * T0, 3), np.uint8)
    img[:] = BG
    img[T0 : 3 * T0, T0 : 4 * T0 + 3 * T0 // 4] = PINK
    img[4 * T0 : 4 * T0 + T0 // 2, 0 : 5 * T0] = PINK
    noise = rng.integers(-6, 7, img.shape[:2] + (1,))
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


EXPECTED = {(c, r) for c in range(1, 5) for r in (1, 2)}


@pytest.fixture(scope="session")
def layout_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slides") / "layout.tiff"
    return write_pyramidal_tiff(path, layout_image(), mpp=0.25, compression="jpeg")


@pytest.fixture(scope="session")
def layout_slide_nompp(tmp_path_factory):
    path = tmp_path_factory.mktemp("slides") / "layout_nompp.tiff"
    return write_pyramidal_tiff(path, layout_image(), mpp=None, compression="jpeg")
