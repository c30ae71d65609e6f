"""A small pyramidal JPEG TIFF written with tifffile, for the JPEG-tile decoding tests
(tests/slides/test_jpeg_tiles.py, tests/cuda/test_jpeg_decode_cuda.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyramid_image(h: int = 1200, w: int = 1600) -> np.ndarray:
    """Smooth colour waves plus noise: JPEG-compressible, with structure at every scale."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 60 * np.sin(xx / 37.0) + 30 * np.cos(yy / 23.0),
                    100 + 50 * np.sin((xx + yy) / 51.0),
                    150 + 40 * np.cos(xx / 13.0) * np.sin(yy / 17.0)], -1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def write_pyramid(path: Path, compression: str = "jpeg") -> Path:
    """A 1600x1200 tiled TIFF (256-px tiles, 0.25 mpp; tifffile writes JPEG as YCbCr JFIF
    streams) with a level at exactly 4x: OpenSlide's generic-tiff sees levels of downsample 1
    and 4, so DeepZoom levels 2x and 8x are shrunk from slide levels 0 and 1."""
    import tifffile

    img = pyramid_image()
    h, w = img.shape[:2]
    kw = {"compression": compression, "photometric": "rgb", "tile": (256, 256),
          "metadata": None, "software": False}
    if compression == "jpeg":
        kw["compressionargs"] = {"level": 90}
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER", **kw)
        small = img.reshape(h // 4, 4, w // 4, 4, 3).mean((1, 3)).astype(np.uint8)
        tw.write(small, subfiletype=1, **kw)
    return path
