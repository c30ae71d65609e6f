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


def compute_scores(cfg: DictConfig, slide_dims: tuple[int, int] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, str]:
    """(coords (N, 3), scores (N,), label of the scores) from the config
    (:func:`rl_benchmarks.reports.heatmap.compute_tile_scores`)."""
    from rl_benchmarks.reports.heatmap import compute_tile_scores

    tiles = compute_tile_scores(
        features_path=cfg.features_path, scores_path=cfg.scores_path,
        coords_path=cfg.coords_path, model=str(cfg.model), state_dict_path=cfg.state_dict_path,
        model_kwargs=OmegaConf.to_container(cfg.model_kwargs, resolve=True) or {},
        use_reference_kwargs=bool(cfg.use_reference_kwargs),
        out_features=int(cfg.out_features), class_index=int(cfg.class_index),
        orient=bool(cfg.get("orient", True)), slide_dims=slide_dims)
    return tiles.coords, tiles.scores, tiles.label


def load_cfg_truth(cfg: DictConfig):
    """The lesion truth of ``truth_path`` (ASAP XML, GeoJSON, or a mask .npy with
    ``truth_downsample``), or None."""
    if not cfg.get("truth_path"):
        return None
    from rl_benchmarks.slides.annotations import load_truth

    classes = cfg.get("truth_classes")
    return load_truth(cfg.truth_path, cfg.get("truth_downsample"),
                      None if classes is None else [str(c) for c in classes])


def main(cfg: DictConfig) -> int:
    """Write the heatmap PNG, the tile scores (CSV, and .npy) and, with a truth, the
    localisation AUROC; 0 on success, 2 on bad input."""
    from rl_benchmarks.cli.console import header, quiet_logging
    from rl_benchmarks.reports.heatmap import HeatmapError, draw_heatmap, slide_dimensions, write_scores_csv
    from rl_benchmarks.reports.localisation import slide_localisation
    from rl_benchmarks.slides.annotations import AnnotationError
    from rl_benchmarks.utils.io import save_npy

    if OmegaConf.is_missing(cfg, "slide_path"):
        print("rlbench heatmap: give slide_path=<slide> (see rlbench heatmap --help)", file=sys.stderr)
        return 2
    verbose = bool(cfg.get("verbose", False))
    quiet_logging(verbose)
    out = Path(cfg.output)
    source = f"{cfg.model} tile scores" if not cfg.scores_path else f"the scores of {cfg.scores_path}"
    header("heatmap", f"{source} over {Path(str(cfg.slide_path)).name}", out)
    if verbose:
        print(f"--- config ---\n{OmegaConf.to_yaml(cfg).rstrip()}\n---")
    top = cfg.get("top_percent")
    try:
        if top is not None and not 0 < float(top) <= 100:
            raise ValueError(f"top_percent={top}: must be in (0, 100] (or null: every tile)")
        if not 0 < float(cfg.lesion_threshold) <= 1:
            raise ValueError(f"lesion_threshold={cfg.lesion_threshold}: must be in (0, 1]")
        vmin, vmax = colour_range(cfg)
        truth = load_cfg_truth(cfg)
        reader = str(cfg.get("reader") or "auto")
        dims = slide_dimensions(cfg.slide_path, reader)
        coords, scores, label = compute_scores(cfg, dims)
        hm = draw_heatmap(cfg.slide_path, coords, scores, out, tile_size=int(cfg.tile_size),
                          thumbnail_size=int(cfg.thumbnail_size), cmap=str(cfg.cmap),
                          alpha=float(cfg.alpha), vmin=vmin, vmax=vmax, title=cfg.title,
                          score_label=label, top_percent=None if top is None else float(top),
                          truth=truth, reader=reader)
        loc = None
        if truth is not None:
            loc = slide_localisation(scores, coords, truth, int(cfg.tile_size), dims,
                                     float(cfg.lesion_threshold))
    except (FileNotFoundError, ValueError, HeatmapError, AnnotationError) as exc:
        print(f"rlbench heatmap: {exc}", file=sys.stderr)
        return 2
    csv = geojson = None
    if cfg.save_scores:
        from rl_benchmarks.slides.geojson import tile_scores_to_geojson

        geojson = tile_scores_to_geojson(out.with_name(f"{out.stem}_scores.geojson"), np.asarray(coords)[:, :3],
                                         scores, int(cfg.tile_size), dims)
        save_npy(out.with_name(f"{out.stem}_scores.npy"), scores.astype(np.float32))
        csv = write_scores_csv(out.with_name(f"{out.stem}_scores.csv"), coords, scores, int(cfg.tile_size),
                               dims, None if loc is None else loc["fraction"],
                               None if loc is None else float(cfg.lesion_threshold))
    best = np.argsort(-np.nan_to_num(scores, nan=-np.inf))[:3]
    finite = scores[np.isfinite(scores)]
    print(f"heatmap: {hm.path} ({len(scores)} tiles, scores {finite.min():.4g}.."
          f"{finite.max():.4g}, colour range {hm.vmin:.4g}..{hm.vmax:.4g}; "
          f"top tiles [level, col, row]: {np.asarray(coords)[best, :3].astype(int).tolist()})")
    if csv is not None:
        print(f"  tile scores: {csv} (and {Path(geojson).name}: QuPath detections, the score as a measurement)")
    if loc is not None:
        value = "undefined" if not np.isfinite(loc["auroc"]) else f"{loc['auroc']:.4f}"
        print(f"  localisation: tile AUROC {value} ({loc['n_lesion_tiles']} of {loc['n_tiles']} tiles "
              f"at least {float(cfg.lesion_threshold):.0%} lesion){'; ' + loc['note'] if loc['note'] else ''}")
    return 0
