"""``rlbench extract-tiles``: a tile dataset -> ``tile_features.npy`` + ``tile_ids.npy``.

The stage is :func:`rl_benchmarks.extraction.stages.run_tiles`; this module calls it and
prints its summary.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from rl_benchmarks.extraction.stages import run_tiles


def main(cfg: DictConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def on_start(extractor, output_dir: Path) -> None:
        if not extractor.record().get("pretrained", True):
            print(f"extract-tiles: {extractor.name} has RANDOM weights (pretrained=false)")

    summary = run_tiles(cfg, on_start=on_start)
    print(f"extract-tiles: {summary.line()}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("extract-tiles", sys.argv[1:]))
