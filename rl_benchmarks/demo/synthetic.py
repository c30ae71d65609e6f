"""A synthetic H&E cohort with a planted signal, for the demo and for tests.

Why: the demo and the picture tests need slides whose truth is known. Each slide is an
H&E-like image (pink fibrous stroma, purple nuclei, white background, lymphoid
aggregates that are dense and purple in *both* classes, blue or green pen marks on some
slides). Positive patients carry "tumour" islands: nests of large, pleomorphic nuclei on
a purplish cytoplasm. The islands decide the label, and the survival time is drawn from
a hazard that grows with the tumour burden, so both tasks have a learnable signal.

Slides are written as pyramidal JPEG TIFFs (OpenSlide ``generic-tiff``) through
:func:`rl_benchmarks.slides.synthetic.write_pyramidal_tiff`. The planted-island masks are
saved beside them (downsampled) so that tests can check that a model's top-scoring tiles
are the planted ones. Everything is deterministic under ``seed``.

Colours follow the Beer-Lambert model: optical density = haematoxylin concentration ×
H vector + eosin concentration × E vector (+ ink), then RGB = 255·exp(-OD).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rl_benchmarks.slides.geometry import tile_boxes_level0
from rl_benchmarks.utils.io import save_npy, write_csv, write_json
from rl_benchmarks.utils.seed import derive_seed

# Stain vectors (unit optical-density directions, Macenko-style reference values).
H_VEC = np.array([0.5626, 0.7201, 0.4062], np.float32)
E_VEC = np.array([0.2159, 0.8012, 0.5581], np.float32)
_INK_RGB = {"blue": (45, 70, 175), "green": (40, 140, 85)}
INK_OD = {k: -np.log(np.asarray(v, np.float32) / 255.0) for k, v in _INK_RGB.items()}
BACKGROUND_OD = 0.03
COHORT_COLUMNS = ["slide_path", "slide_id", "patient_id", "label", "time", "event"]


# ------------------------------------------------------------------------------------------
# Ground truth per tile.


def planted_tile_fraction(
    mask: np.ndarray, mask_downsample: int, coords: np.ndarray, tile_size: int, width: int, height: int
) -> np.ndarray:
    """Fraction of each tile ``[level, col, row]`` covered by the planted ``mask``.

    ``mask`` is the planted-island mask at ``1/mask_downsample`` of the level-0 size.
    """
    boxes = tile_boxes_level0(coords, tile_size, width, height)
    m = np.asarray(mask, np.float32)
    out = np.zeros(len(boxes), np.float64)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        ys = slice(y0 // mask_downsample, max(y0 // mask_downsample + 1, -(-y1 // mask_downsample)))
        xs = slice(x0 // mask_downsample, max(x0 // mask_downsample + 1, -(-x1 // mask_downsample)))
        patch = m[ys, xs]
        out[i] = float(patch.mean()) if patch.size else 0.0
    return out


# ------------------------------------------------------------------------------------------
# Rendering. Region shapes are drawn at 1/8 resolution and upsampled bilinearly; textures are
# small periodic tiles repeated over the slide; nuclei, vacuoles and ink are stamped from
# small kernels. This keeps a 2560² slide at well under a second.

_LOW = 8


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Zero-mean unit-variance noise with features of about ``scale`` pixels, (h, w) float32."""
    from scipy.ndimage import gaussian_filter

    g = gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), max(0.5, scale / 2.5))
    return (g - g.mean()) / (g.std() + 1e-8)


def _periodic_texture(rng: np.random.Generator, size: int, sigma: tuple[float, float]) -> np.ndarray:
    """A (size, size) periodic noise texture (unit variance), blurred by ``sigma`` (y, x)."""
    from scipy.ndimage import gaussian_filter

    g = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma, mode="wrap")
    return (g - g.mean()) / (g.std() + 1e-8)


def _tile_to(tex: np.ndarray, h: int, w: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Repeat a periodic texture over an (h, w) canvas, starting at ``offset``."""
    s = tex.shape[0]
    big = np.tile(tex, (h // s + 2, w // s + 2))
    return big[offset[0] : offset[0] + h, offset[1] : offset[1] + w]


def _bilinear(small: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a 2-D float field to (h, w), pixel centres aligned."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    small = np.asarray(small, np.float32)
    y0, y1, wy = axis(small.shape[0], h)
    x0, x1, wx = axis(small.shape[1], w)
    rows = small[y0] * (1 - wy[:, None]) + small[y1] * wy[:, None]
    return rows[:, x0] * (1 - wx[None, :]) + rows[:, x1] * wx[None, :]


def _blobs(
    rng: np.random.Generator,
    inside: np.ndarray,
    radius: tuple[float, float],
    roughness: float,
    n: int,
) -> np.ndarray:
    """``n`` irregular elliptic blobs (bool, same grid as ``inside``) centred in ``inside``."""
    h, w = inside.shape
    out = np.zeros((h, w), bool)
    ys, xs = np.nonzero(inside)
    if not len(ys):
        return out
    noise = _smooth_noise(rng, h, w, max(3.0, radius[0] / 2))
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(n):
        i = rng.integers(len(ys))
        ry = rng.uniform(*radius)
        rx = ry * rng.uniform(0.6, 1.6)
        theta = rng.uniform(0, math.pi)
        dy, dx = yy - ys[i], xx - xs[i]
        u = (dx * math.cos(theta) + dy * math.sin(theta)) / rx
        v = (-dx * math.sin(theta) + dy * math.cos(theta)) / ry
        out |= u * u + v * v + roughness * noise < 1.0
    return out


def _kernels(
    rng: np.random.Generator, n: int, radius: tuple[float, float], aspect: tuple[float, float],
    soft: float = 0.3, angle: float | None = None,
) -> list[np.ndarray]:
    """``n`` soft elliptic stamps (float32 in [0, 1]) with random radius, aspect and angle."""
    out = []
    for _ in range(n):
        ry = rng.uniform(*radius)
        rx = ry * rng.uniform(*aspect)
        th = rng.uniform(0, math.pi) if angle is None else angle + rng.normal(0, 0.2)
        r = int(math.ceil(max(ry, rx))) + 1
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
        u = (xx * math.cos(th) + yy * math.sin(th)) / rx
        v = (-xx * math.sin(th) + yy * math.cos(th)) / ry
        d = np.sqrt(u * u + v * v)
        out.append(np.clip((1.0 - d) / soft, 0.0, 1.0).astype(np.float32))
    return out


def _stamp(canvas: np.ndarray, points: np.ndarray, kernels: list[np.ndarray],
           rng: np.random.Generator, gain: tuple[float, float] = (1.0, 1.0)) -> None:
    """Stamp a random kernel (times a random gain) at each (y, x) point, keeping the maximum."""
    h, w = canvas.shape
    which = rng.integers(0, len(kernels), len(points))
    gains = rng.uniform(*gain, len(points)).astype(np.float32)
    for (y, x), k, g in zip(points.tolist(), which.tolist(), gains.tolist()):
        ker = kernels[k]
        r = ker.shape[0] // 2
        y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        patch = ker[y0 - (y - r) : y1 - (y - r), x0 - (x - r) : x1 - (x - r)]
        view = canvas[y0:y1, x0:x1]
        np.maximum(view, patch * g, out=view)


def _sample_points(rng: np.random.Generator, region: np.ndarray, density: float) -> np.ndarray:
    """Poisson points (y, x) with ``density`` per pixel inside the boolean ``region``."""
    h, w = region.shape
    n = rng.poisson(density * h * w)
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    keep = region[ys, xs]
    return np.stack([ys[keep], xs[keep]], 1)


def _pen_path(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Points (y, x), about one per two pixels, along a random smooth (spline) stroke."""
    from scipy.interpolate import CubicSpline

    n_ctrl = int(rng.integers(3, 6))
    pts = np.stack([rng.uniform(0.1, 0.9, n_ctrl) * h, rng.uniform(0.1, 0.9, n_ctrl) * w], 1)
    curve = CubicSpline(np.linspace(0, 1, n_ctrl), pts, bc_type="natural")(np.linspace(0, 1, 200))
    curve = np.clip(curve, 0, [h - 1, w - 1])
    seg = [np.linspace(a, b, int(np.hypot(*(b - a)) / 2) + 2) for a, b in zip(curve[:-1], curve[1:])]
    return np.concatenate(seg).astype(np.int64)


def render_slide(
    height: int,
    width: int,
    tumour_fraction: float,
    rng: np.random.Generator,
    pen: str | None = None,
    mpp: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one H&E-like slide.

    Returns ``(rgb (H, W, 3) uint8, planted (H, W) bool, tissue (H, W) bool)``.
    ``tumour_fraction`` is the target share of the tissue covered by tumour islands
    (0 = none); ``pen`` is None, "blue" or "green". Micro-structure sizes assume
    ``mpp`` µm per pixel (nuclei of a few µm).
    """
    from scipy.ndimage import binary_dilation, distance_transform_edt

    if pen not in (None, "blue", "green"):
        raise ValueError(f"pen={pen!r}: expected None, 'blue' or 'green'")
    if height < 64 or width < 64:
        raise ValueError(f"slide of {height}x{width} px is too small (at least 64x64)")
    px = 0.5 / mpp  # pixels per 0.5 µm
    hl, wl = math.ceil(height / _LOW), math.ceil(width / _LOW)

    # Tissue: an elliptic envelope roughened by smooth noise, 40-60 % of the slide.
    yy, xx = np.mgrid[0:hl, 0:wl]
    r2 = ((yy + 0.5 - hl / 2) / (0.46 * hl)) ** 2 + ((xx + 0.5 - wl / 2) / (0.46 * wl)) ** 2
    score = -r2 + 0.5 * _smooth_noise(rng, hl, wl, max(4.0, hl / 4))
    score -= 20.0 * np.maximum(r2 - 1.0, 0.0)
    coverage = rng.uniform(0.4, 0.6)
    tissue_low = score > np.quantile(score, 1 - coverage)
    inner = distance_transform_edt(tissue_low) > 50 * px / _LOW

    # Tumour islands: add blobs until the planted share of the tissue reaches the target.
    islands_low = np.zeros((hl, wl), bool)
    if tumour_fraction > 0:
        for _ in range(40):
            if islands_low[tissue_low].mean() >= tumour_fraction:
                break
            islands_low |= _blobs(rng, inner & ~islands_low, (70 * px / _LOW, 150 * px / _LOW), 0.3, 1)
        islands_low &= tissue_low
    # Lymphoid aggregates (dense purple, in both classes): a confounder, not the signal.
    near = binary_dilation(islands_low, iterations=int(25 * px / _LOW) + 1) if islands_low.any() else islands_low
    lymph_low = _blobs(rng, inner & ~near, (30 * px / _LOW, 60 * px / _LOW), 0.2, int(rng.integers(2, 5)))
    lymph_low &= tissue_low & ~islands_low

    # One upsampling of every low-resolution field: three masks and two smooth fields.
    tissue = _bilinear(tissue_low, height, width) > 0.5
    planted = (_bilinear(islands_low, height, width) > 0.5) & tissue
    lymph = (_bilinear(lymph_low, height, width) > 0.5) & tissue & ~planted
    stroma = tissue & ~planted & ~lymph
    blend = _bilinear(1.0 / (1.0 + np.exp(-2.5 * _smooth_noise(rng, hl, wl, 30 * px / _LOW))),
                      height, width)
    tone = _bilinear(_smooth_noise(rng, hl, wl, 40 * px / _LOW), height, width)

    # Eosin: fibrous stroma with two fibre directions blended, a purplish cytoplasm in islands.
    size = 512
    fa = _periodic_texture(rng, size, (1.4 * px, 6 * px))
    fb = _periodic_texture(rng, size, (6 * px, 1.4 * px))
    off = tuple(int(v) for v in rng.integers(0, size, 2))
    fib = blend * _tile_to(fa, height, width, off) + (1 - blend) * _tile_to(fb, height, width)
    e = np.where(tissue, 0.44 + 0.06 * tone + 0.09 * np.clip(fib, -2.5, 2.5), 0.0).astype(np.float32)
    e[planted] = 0.30 + 0.04 * tone[planted]
    h = np.where(tissue, 0.05, 0.0).astype(np.float32)
    h[planted] = 0.22

    # Vacuoles (fat, vessels): small white holes in the stroma.
    holes = np.zeros((height, width), np.float32)
    _stamp(holes, _sample_points(rng, stroma, 1 / (60000 * px * px)),
           _kernels(rng, 6, (8 * px, 22 * px), (0.7, 1.4), soft=0.15), rng)
    e *= 1 - 0.9 * holes

    # Nuclei: sparse elongated stroma nuclei, small dark lymphocytes, big pleomorphic tumour nuclei.
    nuc = np.zeros((height, width), np.float32)
    _stamp(nuc, _sample_points(rng, stroma & (holes < 0.1), 1 / (1500 * px * px)),
           _kernels(rng, 12, (2.0 * px, 3.0 * px), (2.0, 3.5)), rng, (0.95, 1.25))
    _stamp(nuc, _sample_points(rng, lymph, 1 / (120 * px * px)),
           _kernels(rng, 12, (4.5 * px, 5.5 * px), (0.9, 1.15)), rng, (1.3, 1.55))
    _stamp(nuc, _sample_points(rng, planted, 1 / (300 * px * px)),
           _kernels(rng, 16, (6.5 * px, 11 * px), (0.7, 1.5), soft=0.5), rng, (0.75, 1.05))
    chromatin = 1.0 + 0.2 * _tile_to(_periodic_texture(rng, 256, (1.0 * px, 1.0 * px)), height, width)
    h += nuc * chromatin * tissue
    e *= 1 - 0.6 * np.minimum(nuc, 1.0)

    # Ink: one or two strokes stamped with a round nib.
    ink = None
    if pen is not None:
        ink = np.zeros((height, width), np.float32)
        nib = _kernels(rng, 1, (7 * px, 7 * px), (1.0, 1.0), soft=0.3)
        for _ in range(int(rng.integers(1, 3))):
            _stamp(ink, _pen_path(rng, height, width), nib, rng, (0.85, 0.95))

    # Per-slide stain variation (±8 %), optical density, then RGB, one channel at a time.
    hv = H_VEC * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    ev = E_VEC * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    grain = rng.standard_normal((height, width), dtype=np.float32) * 0.02
    rgb = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        od = BACKGROUND_OD + grain + h * hv[c] + e * ev[c]
        if ink is not None:
            od += ink * INK_OD[pen][c]
        rgb[..., c] = np.clip(255.0 * np.exp(-od), 0, 255)
    return rgb, planted, tissue


# ------------------------------------------------------------------------------------------
# The cohort.


@dataclass
class SyntheticCohort:
    """A generated cohort: the cohort CSV plus the planted ground truth.

    ``frame`` has the cohort CSV columns (slide_path, slide_id, patient_id, label, time,
    event); ``truth`` has slide_id, patient_id, label, planted_fraction (share of the
    slide), pen, mask_path, width, height.
    """

    root: Path
    csv_path: Path
    frame: pd.DataFrame
    truth: pd.DataFrame
    mask_downsample: int
    mpp: float

    def planted_mask(self, slide_id: str) -> np.ndarray:
        """The planted-island mask of ``slide_id`` at ``1/mask_downsample`` resolution (bool)."""
        row = self._truth_row(slide_id)
        return np.load(self.root / row["mask_path"]) > 0

    def tile_labels(
        self, slide_id: str, coords: np.ndarray, tile_size: int, min_fraction: float = 0.5
    ) -> np.ndarray:
        """True for tiles ``[level, col, row]`` at least ``min_fraction`` inside a planted island."""
        row = self._truth_row(slide_id)
        frac = planted_tile_fraction(
            self.planted_mask(slide_id), self.mask_downsample, coords, tile_size,
            int(row["width"]), int(row["height"]),
        )
        return frac >= min_fraction

    def _truth_row(self, slide_id: str) -> pd.Series:
        rows = self.truth[self.truth["slide_id"] == slide_id]
        if rows.empty:
            raise KeyError(f"slide_id {slide_id!r} is not in the synthetic cohort at {self.root}")
        return rows.iloc[0]


def _assign_patients(rng: np.random.Generator, n_patients: int, n_slides: int) -> list[tuple[str, int]]:
    """(patient_id, slide index within patient) for each slide; labels are set separately."""
    if n_patients < 2:
        raise ValueError(f"n_patients={n_patients}: need at least 2 (one per class)")
    if not n_patients <= n_slides <= 2 * n_patients:
        raise ValueError(
            f"n_slides={n_slides}: must be between n_patients={n_patients} and 2*n_patients"
        )
    two = set(rng.choice(n_patients, n_slides - n_patients, replace=False).tolist())
    out = []
    for p in range(n_patients):
        for s in range(2 if p in two else 1):
            out.append((f"SYN-P{p + 1:03d}", s + 1))
    return out


def generate_cohort(
    output_dir: str | os.PathLike,
    n_patients: int = 20,
    n_slides: int = 24,
    quick: bool = False,
    seed: int = 0,
    mpp: float = 0.5,
    slide_size: int | None = None,
    pen_every: int = 3,
    progress: bool = True,
    overwrite: bool = False,
) -> SyntheticCohort:
    """Generate the synthetic cohort in ``output_dir`` and return it.

    Writes ``slides/<slide_id>.tif`` (pyramidal JPEG TIFF at ``mpp``),
    ``ground_truth/<slide_id>_planted.npy`` (planted-island mask, 1/8 resolution),
    ``cohort.csv`` (slide_path, slide_id, patient_id, label, time, event; one row per
    slide, patient-level label and survival repeated), ``ground_truth.csv`` and
    ``cohort.json`` (the parameters). Slides are ``slide_size`` pixels square (default
    2560, or 1536 with ``quick``). Half of the patients (rounded down) are positive.
    Existing slides are kept unless ``overwrite`` or the folder's ``cohort.json`` has other
    parameters (generation is deterministic, so a re-run after a crash finishes the rest
    and gives the same files).
    """
    from tqdm.auto import tqdm

    from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

    root = Path(output_dir)
    size = int(slide_size or (1536 if quick else 2560))
    if size < 256:
        raise ValueError(f"slide_size={size}: must be at least 256 pixels")
    mask_downsample = 8
    size -= size % mask_downsample
    rng = np.random.default_rng(derive_seed("synthetic-cohort", seed))
    slots = _assign_patients(rng, n_patients, n_slides)
    patients = sorted({p for p, _ in slots})
    positive = set(rng.choice(patients, n_patients // 2, replace=False).tolist())

    # Patient-level tumour burden, then survival drawn from a burden-dependent hazard.
    burden = {p: (float(rng.uniform(0.08, 0.25)) if p in positive else 0.0) for p in patients}
    surv = {}
    for p in patients:
        log_hazard = 1.0 * (p in positive) + 6.0 * burden[p] + rng.normal(0, 0.25)
        t_event = rng.exponential(40.0 * math.exp(-log_hazard))
        t_cens = rng.uniform(3.0, 40.0)  # about a third of patients censored
        time = max(0.1, round(min(t_event, t_cens), 1))
        surv[p] = (time, int(t_event <= t_cens))

    params = {
        "generator": "rl_benchmarks.demo.synthetic.generate_cohort",
        "n_patients": n_patients, "n_slides": n_slides, "quick": quick, "seed": seed, "mpp": mpp,
        "slide_size": size, "mask_downsample": mask_downsample, "pen_every": pen_every,
        "n_positive_patients": len(positive),
    }
    previous = root / "cohort.json"
    if not overwrite and previous.is_file():
        import json

        try:
            old = json.loads(previous.read_text())
        except ValueError:
            old = {}
        keys = ("n_patients", "n_slides", "seed", "mpp", "slide_size", "pen_every")
        overwrite = any(old.get(k) != params[k] for k in keys)  # other parameters: start over

    rows, truth = [], []
    slides_dir = root / "slides"
    bar = tqdm(slots, desc="synthetic slides", unit="slide", disable=not progress)
    for i, (patient, k) in enumerate(bar):
        slide_id = f"{patient}-S{k}"
        path = slides_dir / f"{slide_id}.tif"
        mask_rel = Path("ground_truth") / f"{slide_id}_planted.npy"
        pen = None if pen_every <= 0 or i % pen_every else ("blue", "green")[(i // pen_every) % 2]
        srng = np.random.default_rng(derive_seed("synthetic-slide", seed, slide_id))
        target = burden[patient] * float(srng.uniform(0.8, 1.2)) if burden[patient] else 0.0
        if overwrite or not (path.is_file() and (root / mask_rel).is_file()):
            rgb, planted, tissue = render_slide(size, size, target, srng, pen=pen, mpp=mpp)
            write_pyramidal_tiff(path, rgb, mpp, tile_size=256, compression="jpeg")
            small = planted.reshape(size // mask_downsample, mask_downsample, -1, mask_downsample)
            save_npy(root / mask_rel, (small.mean(axis=(1, 3)) >= 0.5).astype(np.uint8))
        frac = float(np.load(root / mask_rel).mean())  # planted share of the whole slide
        time, event = surv[patient]
        rows.append((str(path.resolve()), slide_id, patient, int(patient in positive), time, event))
        truth.append((slide_id, patient, int(patient in positive), frac, pen or "none",
                      str(mask_rel), size, size))

    frame = pd.DataFrame(rows, columns=COHORT_COLUMNS)
    truth_df = pd.DataFrame(truth, columns=["slide_id", "patient_id", "label", "planted_fraction",
                                            "pen", "mask_path", "width", "height"])
    csv_path = root / "cohort.csv"
    write_csv(csv_path, frame, index=False)
    write_csv(root / "ground_truth.csv", truth_df, index=False)
    write_json(root / "cohort.json", params)
    return SyntheticCohort(root=root, csv_path=csv_path, frame=frame, truth=truth_df,
                           mask_downsample=mask_downsample, mpp=mpp)


def load_cohort(output_dir: str | os.PathLike) -> SyntheticCohort:
    """Re-open a cohort written by :func:`generate_cohort`."""
    import json

    root = Path(output_dir)
    for name in ("cohort.csv", "ground_truth.csv", "cohort.json"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name}: missing; is {root} a synthetic cohort folder?")
    params = json.loads((root / "cohort.json").read_text())
    return SyntheticCohort(root=root, csv_path=root / "cohort.csv",
                           frame=pd.read_csv(root / "cohort.csv"),
                           truth=pd.read_csv(root / "ground_truth.csv"),
                           mask_downsample=int(params["mask_downsample"]), mpp=float(params["mpp"]))
