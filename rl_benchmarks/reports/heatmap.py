"""Per-tile scores (attention, tile logits) drawn over a slide thumbnail, with a colour bar.

Why: a MIL model's tile scores show *where* it looks. Tiles are addressed as in
``coords.npy``: ``[deepzoom_level, col, row]`` of ``DeepZoomGenerator(slide, tile_size,
overlap=0)``; each tile's box on the thumbnail is the level-0 box that DeepZoom reads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rl_benchmarks.reports.plots import _pyplot, save_figure
from rl_benchmarks.slides.geometry import tile_boxes_level0


class HeatmapError(ValueError):
    """Bad heatmap input (message names the file and the cause)."""


@dataclass
class Heatmap:
    """What :func:`draw_heatmap` drew: the PNG, the thumbnail and the score overlay.

    ``overlay`` is (h, w) float with the thumbnail's shape: each pixel holds the score of
    the tile covering it (NaN where no tile is). ``scale`` = thumbnail px per level-0 px.
    """

    path: Path
    thumbnail: np.ndarray = field(repr=False)
    overlay: np.ndarray = field(repr=False)
    scale: float
    vmin: float
    vmax: float


def _open_slide(slide_path: str | os.PathLike):
    import openslide

    path = Path(slide_path)
    if not path.exists():
        raise HeatmapError(f"{path}: no such slide")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as exc:
        raise HeatmapError(f"{path}: OpenSlide cannot open it ({exc})") from None


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
) -> Heatmap:
    """Draw ``scores`` (N,) of tiles ``coords`` (N, 3) over the thumbnail of ``slide_path``.

    ``coords`` may also be a features array (N, 3+D); its first 3 columns are used.
    Tiles with NaN scores are left out. The colour range defaults to the scores' range.
    Writes ``out_png`` (thumbnail | heatmap side by side, colour bar) and returns a
    :class:`Heatmap`.
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
    slide = _open_slide(slide_path)
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
    overlay = score_overlay(coords, scores, tile_size, dims, (tw, th))
    lo = float(np.min(scores) if vmin is None else vmin)
    hi = float(np.max(scores) if vmax is None else vmax)
    if hi <= lo:
        hi = lo + 1e-12

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
    axes[1].set_title(f"{score_label} per tile ({len(scores)} tiles)", fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes[1], fraction=0.046, pad=0.02,
                 label=score_label)
    fig.suptitle(title or Path(slide_path).name, fontsize=11)
    path = save_figure(fig, out_png)
    return Heatmap(path=path, thumbnail=thumb, overlay=overlay, scale=tw / dims[0], vmin=lo, vmax=hi)


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
) -> TileScores:
    """The tile scores a heatmap draws: given (``scores_path``, with the coords from
    ``coords_path`` or ``features_path``), or computed by a trained ``model`` (weights
    ``state_dict_path``) on the slide's ``features_path`` (N, 3+D). Bad or missing input is
    one error naming the file or the missing key."""
    features = load_npy(features_path, "features") if features_path else None
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
    scores = model_tile_scores(net, features, class_index=class_index)
    return TileScores(features[:, :3], scores, f"{model} tile score")


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
) -> list[Path]:
    """Heatmaps of the slides a ``rlbench cv`` run scored highest, each by its own fold's model.

    ``experiment_dir`` holds ``predictions/<fold>.csv`` and ``models/<fold>.pt`` (as written
    by ``rlbench cv``); ``slides`` maps slide_id -> (slide path, features.npy path). For each
    of the ``max_slides`` test slides with the highest score (classification: the logit of
    ``class_index``; survival: the risk), the model of the outer fold in which the slide was
    a test slide draws ``<out_dir>/<slide_id>_<model>.png``. Returns the PNG paths.
    ``out_features`` defaults to the rows of the state dict's last 2-D weight.
    """
    import torch

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
        features = load_npy(features_path, "features")
        key = str(row.fold_name)
        if key not in models:
            models[key] = load_slide_model(model, run.model_path(key), features.shape[1] - 3,
                                           out_features, model_kwargs, use_reference_kwargs)
        with torch.no_grad():
            scores = model_tile_scores(models[key], features, class_index=class_index)
        hm = draw_heatmap(slide_path, features, scores, Path(out_dir) / f"{row.slide_id}_{model}.png",
                          tile_size=tile_size, thumbnail_size=thumbnail_size,
                          title=f"{row.slide_id}: {model} (outer fold {key}, slide {col} {getattr(row, col):.3g})",
                          score_label=f"{model} tile score")
        out.append(hm.path)
    return out


def _out_features(state: dict[str, Any]) -> int:
    """The number of outputs: rows of the last 2-D weight in the state dict."""
    last = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(last[-1].shape[0]) if last else 1
