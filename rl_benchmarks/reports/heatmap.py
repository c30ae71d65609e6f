"""Per-tile scores (attention, oriented tile logits) drawn over a slide thumbnail, with a
colour bar, an optional top-k % threshold and the ground-truth lesion outline.

Why: a MIL model's tile scores show *where* it looks. Tiles are addressed as in
``coords.npy``: ``[deepzoom_level, col, row]`` of ``DeepZoomGenerator(slide, tile_size,
overlap=0)``; each tile's box on the thumbnail is the level-0 box that DeepZoom reads.

What each model's score means (:func:`oriented_tile_scores`, docs/heatmaps.md):

* ABMIL, HIPT-MIL: the attention weight of the tile (softmax over the slide's tiles, sums to
  1): how much of the slide embedding the tile makes up. Unsigned: where the model looks, for
  whichever class it predicts.
* TransMIL: the CLS token's attention on the tile in the aggregation block (mean of heads).
* Chowder, DSMIL: the tile logit of the class drawn, **oriented**: flipped when the tiles'
  signed contributions to that class's logit (``g_i * (s_i - median(s))``, ``g_i`` the
  head's slope at tile i by autograd through the top/bottom selection and the MLP) run
  against the tile logits. A higher score then always points towards the class drawn, even
  when the head learned a negative (or mixed) slope.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rl_benchmarks.reports.plots import _pyplot, save_figure
from rl_benchmarks.slides.annotations import LesionTruth
from rl_benchmarks.slides.geometry import tile_boxes_level0
from rl_benchmarks.utils.io import write_csv

#: Colour of the ground-truth lesion outline drawn over the heatmap.
TRUTH_COLOUR = "#00e5ff"


class HeatmapError(ValueError):
    """Bad heatmap input (message names the file and the cause)."""


@dataclass
class Heatmap:
    """What :func:`draw_heatmap` drew: the PNG, the thumbnail and the score overlay.

    ``overlay`` is (h, w) float with the thumbnail's shape: each pixel holds the score of
    the tile covering it (NaN where no tile is, or where a tile is below the top-k %
    threshold). ``scale`` = thumbnail px per level-0 px. ``n_drawn`` tiles were painted;
    ``truth_drawn`` says whether a lesion outline was drawn.
    """

    path: Path
    thumbnail: np.ndarray = field(repr=False)
    overlay: np.ndarray = field(repr=False)
    scale: float
    vmin: float
    vmax: float
    n_drawn: int = 0
    truth_drawn: bool = False


def _open_slide(slide_path: str | os.PathLike, reader: str | None = "auto"):
    """An OpenSlide-API handle of ``slide_path`` through the reader backends (a DICOM folder,
    an OME-TIFF ... as ``rlbench tile`` reads them); errors are one-line HeatmapErrors."""
    from rl_benchmarks.slides.backends import open_handle
    from rl_benchmarks.slides.errors import SlideError

    path = Path(slide_path)
    if not path.exists():
        raise HeatmapError(f"{path}: no such slide")
    try:
        return open_handle(path, reader).handle
    except SlideError as exc:
        raise HeatmapError(str(exc)) from None


def slide_dimensions(slide_path: str | os.PathLike, reader: str | None = "auto") -> tuple[int, int]:
    """Level-0 ``(width, height)`` of a slide (through the reader backends)."""
    slide = _open_slide(slide_path, reader)
    try:
        return tuple(int(v) for v in slide.dimensions)
    finally:
        slide.close()


def load_features(path: str | os.PathLike, slide_dims: tuple[int, int] | None = None) -> np.ndarray:
    """A slide's (N, 3+D) features, ``features.npy`` or a TRIDENT/CLAM ``.h5`` (its coords
    mapped to DeepZoom with the slide's size, docs/interop.md); one error naming a bad file."""
    from rl_benchmarks.datasets.h5_features import H5FeaturesError
    from rl_benchmarks.utils.features import read_feature_matrix

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: features file not found")
    try:
        return np.asarray(read_feature_matrix(p, mmap=False, slide_dims=slide_dims))
    except H5FeaturesError as exc:
        raise HeatmapError(str(exc)) from None
    except ValueError as exc:
        raise HeatmapError(f"{p}: not a readable features file ({exc})") from None


def score_overlay(
    coords: np.ndarray,
    scores: np.ndarray,
    tile_size: int,
    slide_dims: tuple[int, int],
    thumb_dims: tuple[int, int],
) -> np.ndarray:
    """Paint each tile's score on a (thumb_h, thumb_w) float grid (NaN where no tile)."""
    width, height = slide_dims
    tw, th = thumb_dims
    boxes = tile_boxes_level0(coords, tile_size, width, height).astype(np.float64)
    sx, sy = tw / width, th / height
    out = np.full((th, tw), np.nan, np.float32)
    order = np.argsort(scores, kind="stable")  # higher scores painted last (on top)
    for i in order:
        x0, y0, x1, y1 = boxes[i]
        c0, r0 = int(math.floor(x0 * sx)), int(math.floor(y0 * sy))
        c1, r1 = max(c0 + 1, int(math.ceil(x1 * sx))), max(r0 + 1, int(math.ceil(y1 * sy)))
        out[r0:r1, c0:c1] = scores[i]
    return out


def top_tiles(scores: np.ndarray, top_percent: float) -> np.ndarray:
    """Boolean (N,): the ``ceil(top_percent % of N)`` tiles with the highest finite scores
    (ties at the cut kept by the stable order)."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not 0.0 < float(top_percent) <= 100.0:
        raise HeatmapError(f"top_percent={top_percent}: must be in (0, 100]")
    finite = np.flatnonzero(np.isfinite(scores))
    k = max(1, math.ceil(len(finite) * float(top_percent) / 100.0))
    keep = np.zeros(len(scores), bool)
    keep[finite[np.argsort(-scores[finite], kind="stable")[:k]]] = True
    return keep


def _draw_truth(ax: Any, truth: LesionTruth, sx: float, sy: float) -> bool:
    """Outline ``truth``'s lesions (level-0 px) on an axis showing the thumbnail."""
    if truth.is_empty:
        return False
    if truth.mask is not None:
        mask = np.asarray(truth.mask, np.float32)
        ds = float(truth.mask_downsample)
        h, w = mask.shape
        # cell (r, c) covers level-0 [c*ds, (c+1)*ds): its centre is at ((c+0.5)*ds, (r+0.5)*ds)
        xs, ys = (np.arange(w) + 0.5) * ds * sx - 0.5, (np.arange(h) + 0.5) * ds * sy - 0.5
        ax.contour(xs, ys, mask, levels=[0.5], colors=TRUTH_COLOUR, linewidths=1.2)
        return True
    for ring in truth.contours():
        ax.plot(ring[:, 0] * sx - 0.5, ring[:, 1] * sy - 0.5, color=TRUTH_COLOUR, linewidth=1.2)
    return True


def draw_heatmap(
    slide_path: str | os.PathLike,
    coords: np.ndarray,
    scores: np.ndarray,
    out_png: str | os.PathLike,
    tile_size: int = 224,
    thumbnail_size: int = 1024,
    cmap: str = "inferno",
    alpha: float = 0.55,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    score_label: str = "tile score",
    top_percent: float | None = None,
    truth: LesionTruth | None = None,
    reader: str | None = "auto",
) -> Heatmap:
    """Draw ``scores`` (N,) of tiles ``coords`` (N, 3) over the thumbnail of ``slide_path``.

    ``coords`` may also be a features array (N, 3+D); its first 3 columns are used.
    Tiles with NaN scores are left out. The colour range defaults to the scores' range; the
    colour bar is labelled ``score_label`` (say what the score means). ``top_percent`` paints
    only the top k % of tiles (a thresholded overlay). ``truth`` outlines the ground-truth
    lesions on both panels. Writes ``out_png`` (thumbnail | heatmap side by side, colour
    bar) and returns a :class:`Heatmap`.
    """
    coords = np.asarray(coords)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if coords.ndim != 2 or coords.shape[1] < 3:
        raise HeatmapError(f"coords must be (N, 3) [level, col, row] or (N, 3+D), got {coords.shape}")
    coords = np.rint(coords[:, :3]).astype(np.int64)
    if len(coords) != len(scores):
        raise HeatmapError(f"{len(coords)} tiles in coords but {len(scores)} scores")
    keep = np.isfinite(scores)
    if not keep.any():
        raise HeatmapError(f"{slide_path}: every tile score is NaN")
    coords, scores = coords[keep], scores[keep]
    slide = _open_slide(slide_path, reader)
    try:
        from openslide.deepzoom import DeepZoomGenerator

        dz = DeepZoomGenerator(slide, tile_size=tile_size, overlap=0)
        bad = (coords[:, 0] < 0) | (coords[:, 0] >= dz.level_count)
        if bad.any():
            raise HeatmapError(f"{slide_path}: coords level {coords[bad][0, 0]} is not a DeepZoom level "
                               f"(0..{dz.level_count - 1}) of this slide with tile_size={tile_size}")
        for lvl in np.unique(coords[:, 0]):
            cols, rows = dz.level_tiles[int(lvl)]
            sel = coords[:, 0] == lvl
            if (coords[sel, 1] >= cols).any() or (coords[sel, 2] >= rows).any() or (coords[sel, 1:] < 0).any():
                raise HeatmapError(f"{slide_path}: coords outside the {cols}x{rows} tile grid of "
                                   f"DeepZoom level {lvl} (tile_size={tile_size}); wrong tile_size?")
        thumb = np.asarray(slide.get_thumbnail((thumbnail_size, thumbnail_size)).convert("RGB"))
        dims = slide.dimensions
    finally:
        slide.close()
    th, tw = thumb.shape[:2]
    lo = float(np.min(scores) if vmin is None else vmin)
    hi = float(np.max(scores) if vmax is None else vmax)
    if hi <= lo:
        hi = lo + 1e-12
    shown = top_tiles(scores, top_percent) if top_percent is not None else np.ones(len(scores), bool)
    overlay = score_overlay(coords[shown], scores[shown], tile_size, dims, (tw, th))

    plt = _pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    norm = Normalize(lo, hi)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4 * th / max(tw, 1) + 0.6), constrained_layout=True)
    axes[0].imshow(thumb)
    axes[0].set_title("slide thumbnail", fontsize=10)
    axes[1].imshow(thumb)
    axes[1].imshow(np.ma.masked_invalid(overlay), cmap=cmap, norm=norm, alpha=alpha,
                   interpolation="nearest")
    what = (f"top {top_percent:g} % of {len(scores)} tiles" if top_percent is not None
            else f"{len(scores)} tiles")
    drawn = False
    if truth is not None:
        sx, sy = tw / dims[0], th / dims[1]
        for ax in axes:
            drawn = _draw_truth(ax, truth, sx, sy) or drawn
            ax.set_xlim(-0.5, tw - 0.5)
            ax.set_ylim(th - 0.5, -0.5)
    axes[1].set_title(f"{what}" + (" · cyan line: annotated lesions" if drawn else ""), fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    bar_label = score_label + (f" (top {top_percent:g} % shown)" if top_percent is not None else "")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes[1], fraction=0.046, pad=0.02,
                 label=bar_label)
    fig.suptitle(title or Path(slide_path).name, fontsize=11)
    path = save_figure(fig, out_png)
    return Heatmap(path=path, thumbnail=thumb, overlay=overlay, scale=tw / dims[0], vmin=lo, vmax=hi,
                   n_drawn=int(shown.sum()), truth_drawn=drawn)


def write_scores_csv(path: str | os.PathLike, coords: np.ndarray, scores: np.ndarray, tile_size: int,
                     slide_dims: tuple[int, int], lesion_fraction: np.ndarray | None = None,
                     threshold: float | None = None) -> Path:
    """Write one row per tile: ``level, col, row`` (coords.npy), its level-0 box ``x0, y0, x1,
    y1`` (the pixels DeepZoom reads), ``score`` and, with a truth, ``lesion_fraction`` and
    ``lesion`` (fraction >= ``threshold``). Atomic; returns the path."""
    import pandas as pd

    coords = np.rint(np.asarray(coords)[:, :3]).astype(np.int64)
    boxes = tile_boxes_level0(coords, tile_size, int(slide_dims[0]), int(slide_dims[1]))
    frame = pd.DataFrame({"level": coords[:, 0], "col": coords[:, 1], "row": coords[:, 2],
                          "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
                          "score": np.asarray(scores, np.float64).reshape(-1)})
    if lesion_fraction is not None:
        frame["lesion_fraction"] = np.asarray(lesion_fraction, np.float64)
        if threshold is not None:
            frame["lesion"] = (frame["lesion_fraction"] >= float(threshold)).astype(int)
    write_csv(path, frame, index=False, float_format="%.6g")
    return Path(path)


# ------------------------------------------------------------------------------------------
# Scores from a trained MIL model.


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load a model state dict saved with ``torch.save`` (a plain dict or ``{"state_dict": ...}``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise HeatmapError(f"{path}: no such state dict file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise HeatmapError(f"{path}: not a torch state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise HeatmapError(f"{path}: expected a dict of tensors (a model state dict)")
    return obj


def model_tile_scores(model: Any, features: np.ndarray, class_index: int = 0,
                      metadata_cols: int = 3) -> np.ndarray:
    """Per-tile scores (N,) of one slide's ``features`` (N, metadata_cols + D) from a MIL model.

    The model must expose ``tile_scores(features (B, N, 3+D), mask, class_index) -> (B, N)``
    (ABMIL, Chowder, DSMIL, TransMIL, HIPT-MIL do; MeanPool has no tile scores).
    """
    import torch

    if not hasattr(model, "tile_scores"):
        raise HeatmapError(f"model {type(model).__name__} has no per-tile scores (tile_scores)")
    x = torch.as_tensor(np.asarray(features, np.float32))[None]
    if x.shape[-1] <= metadata_cols:
        raise HeatmapError(f"features have {x.shape[-1]} columns; expected {metadata_cols} + D")
    model.eval()
    with torch.no_grad():
        out = model.tile_scores(x, None, class_index=class_index)
    return out[0].detach().cpu().double().numpy().reshape(-1)


#: What each model's raw tile score is (the colour bar's label), by class name.
SCORE_MEANINGS = {
    "ABMIL": "attention weight (share of the slide embedding; unsigned)",
    "HIPTMIL": "attention weight (share of the slide embedding; unsigned)",
    "TransMIL": "CLS attention on the tile (mean of heads; unsigned)",
    "Chowder": "tile logit",
    "DSMIL": "instance logit",
}


@dataclass
class OrientedScores:
    """Tile scores (N,) that point the way of the slide's prediction for the class drawn.

    ``raw`` are the model's own ``tile_scores``. For heads on per-tile scores (Chowder,
    DSMIL) ``scores = sign * raw``: ``sign`` is -1 when the tiles' signed contributions to
    the class logit (``contributions``, :func:`tile_contributions`) run against their raw
    scores (Spearman correlation < 0: the raw heatmap would be inverted), else +1; ``slope``
    is the head's slope for a shift of every tile score (:func:`score_slope`). Attention is
    left as it is (``slope`` NaN, ``sign`` +1, no contributions). ``label`` says what the
    score means, for the colour bar."""

    scores: np.ndarray = field(repr=False)
    raw: np.ndarray = field(repr=False)
    sign: int
    slope: float
    label: str
    contributions: np.ndarray | None = field(default=None, repr=False)


def _hooked_logit(model: Any, features: np.ndarray, class_index: int, edit: Any) -> Any:
    """The class logit of one slide, with ``edit(out)`` applied to ``model.score_model``'s
    output (a forward hook; the model itself is not changed)."""
    import warnings

    import torch

    x = torch.as_tensor(np.asarray(features, np.float32))[None]
    model.eval()
    handle = model.score_model.register_forward_hook(lambda _m, _i, out: edit(out))
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # Chowder on a slide with fewer tiles than n_top + n_bottom warns at every call; the
            # zero-filled selection is the model's own behaviour, said once at training.
            warnings.filterwarnings("ignore", message="ExtremeLayer", category=UserWarning)
            logits = model(x)
    finally:
        handle.remove()
    return logits.reshape(1, -1)[0, class_index if logits.shape[-1] > class_index else 0]


def score_slope(model: Any, features: np.ndarray, class_index: int = 0) -> float:
    """d(class logit) / d(t) when ``t`` is added to every tile's score of output
    ``class_index`` (the model's ``score_model`` output): the head's overall slope at this
    slide (Chowder: top/bottom selection + MLP; DSMIL: the max branch)."""
    import torch

    shift = torch.zeros((), requires_grad=True)

    def add_shift(out: torch.Tensor) -> torch.Tensor:
        onehot = torch.zeros(out.shape[-1], dtype=out.dtype)
        onehot[class_index] = 1.0
        return out + shift * onehot

    target = _hooked_logit(model, features, class_index, add_shift)
    (grad,) = torch.autograd.grad(target, shift, allow_unused=True)
    return 0.0 if grad is None else float(grad)


def tile_score_gradients(model: Any, features: np.ndarray, class_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tile scores s (N,), d(class logit)/d(s_i) (N,)) of output ``class_index``, by autograd
    through the model's head. In Chowder only the selected (top/bottom) tiles have a
    non-zero gradient: the head's weight at the tile's rank, at this slide."""
    import torch

    held: dict[str, torch.Tensor] = {}

    def leaf(out: torch.Tensor) -> torch.Tensor:
        held["s"] = out.detach().requires_grad_(True)
        return held["s"]

    target = _hooked_logit(model, features, class_index, leaf)
    (grad,) = torch.autograd.grad(target, held["s"], allow_unused=True)
    s = held["s"].detach()[0, :, class_index].double().numpy()
    g = np.zeros_like(s) if grad is None else grad[0, :, class_index].double().numpy()
    return s, g


def tile_contributions(model: Any, features: np.ndarray, class_index: int = 0) -> np.ndarray:
    """Each tile's signed contribution to the class logit, to first order:
    ``c_i = g_i * (s_i - median(s))`` with ``s`` the tile scores and ``g_i`` the head's slope
    at tile i (:func:`tile_score_gradients`).

    A head may weigh its inputs with mixed signs (Chowder's MLP over the sorted top and bottom
    scores can learn that *low* scores are evidence for the class); ``c_i`` is positive when
    tile i pushes the slide towards the class, whichever end of the score range it sits at.
    Tiles the head does not read (Chowder's unselected tiles: ``g_i = 0``) take the slope of
    the nearest-ranked tile it reads on the same side of the median: what the tile would add
    if it were selected. Returns (N,) float64."""
    s, g = tile_score_gradients(model, features, class_index)
    med = float(np.median(s))
    read = np.flatnonzero(g != 0)
    if not len(read):
        return np.zeros_like(s)
    order = np.argsort(s, kind="stable")
    rank = np.empty(len(s), np.int64)
    rank[order] = np.arange(len(s))
    slope = g.copy()
    for i in np.flatnonzero(g == 0):
        same = read[(s[read] >= med) == (s[i] >= med)]
        pool = same if len(same) else read
        slope[i] = g[pool[np.argmin(np.abs(rank[pool] - rank[i]))]]
    return slope * (s - med)


def oriented_tile_scores(model: Any, features: np.ndarray, class_index: int = 0,
                         metadata_cols: int = 3) -> OrientedScores:
    """The tile scores a heatmap draws, oriented (see the module docstring).

    Models with a per-tile scoring head (``score_model``: Chowder, DSMIL) keep their tile
    logits' ranking (the scorer's "how much of the class pattern is in this tile" axis) and
    are flipped when the tiles' signed contributions to the class logit
    (:func:`tile_contributions`) run against it (negative Spearman correlation; the slope of
    :func:`score_slope` decides when the correlation is undefined). So a higher score always
    points towards the class drawn, whatever slope, or mix of slopes, the head learned.
    Attention models (ABMIL, TransMIL, HIPT-MIL) keep their attention: non-negative weights
    that say where the model looks, not which way."""
    import torch
    from scipy.stats import spearmanr

    raw = model_tile_scores(model, features, class_index=class_index, metadata_cols=metadata_cols)
    name = type(model).__name__
    meaning = SCORE_MEANINGS.get(name, "tile score")
    target = "class 1 (positive)" if getattr(model, "out_features", 1) == 1 else f"class {class_index}"
    if not isinstance(getattr(model, "score_model", None), torch.nn.Module):  # attention models
        return OrientedScores(raw, raw, 1, math.nan, f"{name} {meaning}")
    slope = score_slope(model, features, class_index)
    contrib = tile_contributions(model, features, class_index)
    if not np.any(contrib):  # the head does not read the tile scores (e.g. DSMIL out_logits="bag")
        return OrientedScores(raw, raw, 1, slope, f"{name} {meaning} (the output does not use it)", contrib)
    keep = np.isfinite(raw)
    rho = spearmanr(contrib[keep], raw[keep]).statistic if keep.sum() > 2 else math.nan
    direction = rho if np.isfinite(rho) and rho != 0 else slope
    sign = -1 if direction < 0 else 1
    flipped = "; sign flipped" if sign < 0 else ""
    return OrientedScores(sign * raw, raw, sign, slope,
                          f"{name} {meaning}, oriented (higher = towards {target}{flipped})", contrib)


@dataclass
class TileScores:
    """Per-tile scores of one slide: ``coords`` (N, 3) ``[deepzoom_level, col, row]``,
    ``scores`` (N,) and ``label`` (what the scores are, for the colour bar)."""

    coords: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)
    label: str


def load_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """A ``.npy`` array (never unpickled); a missing or unreadable file is one error naming
    it and ``what`` it should hold."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} file not found")
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as exc:
        raise HeatmapError(f"{p}: not a readable .npy {what} file ({exc})") from None


def load_slide_model(model: str, state_dict_path: str | os.PathLike, in_features: int,
                     out_features: int | None = None, model_kwargs: dict[str, Any] | None = None,
                     use_reference_kwargs: bool = True) -> Any:
    """The MIL model ``model`` (a ``create_slide_model`` name) with the trained weights of
    ``state_dict_path`` (loaded strictly, no code run). Its constructor gets the reference
    arguments of ``model`` (when ``use_reference_kwargs``) updated by ``model_kwargs``;
    ``out_features`` defaults to the rows of the state dict's last 2-D weight. A state dict
    that does not fit is a :class:`HeatmapError` naming the file."""
    from rl_benchmarks.models.slide_models import REFERENCE_MODEL_KWARGS, create_slide_model

    kwargs = dict(REFERENCE_MODEL_KWARGS.get(model.lower(), {})) if use_reference_kwargs else {}
    kwargs.update(model_kwargs or {})
    state = load_state_dict(state_dict_path)
    net = create_slide_model(model, in_features=in_features,
                             out_features=out_features or _out_features(state), **kwargs)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise HeatmapError(f"{state_dict_path}: does not fit model {model} with {kwargs} and "
                           f"in_features={in_features}: {str(exc).splitlines()[0]}") from None
    return net


def compute_tile_scores(
    features_path: str | os.PathLike | None = None,
    scores_path: str | os.PathLike | None = None,
    coords_path: str | os.PathLike | None = None,
    model: str = "abmil",
    state_dict_path: str | os.PathLike | None = None,
    model_kwargs: dict[str, Any] | None = None,
    use_reference_kwargs: bool = True,
    out_features: int = 1,
    class_index: int = 0,
    orient: bool = True,
    slide_dims: tuple[int, int] | None = None,
) -> TileScores:
    """The tile scores a heatmap draws: given (``scores_path``, with the coords from
    ``coords_path`` or ``features_path``), or computed by a trained ``model`` (weights
    ``state_dict_path``) on the slide's ``features_path`` (N, 3+D), oriented
    (:func:`oriented_tile_scores`) unless ``orient`` is False. ``features_path`` may be an
    h5 file (TRIDENT/CLAM), whose coords are mapped with ``slide_dims`` (level-0 width,
    height). Bad or missing input is one error naming the file or the missing key."""
    features = load_features(features_path, slide_dims) if features_path else None
    if features is not None and (features.ndim != 2 or features.shape[1] < 4):
        raise HeatmapError(f"{features_path}: features must be (N, 3+D), got {features.shape}")
    if scores_path:
        scores = load_npy(scores_path, "scores").astype(np.float64).reshape(-1)
        if coords_path:
            coords = load_npy(coords_path, "coords")
        elif features is not None:
            coords = features[:, :3]
        else:
            raise HeatmapError("scores_path needs coords_path or features_path "
                               "(for the tile coordinates)")
        return TileScores(coords, scores, "tile score")
    if features is None:
        raise HeatmapError("give features_path (with model + state_dict_path) or scores_path")
    if not state_dict_path:
        raise HeatmapError("state_dict_path is required to score tiles with a model "
                           "(a heatmap of an untrained model means nothing)")
    net = load_slide_model(model, state_dict_path, features.shape[1] - 3, int(out_features),
                           model_kwargs, use_reference_kwargs)
    if orient:
        scored = oriented_tile_scores(net, features, class_index=class_index)
        return TileScores(features[:, :3], scored.scores, scored.label)
    scores = model_tile_scores(net, features, class_index=class_index)
    name = type(net).__name__
    return TileScores(features[:, :3], scores, f"{name} {SCORE_MEANINGS.get(name, 'tile score')} (not oriented)")


def heatmaps_from_cv(
    experiment_dir: str | os.PathLike,
    slides: dict[str, tuple[str | os.PathLike, str | os.PathLike]],
    model: str,
    out_dir: str | os.PathLike,
    model_kwargs: dict[str, Any] | None = None,
    use_reference_kwargs: bool = True,
    tile_size: int = 224,
    max_slides: int = 4,
    class_index: int = 0,
    thumbnail_size: int = 1024,
    out_features: int | None = None,
    truths: dict[str, LesionTruth] | None = None,
    name: str | None = None,
    top_percent: float | None = None,
) -> list[Path]:
    """Heatmaps of the slides a ``rlbench cv`` run scored highest, each by its own fold's model.

    ``experiment_dir`` holds ``predictions/<fold>.csv`` and ``models/<fold>.pt`` (as written
    by ``rlbench cv``); ``slides`` maps slide_id -> (slide path, features.npy path). For each
    of the ``max_slides`` test slides with the highest score (classification: the logit of
    ``class_index``; survival: the risk), the model of the outer fold in which the slide was
    a test slide draws ``<out_dir>/<slide_id>_<name or model>.png`` with its oriented tile
    scores (:func:`oriented_tile_scores`), the slide's lesion outline when ``truths`` has
    one, and only the top ``top_percent`` % of tiles when given. Returns the PNG paths.
    ``out_features`` defaults to the rows of the state dict's last 2-D weight.
    """
    from rl_benchmarks.val_schemes.experiment import ExperimentFolder
    from rl_benchmarks.val_schemes.predictions import load_predictions

    run = ExperimentFolder(Path(experiment_dir))
    exp = run.path
    files = run.prediction_files()
    if not files:
        raise HeatmapError(f"{exp}: no predictions/<fold>.csv (not a rlbench cv run folder?)")
    preds = load_predictions(files)
    preds = preds[preds["slide_id"].astype(str).isin(slides)]
    if preds.empty:
        raise HeatmapError(f"{exp}: none of the given slides is in its predictions")
    col = "risk" if preds.attrs["task"] == "survival" else (
        "score" if "score" in preds.columns else f"score_{class_index}")
    chosen = preds.sort_values(col, ascending=False, kind="stable").drop_duplicates("slide_id")
    out, models = [], {}
    for row in chosen.head(max_slides).itertuples():
        slide_path, features_path = slides[str(row.slide_id)]
        features = load_features(features_path, slide_dimensions(slide_path))
        key = str(row.fold_name)
        if key not in models:
            models[key] = load_slide_model(model, run.model_path(key), features.shape[1] - 3,
                                           out_features, model_kwargs, use_reference_kwargs)
        scored = oriented_tile_scores(models[key], features, class_index=class_index)
        hm = draw_heatmap(slide_path, features, scored.scores,
                          Path(out_dir) / f"{row.slide_id}_{name or model}.png",
                          tile_size=tile_size, thumbnail_size=thumbnail_size,
                          title=f"{row.slide_id}: {model} (outer fold {key}, slide {col} {getattr(row, col):.3g})",
                          score_label=scored.label, top_percent=top_percent,
                          truth=(truths or {}).get(str(row.slide_id)))
        out.append(hm.path)
    return out


def _out_features(state: dict[str, Any]) -> int:
    """The number of outputs: rows of the last 2-D weight in the state dict."""
    last = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(last[-1].shape[0]) if last else 1
