"""Slide stand-ins for tests that compare geometry with OpenSlide's DeepZoomGenerator."""

from __future__ import annotations

from openslide.deepzoom import DeepZoomGenerator


def fake_deepzoom(size: tuple[int, int], tile_size: int = 224) -> DeepZoomGenerator:
    """A DeepZoomGenerator over a one-level slide of ``size`` (it reads only these
    attributes to compute its geometry; no pixel is read)."""

    class Fake:
        level_count = 1
        level_dimensions = (size,)
        level_downsamples = (1.0,)
        dimensions = size
        properties: dict = {}

        def get_best_level_for_downsample(self, d):
            return 0

    return DeepZoomGenerator(Fake(), tile_size=tile_size, overlap=0)
