"""Synthetic whole-slide images: tiled pyramidal TIFFs that OpenSlide opens.

Why: tests, demos and benchmarks need slides with a known tissue layout and a known
mpp, and no real multi-level pyramidal TIFF fits in the test data. The files written
here are read by OpenSlide's ``generic-tiff`` driver: a page pyramid (one tiled page
per level, each half the size of the previous), resolution tags in pixels per
centimetre so that ``openslide.mpp-x`` is set (``mpp=None`` writes no resolution).

Two sources of pixels:

* an ``(H, W, 3)`` uint8 array (levels are 2×2 box-averaged);
* a callable ``render(level, y, x, h, w) -> (h, w, 3) uint8 | None`` called tile by
  tile in the coordinates of ``level`` (downsample ``2**level``), with ``shape=(H, W)``.
  ``None`` means "plain background"; that tile is encoded once and its bytes reused,
  which keeps writing a 100,000 × 80,000 px slide fast. :class:`TissueIslands` is
  such a callable (H&E-like islands on a light background).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RenderFn = Callable[[int, int, int, int, int], "np.ndarray | None"]

_COMPRESSIONS = ("jpeg", "deflate", "lzw", "none")


def _encoder(compression: str, quality: int) -> tuple[Callable[[np.ndarray], bytes] | None, dict]:
    """Return (tile encoder, tifffile write kwargs) for ``compression``."""
    import imagecodecs

    if compression == "jpeg":
        # Same encoding as tifffile's own JPEG path: YCbCr, 2x2 chroma subsampling.
        def enc(tile: np.ndarray) -> bytes:
            return imagecodecs.jpeg_encode(
                tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
            )

        return enc, {"compression": "jpeg", "photometric": "rgb", "subsampling": (2, 2)}
    if compression == "deflate":
        return (lambda t: imagecodecs.zlib_encode(t.tobytes(), level=6)), {
            "compression": "adobe_deflate",
            "photometric": "rgb",
        }
    if compression == "lzw":
        return (lambda t: imagecodecs.lzw_encode(t.tobytes())), {
            "compression": "lzw",
            "photometric": "rgb",
        }
    return (lambda t: np.ascontiguousarray(t).tobytes()), {"photometric": "rgb"}


def _downsample2(img: np.ndarray) -> np.ndarray:
    """2×2 box average (odd edges padded by replication), uint8 in and out."""
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    f = img.reshape(img.shape[0] // 2, 2, img.shape[1] // 2, 2, 3).astype(np.uint16)
    return ((f.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8)


def default_n_levels(height: int, width: int, tile_size: int) -> int:
    """Levels until the smallest one fits in one tile."""
    return 1 + max(0, math.ceil(math.log2(max(height, width) / tile_size)))


def write_pyramidal_tiff(
    path: str | os.PathLike,
    image: np.ndarray | RenderFn,
    mpp: float | None,
    tile_size: int = 256,
    compression: str = "jpeg",
    n_levels: int | None = None,
    *,
    shape: tuple[int, int] | None = None,
    quality: int = 90,
    background: tuple[int, int, int] = (242, 242, 242),
) -> Path:
    """Write a tiled pyramidal TIFF readable by OpenSlide (generic-tiff) and return its path.

    ``image`` is an ``(H, W, 3)`` uint8 array or a render callable (then ``shape=(H, W)``
    is required, see the module docstring). ``mpp`` (µm per level-0 pixel) is written as
    resolution tags in pixels/cm; ``None`` writes none. ``tile_size`` must be a multiple
    of 16 (JPEG 2×2 subsampling). ``compression`` is one of jpeg, deflate, lzw, none.
    """
    import tifffile

    path = Path(path)
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression={compression!r}: expected one of {_COMPRESSIONS}")
    if tile_size <= 0 or tile_size % 16:
        raise ValueError(f"tile_size={tile_size}: must be a positive multiple of 16")
    if mpp is not None and not (mpp > 0):
        raise ValueError(f"mpp={mpp}: must be positive or None")
    if callable(image):
        if shape is None:
            raise ValueError("shape=(height, width) is required when image is a callable")
        height, width = int(shape[0]), int(shape[1])
        render: RenderFn = image
        array = None
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(
                f"image must be an (H, W, 3) uint8 array, got shape {array.shape} {array.dtype}"
            )
        height, width = array.shape[:2]
        render = None  # type: ignore[assignment]
    if n_levels is None:
        n_levels = default_n_levels(height, width, tile_size)
    encode, kwargs = _encoder(compression, quality)
    bg_tile = np.empty((tile_size, tile_size, 3), np.uint8)
    bg_tile[:] = np.asarray(background, np.uint8)
    bg_bytes = encode(bg_tile)
    # Render callables may return the very same array object for repeated tiles (see
    # TissueIslands); its encoded bytes are then reused (keyed by identity, kept alive).
    reuse: dict[int, tuple[np.ndarray, bytes]] = {}

    def tiles(level_img: np.ndarray | None, level: int, h: int, w: int) -> Iterator[bytes]:
        for y in range(0, h, tile_size):
            for x in range(0, w, tile_size):
                th, tw = min(tile_size, h - y), min(tile_size, w - x)
                if level_img is not None:
                    pix = level_img[y : y + th, x : x + tw]
                else:
                    pix = render(level, y, x, th, tw)
                    if pix is None:
                        yield bg_bytes
                        continue
                    hit = reuse.get(id(pix))
                    if hit is not None and hit[0] is pix:
                        yield hit[1]
                        continue
                    if pix.shape == (tile_size, tile_size, 3) and len(reuse) < 256:
                        data = encode(np.ascontiguousarray(pix, np.uint8))
                        reuse[id(pix)] = (pix, data)
                        yield data
                        continue
                    pix = np.asarray(pix, np.uint8)
                    if pix.shape != (th, tw, 3):
                        raise ValueError(
                            f"render({level}, {y}, {x}, {th}, {tw}) returned shape {pix.shape}"
                        )
                if (th, tw) != (tile_size, tile_size):
                    full = bg_tile.copy()
                    full[:th, :tw] = pix
                    pix = full
                yield encode(np.ascontiguousarray(pix))

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    level_img = array
    h, w = height, width
    with tifffile.TiffWriter(tmp, bigtiff=height * width * 3 > 2**31) as tw:
        for level in range(n_levels):
            if level > 0:
                h, w = math.ceil(h / 2), math.ceil(w / 2)
                if level_img is not None:
                    level_img = _downsample2(level_img)
            res = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * 2**level)
                res = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            tw.write(
                tiles(level_img, level, h, w),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile_size, tile_size),
                subfiletype=1 if level else 0,
                metadata=None,
                software=False,
                **res,
                **kwargs,
            )
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# A lazily rendered H&E-like slide: tissue islands (ellipses) on a light background.


def _he_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """An H&E-like texture tile: pink stroma with purple nuclei blobs."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.empty((size, size, 3), np.float32)
    base[:] = (225, 150, 190)  # eosin pink
    noise = rng.normal(0, 10, (size // 8 + 1, size // 8 + 1, 3)).astype(np.float32)
    base += np.kron(noise, np.ones((8, 8, 1), np.float32))[:size, :size]
    n_nuclei = size * size // 600
    cy, cx = rng.integers(0, size, n_nuclei), rng.integers(0, size, n_nuclei)
    nuc = np.zeros((size, size), bool)
    r = 4
    for y, x in zip(cy, cx):
        y0, y1, x0, x1 = max(0, y - r), min(size, y + r), max(0, x - r), min(size, x + r)
        nuc[y0:y1, x0:x1] |= (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2 <= r * r
    base[nuc] = (120, 60, 150)  # haematoxylin purple
    return np.clip(base, 0, 255).astype(np.uint8)


@dataclass
class TissueIslands:
    """Render callable: elliptic tissue islands on a light background, at any level.

    ``islands`` rows are ``(cy, cx, ry, rx)`` in level-0 pixels. Tiles that touch no
    island return ``None`` (the writer reuses one encoded background tile); tiles fully
    inside an island reuse a small pool of texture tiles, so a gigapixel slide writes
    in about a minute.
    """

    height: int
    width: int
    islands: np.ndarray
    tile_size: int = 256
    background: tuple[int, int, int] = (242, 242, 242)
    seed: int = 0
    n_textures: int = 8
    _textures: list[np.ndarray] = field(default_factory=list, repr=False)

    @classmethod
    def random(
        cls,
        height: int,
        width: int,
        n_islands: int = 12,
        coverage: float = 0.2,
        seed: int = 0,
        tile_size: int = 256,
    ) -> TissueIslands:
        """Random non-overlapping-ish islands covering about ``coverage`` of the slide."""
        rng = np.random.default_rng(seed)
        area = coverage * height * width / n_islands
        rows = []
        for _ in range(n_islands):
            aspect = rng.uniform(0.5, 2.0)
            ry = math.sqrt(area * aspect / math.pi)
            rx = area / (math.pi * ry)
            ry, rx = min(ry, height / 2.2), min(rx, width / 2.2)
            cy = rng.uniform(ry, height - ry)
            cx = rng.uniform(rx, width - rx)
            rows.append((cy, cx, ry, rx))
        return cls(height, width, np.asarray(rows, np.float64), tile_size=tile_size, seed=seed)

    def mask(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Boolean tissue mask of the window (level coordinates)."""
        d = 2.0**level
        ys = (np.arange(y, y + h) + 0.5) * d
        xs = (np.arange(x, x + w) + 0.5) * d
        out = np.zeros((h, w), bool)
        for cy, cx, ry, rx in self._touching(ys[0], ys[-1], xs[0], xs[-1]):
            out |= ((ys[:, None] - cy) / ry) ** 2 + ((xs[None, :] - cx) / rx) ** 2 <= 1.0
        return out

    def _touching(self, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
        isl = self.islands
        hit = (
            (isl[:, 0] + isl[:, 2] >= y0)
            & (isl[:, 0] - isl[:, 2] <= y1)
            & (isl[:, 1] + isl[:, 3] >= x0)
            & (isl[:, 1] - isl[:, 3] <= x1)
        )
        return isl[hit]

    def _texture(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        if not self._textures:
            rng = np.random.default_rng(self.seed)
            size = max(self.tile_size, 16)
            self._textures = [_he_texture(rng, size) for _ in range(self.n_textures)]
        k = (y // max(h, 1) * 7919 + x // max(w, 1) * 104729 + level) % len(self._textures)
        tex = self._textures[k]
        return tex if tex.shape[:2] == (h, w) else tex[:h, :w]

    def __call__(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray | None:
        d = 2.0**level
        if not len(self._touching(y * d, (y + h) * d, x * d, (x + w) * d)):
            return None
        m = self.mask(level, y, x, h, w)
        if not m.any():
            return None
        tex = self._texture(level, y, x, h, w)
        if m.all():
            return tex
        out = np.empty((h, w, 3), np.uint8)
        out[:] = np.asarray(self.background, np.uint8)
        out[m] = tex[m]
        return out
