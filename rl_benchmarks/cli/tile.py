"""``rlbench tile``: raw slides to ``coords.npy`` (+ QC pictures), see docs/slides.md.

The stage is :func:`rl_benchmarks.slides.tiling.tile_slides` (it prints each failure and
its summary line); this module reads the config, calls it and chooses the exit code: 0, 1
when a slide failed, 2 for bad input.
"""

from __future__ import annotations

import os
import sys

from omegaconf import DictConfig


def main(cfg: DictConfig) -> int:
    """Run :func:`rl_benchmarks.slides.tiling.tile_slides`; exit 1 if any slide failed."""
    from rl_benchmarks.cli.console import header, quiet_logging, save_config
    from rl_benchmarks.slides.tiling import tile_slides

    if cfg.output_dir is None and cfg.layout != "reference":
        print("rlbench tile: output_dir=<folder> is required", file=sys.stderr)
        return 2
    verbose = bool(cfg.get("verbose", False))
    quiet_logging(verbose)
    where = cfg.output_dir if cfg.output_dir is not None else "<data_dir>/preprocessed/slides_classification/coords"
    header("tile", f"tissue detection and {cfg.tile_size}-px tiles at {cfg.target_mpp} µm/px of {cfg.slides}",
           where)
    try:
        summary = tile_slides(
            slides=os.path.expanduser(str(cfg.slides)),
            output_dir=cfg.output_dir,
            tile_size=int(cfg.tile_size),
            target_mpp=float(cfg.target_mpp),
            min_tissue=float(cfg.min_tissue),
            default_mpp=None if cfg.default_mpp is None else float(cfg.default_mpp),
            mpp_tolerance=float(cfg.mpp_tolerance),
            mask_mpp=float(cfg.mask_mpp),
            num_workers=int(cfg.num_workers),
            qc=bool(cfg.qc),
            overwrite=bool(cfg.overwrite),
            empty_is_failure=bool(cfg.empty_is_failure),
            cohort=cfg.cohort,
            layout=str(cfg.layout),
            progress=bool(cfg.progress),
            data_dir=cfg.get("data_dir"),
            annotations=None if cfg.get("annotations") in (None, "") else os.path.expanduser(str(cfg.annotations)),
            include_classes=None if cfg.get("include_classes") is None else [str(c) for c in cfg.include_classes],
            exclude_classes=None if cfg.get("exclude_classes") is None else [str(c) for c in cfg.exclude_classes],
            reader=str(cfg.get("reader") or "auto"),
        )
    except ValueError as err:
        print(f"rlbench tile: {err}", file=sys.stderr)
        return 2
    if cfg.output_dir is not None:  # after the run: a refused input leaves no folder behind
        save_config(cfg, cfg.output_dir, verbose)
    return 0 if summary.ok else 1
