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

from rl_benchmarks.extraction.stages import (  # noqa: F401 - apply_weights_path: old import path
    SlideSelectionError,
    apply_weights_path,
    init_dist,
    run_slides,
)
from rl_benchmarks.utils import distributed as dist_utils

logger = logging.getLogger("rlbench.extract")


def main(cfg: DictConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dist = init_dist(cfg)

    def on_start(extractor, output_dir: Path) -> None:
        if not extractor.record().get("pretrained", True) and dist.is_main:
            print(f"extract-slides: {extractor.name} has RANDOM weights (pretrained=false)")

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
        for slide_id, owner in sorted(summary.held.items()):
            print(f"  left to another run ({owner}): {slide_id}")
        if summary.failed:
            print(f"  failures listed in {Path(summary.output_dir) / 'failures.csv'}",
                  file=sys.stderr)
            code = 1
    dist_utils.barrier(dist)
    dist_utils.shutdown(dist)
    return code


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("extract-slides", sys.argv[1:]))
