"""Tissue ("matter") detection on a low-resolution RGB image of a slide.

Why: tiles are kept only where there is tissue; background, pen and ink marks, slide
borders and debris must not become tiles. The detector works on an image at about
8 µm/px (see :func:`rl_benchmarks.slides.tiling.read_mask_image`) and is expressed in
µm so that its morphology does not depend on the pyramid.

Steps (defaults in :class:`TissueParams`):

1. background colour = the median of the brightest low-saturation pixels (works for
   white and grey backgrounds); transparent pixels (outside the scanned area) are
   background;
2. two tissue cues on a box-filtered image: HSV saturation, and optical density
   relative to the background; each threshold is Otsu's, clamped into a range so that a
   background-only slide gives nothing and faint tissue is not lost next to dark tissue;
3. pen and ink: blue/cyan, green and red marks by hue and saturation, black ink by
   hysteresis on darkness seeded by large very dark blobs, and very dark specks; pen pixels (dilated) are
   removed after hole filling, so a pen circle drawn on tissue leaves a hole;
4. morphology: square closing, hole filling (small holes only), small-object removal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class TissueParams:
    """Tissue detector parameters (areas in µm², lengths in µm)."""

    saturation_range: tuple[float, float] = (0.05, 0.1)
    """Otsu threshold on HSV saturation, clamped into this range."""
    od_range: tuple[float, float] = (0.08, 0.25)
    """Otsu threshold on optical density (max over RGB, relative to background), clamped."""
    smooth_um: float = 24.0
    """Box filter size before thresholding (denoises JPEG noise and dust)."""
    closing_um: float = 16.0
    """Radius of the morphological closing that bridges small gaps in faint tissue."""
    min_object_um2: float = 20_000.0
    """Connected tissue regions smaller than this are debris (0.02 mm², about 140 µm²)."""
    max_hole_um2: float = 10_000.0
    """Holes (lumens, tears) smaller than this are filled."""
    remove_pen: bool = True
    """Detect blue/green/red/black pen and ink and exclude it."""
    pen_min_saturation: float = 0.2
    """Minimal saturation of a blue pen pixel (hue 190-250°)."""
    green_pen_min_saturation: float = 0.15
    """Minimal saturation of a green/cyan pen pixel (hue 70-190°, never H&E; faded pen)."""
    red_pen_min_saturation: float = 0.45
    """Minimal saturation of a red pen pixel (eosin is pink, red pen is more saturated)."""
    black_seed_value: float = 0.2
    """HSV value below which a pixel is certainly black ink (seed of the black-pen mask)."""
    black_grow_value: float = 0.42
    """Dark pixels (value below this) connected to a seed are black ink too."""
    black_seed_um2: float = 20_000.0
    """Black seeds smaller than this are dark tissue (dense nuclei), not ink."""
    pen_margin_um: float = 24.0
    """Pen masks are dilated by this radius (their halo is not clean tissue)."""


@dataclass
class TissueMask:
    """Output of :func:`detect_tissue`."""

    mask: np.ndarray
    """(H, W) bool, True on tissue."""
    pen: np.ndarray
    """(H, W) bool, True on detected pen / ink (already excluded from ``mask``)."""
    background: tuple[int, int, int]
    saturation_threshold: float
    od_threshold: float
    mpp: float

    def info(self) -> dict:
        """JSON-able summary (fractions, thresholds)."""
        return {
            "tissue_fraction": float(self.mask.mean()) if self.mask.size else 0.0,
            "pen_fraction": float(self.pen.mean()) if self.pen.size else 0.0,
            "background_rgb": list(self.background),
            "saturation_threshold": self.saturation_threshold,
            "od_threshold": self.od_threshold,
            "mask_mpp": self.mpp,
        }


def _otsu_clamped(values: np.ndarray, lo: float, hi: float) -> float:
    from skimage.filters import threshold_otsu

    if values.size == 0 or float(values.max()) - float(values.min()) < 1e-6:
        return hi
    return float(np.clip(threshold_otsu(values, nbins=256), lo, hi))


def _px(um: float, mpp: float) -> float:
    return um / mpp


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] (float32, vectorised)."""
    r, g, b = (rgb[..., i].astype(np.float32) * np.float32(1 / 255) for i in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    c = mx - mn
    s = c / np.maximum(mx, np.float32(1e-6))
    inv = np.float32(60.0) / np.maximum(c, np.float32(1e-6))
    h = np.where(mx == r, ((g - b) * inv) % np.float32(360.0),
                 np.where(mx == g, (b - r) * inv + np.float32(120.0),
                          (r - g) * inv + np.float32(240.0)))
    h[c <= 0] = 0.0
    return h.astype(np.float32, copy=False), s, mx


def estimate_background(
    rgb: np.ndarray, valid: np.ndarray | None = None, hsv: tuple | None = None
) -> tuple[int, int, int]:
    """Background colour: median of the brightest 10% of low-saturation pixels."""
    _, s, v = hsv if hsv is not None else _hsv(rgb)
    ok = s < 0.1
    if valid is not None:
        ok &= valid
    if ok.sum() < 16:
        return (255, 255, 255)
    thr = np.percentile(v[ok], 90)
    sel = ok & (v >= thr)
    bg = np.median(rgb[sel].reshape(-1, 3), axis=0)
    return tuple(int(x) for x in bg)  # type: ignore[return-value]


def _remove_small(mask: np.ndarray, max_px: int) -> np.ndarray:
    """Drop connected regions (8-connectivity) of at most ``max_px`` pixels."""
    from scipy import ndimage as ndi

    if max_px < 1 or not mask.any():
        return mask
    lab, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    keep = np.bincount(lab.ravel(), minlength=n + 1) > max_px
    keep[0] = False
    return keep[lab]


def _square_max(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy import ndimage as ndi

    if radius < 1:
        return mask
    return ndi.maximum_filter(mask.view(np.uint8), size=2 * radius + 1, mode="nearest") > 0


def _closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square binary closing; edge-replicating, so it does not erode at the image border."""
    from scipy import ndimage as ndi

    if radius < 1:
        return mask
    size = 2 * radius + 1
    grown = ndi.maximum_filter(mask.view(np.uint8), size=size, mode="nearest")
    return ndi.minimum_filter(grown, size=size, mode="nearest") > 0


def _hue_of(rgb: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Hue (degrees) of the pixels ``rgb.reshape(-1, 3)[index]`` only."""
    if index.size == 0:
        return np.zeros(0, np.float32)
    h, _, _ = _hsv(rgb.reshape(-1, 3)[index][None])
    return h[0]


def detect_pen(
    rgb: np.ndarray, mpp: float, params: TissueParams = TissueParams(), hsv: tuple | None = None
) -> np.ndarray:
    """Boolean mask of blue/green/red pen and black ink (not dilated)."""
    from scipy import ndimage as ndi

    if hsv is None:
        hsv = _hsv(rgb)
    _, s, v = hsv
    shape = s.shape
    pen = np.zeros(shape[0] * shape[1], bool)
    cand = np.flatnonzero(
        (s > min(params.green_pen_min_saturation, params.pen_min_saturation,
                 params.red_pen_min_saturation)).ravel()
    )
    h = _hue_of(rgb, cand)
    sc, vc = s.ravel()[cand], v.ravel()[cand]
    green = (h >= 70) & (h < 190) & (sc > params.green_pen_min_saturation) & (vc < 0.95)
    blue = (h >= 190) & (h <= 250) & (sc > params.pen_min_saturation) & (vc < 0.95)
    red = ((h >= 340) | (h <= 20)) & (sc > params.red_pen_min_saturation)
    pen[cand[green | blue | red]] = True
    pen = pen.reshape(shape)
    seeds = v < params.black_seed_value
    if seeds.any():
        seeds = _remove_small(seeds, int(params.black_seed_um2 / (mpp * mpp)))
        if seeds.any():
            lab, n = ndi.label(v < params.black_grow_value, structure=np.ones((3, 3), bool))
            keep = np.zeros(n + 1, bool)
            keep[np.unique(lab[seeds])] = True
            keep[0] = False
            pen |= keep[lab]
    return pen


def detect_tissue(
    rgb: np.ndarray,
    mpp: float,
    params: TissueParams = TissueParams(),
    valid: np.ndarray | None = None,
) -> TissueMask:
    """Detect tissue in an (H, W, 3) uint8 image whose pixels are ``mpp`` µm wide.

    ``valid`` marks pixels that were scanned (False = outside the slide, background).
    """
    from scipy import ndimage as ndi

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"detect_tissue: expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if not (mpp > 0):
        raise ValueError(f"detect_tissue: mpp must be positive, got {mpp}")
    hgt, wid = rgb.shape[:2]
    empty = np.zeros((hgt, wid), bool)
    if hgt == 0 or wid == 0:
        return TissueMask(empty, empty.copy(), (255, 255, 255), 1.0, 1.0, mpp)
    if valid is None:
        valid = np.ones((hgt, wid), bool)
    size = max(1, int(round(_px(params.smooth_um, mpp))) | 1)
    if size > 1:
        smooth = ndi.uniform_filter(rgb, size=(size, size, 1), mode="nearest")
    else:
        smooth = rgb
    hsv = _hsv(smooth)
    s = hsv[1]
    stride = max(1, int(np.sqrt(hgt * wid / 1e6)))  # thresholds from <= ~1M sampled pixels
    sub = (slice(None, None, stride), slice(None, None, stride))
    bg = estimate_background(smooth[sub], valid[sub], tuple(x[sub] for x in hsv))
    # optical density relative to the background, max over channels = -log10 of the min ratio
    ratio = np.minimum.reduce([(smooth[..., i].astype(np.float32) + 1.0) / (bg[i] + 1.0)
                               for i in range(3)])
    od = -np.log10(ratio)
    ts = _otsu_clamped(s[sub][valid[sub]], *params.saturation_range)
    to = _otsu_clamped(od[sub][valid[sub]], *params.od_range)
    tissue = ((s > ts) | (od > to)) & valid
    if params.remove_pen:
        pen = detect_pen(smooth, mpp, params, hsv) & valid
        pen_wide = _square_max(pen, max(1, round(_px(params.pen_margin_um, mpp)))) if pen.any() else pen
        # black specks (ink dots, debris) on the raw pixels, where smoothing would hide them
        raw_v = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
        pen_wide |= raw_v < round(255 * params.black_seed_value)
    else:
        pen_wide = empty.copy()
    tissue &= ~pen_wide
    if params.closing_um > 0:
        tissue = _closing(tissue, int(round(_px(params.closing_um, mpp))))
    hole_px = int(params.max_hole_um2 / (mpp * mpp))
    if hole_px > 1:
        lab, n = ndi.label(~tissue)
        if n:
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
            fill = sizes <= hole_px
            fill[0] = False
            fill[border] = False
            tissue |= fill[lab]
    tissue &= ~pen_wide & valid
    tissue = _remove_small(tissue, int(params.min_object_um2 / (mpp * mpp)))
    return TissueMask(tissue, pen_wide, bg, ts, to, mpp)


def params_dict(params: TissueParams) -> dict:
    """Parameters as a JSON-able dict (for the tiling record)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()}

