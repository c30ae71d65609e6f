"""``rlbench heatmap``: per-tile scores of a trained MIL model over a slide thumbnail.

The scores and the drawing live in :mod:`rl_benchmarks.reports.heatmap`; this module holds
the command only: the config's keys, the printed line and the exit codes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf


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
    """(coords (N, 3), scores (N,), label of the scores) from the config
    (:func:`rl_benchmarks.reports.heatmap.compute_tile_scores`)."""
    from rl_benchmarks.reports.heatmap import compute_tile_scores

    tiles = compute_tile_scores(
        features_path=cfg.features_path, scores_path=cfg.scores_path,
        coords_path=cfg.coords_path, model=str(cfg.model), state_dict_path=cfg.state_dict_path,
        model_kwargs=OmegaConf.to_container(cfg.model_kwargs, resolve=True) or {},
        use_reference_kwargs=bool(cfg.use_reference_kwargs),
        out_features=int(cfg.out_features), class_index=int(cfg.class_index))
    return tiles.coords, tiles.scores, tiles.label


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
