"""``rlbench heatmap``: per-tile scores of a trained MIL model over a slide thumbnail."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf


def _load_npy(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} file not found")
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{p}: not a readable .npy {what} file ({exc})") from None


def colour_range(cfg: DictConfig) -> tuple[float | None, float | None]:
    """``vmin``/``vmax`` of the colour scale (None: the scores' own minimum/maximum);
    both given, ``vmin`` must be below ``vmax``."""
    ends: dict[str, float | None] = {}
    for key in ("vmin", "vmax"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not np.isfinite(value)):
            raise ValueError(f"{key} must be a finite number or null, got {value!r}")
        ends[key] = None if value is None else float(value)
    vmin, vmax = ends["vmin"], ends["vmax"]
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise ValueError(f"vmin={vmin:g} must be below vmax={vmax:g} (the colour scale's ends)")
    return vmin, vmax


def compute_scores(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """(coords (N, 3), scores (N,), label of the scores) from the config."""
    from rl_benchmarks.reports.heatmap import load_state_dict, model_tile_scores

    features = _load_npy(cfg.features_path, "features") if cfg.features_path else None
    if features is not None and (features.ndim != 2 or features.shape[1] < 4):
        raise ValueError(f"{cfg.features_path}: features must be (N, 3+D), got {features.shape}")
    if cfg.scores_path:
        scores = _load_npy(cfg.scores_path, "scores").astype(np.float64).reshape(-1)
        if cfg.coords_path:
            coords = _load_npy(cfg.coords_path, "coords")
        elif features is not None:
            coords = features[:, :3]
        else:
            raise ValueError("scores_path needs coords_path or features_path (for the tile coordinates)")
        return coords, scores, "tile score"
    if features is None:
        raise ValueError("give features_path (with model + state_dict_path) or scores_path")
    if not cfg.state_dict_path:
        raise ValueError("state_dict_path is required to score tiles with a model "
                         "(a heatmap of an untrained model means nothing)")

    from rl_benchmarks.models.slide_models import REFERENCE_MODEL_KWARGS, create_slide_model

    kwargs = dict(REFERENCE_MODEL_KWARGS.get(str(cfg.model).lower(), {})) if cfg.use_reference_kwargs else {}
    kwargs.update(OmegaConf.to_container(cfg.model_kwargs, resolve=True) or {})
    model = create_slide_model(str(cfg.model), in_features=features.shape[1] - 3,
                               out_features=int(cfg.out_features), **kwargs)
    state = load_state_dict(cfg.state_dict_path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"{cfg.state_dict_path}: does not fit model {cfg.model} with {kwargs} "
                         f"and in_features={features.shape[1] - 3}: {first}") from None
    scores = model_tile_scores(model, features, class_index=int(cfg.class_index))
    return features[:, :3], scores, f"{cfg.model} tile score"


def main(cfg: DictConfig) -> int:
    """Write the heatmap PNG (and the scores); 0 on success, 2 on bad input."""
    from rl_benchmarks.reports.heatmap import HeatmapError, draw_heatmap
    from rl_benchmarks.utils.io import save_npy

    if OmegaConf.is_missing(cfg, "slide_path"):
        print("rlbench heatmap: give slide_path=<slide> (see rlbench heatmap --help)", file=sys.stderr)
        return 2
    try:
        vmin, vmax = colour_range(cfg)
        coords, scores, label = compute_scores(cfg)
        out = Path(cfg.output)
        hm = draw_heatmap(cfg.slide_path, coords, scores, out, tile_size=int(cfg.tile_size),
                          thumbnail_size=int(cfg.thumbnail_size), cmap=str(cfg.cmap),
                          alpha=float(cfg.alpha), vmin=vmin, vmax=vmax, title=cfg.title,
                          score_label=label)
    except (FileNotFoundError, ValueError, HeatmapError) as exc:
        print(f"rlbench heatmap: {exc}", file=sys.stderr)
        return 2
    if cfg.save_scores:
        save_npy(out.with_name(f"{out.stem}_scores.npy"), scores.astype(np.float32))
    top = np.argsort(-np.nan_to_num(scores, nan=-np.inf))[:3]
    finite = scores[np.isfinite(scores)]
    print(f"heatmap: {hm.path} ({len(scores)} tiles, scores {finite.min():.4g}.."
          f"{finite.max():.4g}, colour range {hm.vmin:.4g}..{hm.vmax:.4g}; "
          f"top tiles [level, col, row]: {np.asarray(coords)[top, :3].astype(int).tolist()})")
    return 0
