"""``rlbench extract-tiles``: a tile dataset -> ``tile_features.npy`` + ``tile_ids.npy``.

The stage is :func:`rl_benchmarks.extraction.stages.run_tiles`; this module calls it and
prints its summary.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from rl_benchmarks.cli.console import header, quiet_logging, save_config
from rl_benchmarks.cli.encoders import spec_file_overrides as preprocess_overrides  # noqa: F401 - feature_extractor=<spec.yaml>
from rl_benchmarks.extraction.stages import run_tiles


def main(cfg: DictConfig) -> int:
    """Extract the tile dataset's features: a header line, the progress bar, the summary."""
    verbose = bool(cfg.get("verbose", False))
    quiet_logging(verbose)
    where: list[Path] = []

    def on_start(extractor, output_dir: Path) -> None:
        where.append(Path(output_dir))
        random = "" if extractor.record().get("pretrained", True) else " (RANDOM weights, pretrained=false)"
        header("extract-tiles", f"{extractor.name}{random} features of the tile dataset", output_dir)

    summary = run_tiles(cfg, on_start=on_start)
    print(f"extract-tiles: {summary.line()}")
    if where:
        save_config(cfg, where[0], verbose)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("extract-tiles", sys.argv[1:]))
