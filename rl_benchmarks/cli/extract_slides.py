"""``rlbench extract-slides``: slides -> per-slide ``features.npy`` (see extraction.slides)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rl_benchmarks import __version__
from rl_benchmarks.extraction.slides import (
    SlideExtractionSettings,
    SlideInput,
    attach_coords_dir,
    list_slides,
    run_slide_extraction,
)
from rl_benchmarks.utils import distributed as dist_utils

logger = logging.getLogger("rlbench.extract")


def _none(value):
    return None if value in (None, "", "null", "None", "auto") else value


def apply_weights_path(cfg: DictConfig) -> None:
    """The short form ``weights_path=<file>`` sets ``feature_extractor.weights_path`` (as
    export-hf, finetune and demo accept it); both given and different is an error."""
    from omegaconf import open_dict

    short = _none(cfg.get("weights_path"))
    if short is None:
        return
    node = cfg.feature_extractor
    current = _none(node.get("weights_path"))
    if current is not None and str(current) != str(short):
        raise ValueError(f"weights_path={short} and feature_extractor.weights_path={current} "
                         f"differ: give one of them")
    with open_dict(node):
        node.weights_path = str(short)


def build_extractor(cfg: DictConfig, dist: dist_utils.DistInfo):
    """The extractor of ``cfg.feature_extractor``; one GPU per rank under torchrun."""
    import torch

    from rl_benchmarks.models.feature_extractors import extractor_from_config

    device = cfg.device
    if dist.enabled and torch.cuda.is_available() and device != -1:
        device = dist.local_rank
    if OmegaConf.is_list(device):
        device = list(device)
    return extractor_from_config(cfg.feature_extractor, device=device, precision=cfg.precision)


def reference_slides(cfg: DictConfig, extractor_name: str, tile_size: int):
    """Slides, coords and the default output folder of ``slide_dataset``.

    A reference cohort is read under ``data_dir`` (the key, else ``$RLB_DATA_DIR`` /
    conf.yaml) and keeps the reference's folder names (the slide file name). A CSV cohort
    (``slide_dataset=csv slide_dataset.cohort=<csv>``) is read as ``slides=<csv>`` is: only
    ``slide_path`` is needed, no label and no data root, and it has no default output
    folder (None)."""
    from hydra.utils import instantiate

    from rl_benchmarks import paths
    from rl_benchmarks.datasets.slides_classification.csv_cohort import is_csv_cohort
    from rl_benchmarks.utils.safe_names import safe_name

    cohort = cfg.slide_dataset.cohort
    if is_csv_cohort(cohort):
        return list_slides(str(cohort)), None
    data_root = paths.data_dir(_none(cfg.get("data_dir")))
    root = data_root / "preprocessed" / "slides_classification" / "features"
    sub = Path("TCGA") / cohort if cohort.upper().startswith("TCGA_") else Path(cohort)
    default_out = root / safe_name(extractor_name) / sub
    frame = instantiate(cfg.slide_dataset)(tile_size=tile_size, load_slide=True,
                                           data_dir=str(data_root))
    slides = []
    for row in frame.itertuples(index=False):
        path = Path(row.slide_path)
        coords = getattr(row, "coords_path", None)
        coords = None if coords is None or str(coords) == "nan" else Path(coords)
        slides.append(SlideInput(path, path.name, coords))
    return slides, default_out


def main(cfg: DictConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    dist = dist_utils.init_from_env("cuda" if torch.cuda.is_available() and cfg.device != -1
                                    else "cpu")
    from rl_benchmarks.utils.seed import set_seed

    settings_args = dict(
        n_tiles=_none(cfg.n_tiles), random_sampling=cfg.random_sampling, seed=cfg.seed,
        batch_size=cfg.batch_size, num_workers=cfg.num_workers,
        target_mpp=_none(cfg.target_mpp), tile_size=_none(cfg.tile_size),
        min_tissue=cfg.min_tissue, default_mpp=_none(cfg.default_mpp),
        mpp_tolerance=cfg.mpp_tolerance, float16=cfg.float16, progress=cfg.progress,
        overwrite=cfg.get("overwrite", False), accept_legacy=cfg.get("accept_legacy", False),
    )
    SlideExtractionSettings(**settings_args)  # bad values: one line, before any work
    apply_weights_path(cfg)
    set_seed(int(cfg.seed))  # random-init extractors (tests, demo) are reproducible
    extractor = build_extractor(cfg, dist)
    tile_size = extractor.tile_size if _none(cfg.tile_size) is None else int(cfg.tile_size)
    if tile_size != extractor.tile_size:
        raise ValueError(f"tile_size={tile_size} differs from {extractor.name}'s "
                         f"{extractor.tile_size}: leave tile_size=auto")
    out = _none(cfg.output_dir) or _none(cfg.features_output_dir)
    if cfg.get("slide_dataset") is not None and _none(cfg.slides) is not None:
        print("extract-slides: give slides=<folder or CSV> or slide_dataset=<cohort>, not both",
              file=sys.stderr)
        return 2
    if cfg.get("slide_dataset") is not None:
        slides, default_out = reference_slides(cfg, extractor.name, tile_size)
        out = out or default_out
    elif _none(cfg.slides) is not None:
        given = cfg.slides
        slides = list_slides([str(v) for v in given] if OmegaConf.is_list(given)
                             else str(given))
    else:
        print("extract-slides: give slides=<folder or CSV> or slide_dataset=<cohort>",
              file=sys.stderr)
        return 2
    if out is None:
        print("extract-slides: give output_dir=<folder>", file=sys.stderr)
        return 2
    if _none(cfg.get("coords_dir")) is not None:  # rlbench tile's output: reuse its coords
        slides = attach_coords_dir(slides, str(cfg.coords_dir))
    settings = SlideExtractionSettings(**{**settings_args, "tile_size": tile_size})
    record = {
        "extractor": extractor.record(),
        "tile_size": tile_size,
        "mpp": settings.target_mpp or extractor.mpp,
        "n_tiles": settings.n_tiles,
        "random_sampling": settings.random_sampling,
        "seed": settings.seed,
        "precision": cfg.precision,
        "package_version": __version__,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if not extractor.record().get("pretrained", True) and dist.is_main:
        print(f"extract-slides: {extractor.name} has RANDOM weights (pretrained=false)")
    summary = run_slide_extraction(slides, out, extractor, settings, run_record=record, dist=dist)
    code = 0
    if dist.is_main:
        print(f"extract-slides: {summary.line()}")
        for slide_id, error in sorted(summary.failed.items()):
            print(f"  failed: {slide_id}: {error}", file=sys.stderr)
        for slide_id, owner in sorted(summary.held.items()):
            print(f"  left to another run ({owner}): {slide_id}")
        if summary.failed:
            print(f"  failures listed in {Path(out) / 'failures.csv'}", file=sys.stderr)
            code = 1
    dist_utils.barrier(dist)
    dist_utils.shutdown(dist)
    return code


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("extract-slides", sys.argv[1:]))
