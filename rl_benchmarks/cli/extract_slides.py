"""``rlbench extract-slides``: slides -> per-slide ``features.npy``.

The stage is :func:`rl_benchmarks.extraction.stages.run_slides`; this module starts the
``torchrun`` process group, calls it, prints the summary on rank 0 and chooses the exit
code (0, 1 when a slide failed, 2 for bad input).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from rl_benchmarks.cli.console import header, quiet_logging, save_config
from rl_benchmarks.cli.encoders import spec_file_overrides as preprocess_overrides  # noqa: F401 - feature_extractor=<spec.yaml>
from rl_benchmarks.extraction.stages import (  # noqa: F401 - apply_weights_path: old import path
    SlideSelectionError,
    apply_weights_path,
    init_dist,
    run_slides,
)
from rl_benchmarks.utils import distributed as dist_utils

logger = logging.getLogger("rlbench.extract")


def main(cfg: DictConfig) -> int:
    verbose = bool(cfg.get("verbose", False))
    quiet_logging(verbose)
    dist = init_dist(cfg)

    def on_start(extractor, output_dir: Path) -> None:
        if not dist.is_main:
            return
        random = "" if extractor.record().get("pretrained", True) else " (RANDOM weights, pretrained=false)"
        header("extract-slides", f"{extractor.name}{random} features of {cfg.slides or 'the cohort'}",
               output_dir)

    try:
        summary = run_slides(cfg, dist, on_start=on_start)
    except SlideSelectionError as err:
        print(f"extract-slides: {err}", file=sys.stderr)
        return 2
    code = 0
    if dist.is_main:
        print(f"extract-slides: {summary.line()}")
        for slide_id, error in sorted(summary.failed.items()):
            print(f"  failed: {slide_id}: {error}", file=sys.stderr)
        fallback = sorted((k, d.fallback) for k, d in summary.decoders.items() if not d.on_device)
        for slide_id, why in fallback[:10]:
            print(f"  decoded on the CPU ({why}): {slide_id}")
        if len(fallback) > 10:
            print(f"  ... and {len(fallback) - 10} more slides decoded on the CPU "
                  f"(features.json: decoder_fallback)")
        for slide_id, owner in sorted(summary.held.items()):
            print(f"  left to another run ({owner}): {slide_id}")
        if summary.failed:
            print(f"  failures listed in {Path(summary.output_dir) / 'failures.csv'}",
                  file=sys.stderr)
            code = 1
        save_config(cfg, summary.output_dir, verbose)
    dist_utils.barrier(dist)
    dist_utils.shutdown(dist)
    return code


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("extract-slides", sys.argv[1:]))
