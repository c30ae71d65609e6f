"""Generated slides and a tiny random ViT for the extraction tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TINY_ARGS = ["feature_extractor.pretrained=false", "+feature_extractor.depth=1",
        "+feature_extractor.embed_dim=32", "+feature_extractor.num_heads=2"]


def tissue_image(height: int, width: int, blocks, seed: int = 0) -> np.ndarray:
    """White background with H&E-like (pink/purple) noisy rectangles."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 244, np.uint8)
    for y0, x0, y1, x1 in blocks:
        h, w = y1 - y0, x1 - x0
        base = np.array([200, 110, 170]) + rng.normal(0, 25, (h, w, 3))
        img[y0:y1, x0:x1] = np.clip(base, 0, 255).astype(np.uint8)
    return img


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory) -> Path:
    """Three small pyramidal TIFFs at 0.5 mpp with tissue blocks."""
    from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

    root = tmp_path_factory.mktemp("slides")
    layouts = {
        "a.tif": [(100, 100, 900, 700)],
        "b.tif": [(0, 0, 500, 1000), (600, 600, 1000, 1000)],
        "c.tif": [(300, 200, 700, 900)],
    }
    for i, (name, blocks) in enumerate(layouts.items()):
        write_pyramidal_tiff(root / name, tissue_image(1000, 1100, blocks, seed=i), mpp=0.5,
                             tile_size=256, compression="jpeg")
    return root


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """Hydra overrides for a tiny random-init iBOT ViT (1 block, 32-d)."""
    return list(TINY_ARGS)
