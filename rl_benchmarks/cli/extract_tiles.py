"""``rlbench extract-tiles``: a tile dataset -> ``tile_features.npy`` + ``tile_ids.npy``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rl_benchmarks import __version__
from rl_benchmarks.extraction.tiles import extract_tile_dataset


def main(cfg: DictConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from hydra.utils import instantiate

    from rl_benchmarks import paths
    from rl_benchmarks.cli.extract_slides import apply_weights_path
    from rl_benchmarks.extraction.slides import check_int
    from rl_benchmarks.models.feature_extractors import extractor_from_config
    from rl_benchmarks.utils.safe_names import safe_name
    from rl_benchmarks.utils.seed import set_seed

    for key, minimum in (("batch_size", 1), ("num_workers", 0), ("chunk_size", 1), ("seed", 0)):
        check_int(key, cfg[key], minimum=minimum)  # one line, before any work
    apply_weights_path(cfg)
    set_seed(int(cfg.seed))  # random-init extractors (tests, demo) are reproducible
    device = list(cfg.device) if OmegaConf.is_list(cfg.device) else cfg.device
    extractor = extractor_from_config(cfg.feature_extractor, device=device,
                                      precision=cfg.precision)
    tile_size = extractor.tile_size if cfg.tile_size in (None, "auto") else check_int(
        "tile_size", cfg.tile_size)
    node = cfg.tile_dataset
    data_dir = cfg.get("data_dir") or None
    if "root" in node:  # image_folder: its own root, no data root needed
        frame = instantiate(node)()
        cohort = Path(str(node.root)).name
    else:  # a reference cohort, read under data_dir (the key, else $RLB_DATA_DIR / conf.yaml)
        frame = instantiate(node)(data_dir=str(paths.data_dir(data_dir)))
        cohort = node.cohort
    out = cfg.output_dir or cfg.features_output_dir
    if not out:
        out = (paths.data_dir(data_dir) / "preprocessed" / "tiles_classification"
               / "features" / safe_name(extractor.name) / cohort)
    record = {
        "extractor": extractor.record(), "tile_size": tile_size, "cohort": cohort,
        "seed": cfg.seed, "batch_size": cfg.batch_size, "num_workers": cfg.num_workers,
        "package_version": __version__, "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if not extractor.record().get("pretrained", True):
        print(f"extract-tiles: {extractor.name} has RANDOM weights (pretrained=false)")
    summary = extract_tile_dataset(
        frame, out, extractor, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers),
        chunk_size=int(cfg.chunk_size), tile_size=tile_size, record=record,
        progress=bool(cfg.progress), overwrite=bool(cfg.get("overwrite", False)),
        accept_legacy=bool(cfg.get("accept_legacy", False)), trust=bool(cfg.get("trust", False)),
    )
    print(f"extract-tiles: {summary.line()}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("extract-tiles", sys.argv[1:]))
