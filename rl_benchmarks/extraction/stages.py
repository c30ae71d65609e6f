"""The ``extract-slides`` and ``extract-tiles`` stages: from a composed config to features.

:func:`run_slides` turns an ``extract_features/slide_config`` config into per-slide
``features.npy`` files (:func:`rl_benchmarks.extraction.slides.run_slide_extraction`) and
:func:`run_tiles` a ``tile_config`` config into ``tile_features.npy`` + ``tile_ids.npy``
(:func:`rl_benchmarks.extraction.tiles.extract_tile_dataset`). Both return the summary of
the run and print nothing; the commands (``rlbench extract-slides``/``extract-tiles``) print
it and choose the exit code.

What is decided here, once: which slides a config names (``slides=``, ``slide_dataset=`` or
a CSV cohort, plus ``coords_dir``), where outputs go by default, which extractor and
settings the config describes, and what the run records.

``shard=i num_shards=K`` makes the run job i of K independent jobs (a Hydra sweep,
docs/sweeps.md): it extracts its part of the slides (:func:`shard_of`, torchrun's rule) and
the last job to finish writes the run files of all (:func:`finish_shard`), so K jobs leave
exactly the files of one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rl_benchmarks.extraction.sharding import check_shard
from rl_benchmarks.extraction.slides import (
    ExtractionSummary,
    SlideExtractionSettings,
    SlideInput,
    attach_coords_dir,
    check_int,
    list_slides,
    resolve_decode,
    run_slide_extraction,
    slide_settings,
)
from rl_benchmarks.extraction.tiles import TileExtractionSummary, extract_tile_dataset
from rl_benchmarks.utils import distributed as dist_utils


class SlideSelectionError(ValueError):
    """The config names no slides, both kinds of slides, or no output folder.

    ``rlbench extract-slides`` prints it as ``extract-slides: <message>`` (exit 2)."""


def unset(value: Any) -> Any:
    """None for the config's spellings of "not given" (null, "", "None", "auto")."""
    return None if value in (None, "", "null", "None", "auto") else value


def apply_weights_path(cfg: DictConfig) -> None:
    """The short form ``weights_path=<file>`` sets ``feature_extractor.weights_path`` (as
    export-hf, finetune and demo accept it); both given and different is an error."""
    from omegaconf import open_dict

    short = unset(cfg.get("weights_path"))
    if short is None:
        return
    node = cfg.feature_extractor
    current = unset(node.get("weights_path"))
    if current is not None and str(current) != str(short):
        raise ValueError(f"weights_path={short} and feature_extractor.weights_path={current} "
                         f"differ: give one of them")
    with open_dict(node):
        node.weights_path = str(short)


def _device(cfg: DictConfig) -> Any:
    """``cfg.device`` as the extractor builders take it (a list stays a list)."""
    return list(cfg.device) if OmegaConf.is_list(cfg.device) else cfg.device


# --------------------------------------------------------------------------- extract-slides


def init_dist(cfg: DictConfig) -> dist_utils.DistInfo:
    """This process's place under ``torchrun`` (NCCL when GPUs are used, else gloo); a
    single process without it."""
    import torch

    use_cuda = torch.cuda.is_available() and cfg.device != -1
    return dist_utils.init_from_env("cuda" if use_cuda else "cpu")


def settings_from_config(cfg: DictConfig, tile_size: int | None = None
                         ) -> SlideExtractionSettings:
    """The :class:`SlideExtractionSettings` of an ``extract-slides`` config (checked: a bad
    value is a one-line ValueError). ``tile_size`` replaces the config's when given."""
    return SlideExtractionSettings(
        n_tiles=unset(cfg.n_tiles), random_sampling=cfg.random_sampling, seed=cfg.seed,
        batch_size=cfg.batch_size, num_workers=cfg.num_workers,
        target_mpp=unset(cfg.target_mpp),
        tile_size=unset(cfg.tile_size) if tile_size is None else tile_size,
        min_tissue=cfg.min_tissue, default_mpp=unset(cfg.default_mpp),
        mpp_tolerance=cfg.mpp_tolerance, float16=cfg.float16, progress=cfg.progress,
        overwrite=cfg.get("overwrite", False), accept_legacy=cfg.get("accept_legacy", False),
        output_format=str(cfg.get("output_format", "npy")),
        reader=str(cfg.get("reader") or "auto"), stain_norm=stain_from_config(cfg),
        decode=str(cfg.get("decode") or "cpu"),
    )


def stain_from_config(cfg: DictConfig):
    """The stain normaliser of ``cfg.stain_norm`` (fitted to its target now, so a bad target
    is a one-line error before any slide is read), or None."""
    from rl_benchmarks.slides.stain import from_config

    return from_config(cfg.get("stain_norm"))


def build_extractor(cfg: DictConfig, dist: dist_utils.DistInfo):
    """The extractor of ``cfg.feature_extractor``; one GPU per rank under torchrun."""
    import torch

    from rl_benchmarks.models.feature_extractors import extractor_from_config

    device = cfg.device
    if dist.enabled and torch.cuda.is_available() and device != -1:
        device = dist.local_rank
    if OmegaConf.is_list(device):
        device = list(device)
    return extractor_from_config(cfg.feature_extractor, device=device, precision=cfg.precision,
                                 inference_path=cfg.get("inference_path", "auto"))


def cohort_slides(cfg: DictConfig, extractor_name: str, tile_size: int
                  ) -> tuple[list[SlideInput], Path | None]:
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
    data_root = paths.data_dir(unset(cfg.get("data_dir")))
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


def slides_and_output(cfg: DictConfig, extractor_name: str, tile_size: int
                      ) -> tuple[list[SlideInput], Path]:
    """The slides an ``extract-slides`` config names (``slides=`` or ``slide_dataset=``,
    with the coords of ``coords_dir`` attached) and its output folder.

    Raises :class:`SlideSelectionError` when neither or both kinds of slides are given, or
    when no output folder is given and the slides have no default one."""
    out = unset(cfg.output_dir) or unset(cfg.features_output_dir)
    if cfg.get("slide_dataset") is not None and unset(cfg.slides) is not None:
        raise SlideSelectionError(
            "give slides=<folder or CSV> or slide_dataset=<cohort>, not both")
    if cfg.get("slide_dataset") is not None:
        slides, default_out = cohort_slides(cfg, extractor_name, tile_size)
        out = out or default_out
    elif unset(cfg.slides) is not None:
        given = cfg.slides
        slides = list_slides([str(v) for v in given] if OmegaConf.is_list(given)
                             else str(given))
    else:
        raise SlideSelectionError("give slides=<folder or CSV> or slide_dataset=<cohort>")
    if out is None:
        raise SlideSelectionError("give output_dir=<folder>")
    if unset(cfg.get("coords_dir")) is not None:  # rlbench tile's output: reuse its coords
        slides = attach_coords_dir(slides, str(cfg.coords_dir))
    return slides, Path(out)


def slides_run_record(cfg: DictConfig, extractor, settings: SlideExtractionSettings
                      ) -> dict[str, Any]:
    """What ``extraction_params.json`` and each ``features.json`` record about the run."""
    from rl_benchmarks import __version__

    return {
        "extractor": extractor.record(),
        "tile_size": settings.tile_size,
        "mpp": settings.target_mpp or extractor.mpp,
        "n_tiles": settings.n_tiles,
        "random_sampling": settings.random_sampling,
        "seed": settings.seed,
        "precision": cfg.precision,
        "package_version": __version__,
        # a shard job records what one job would (shard 0 of 1): same records, same files
        "config": {**OmegaConf.to_container(cfg, resolve=True),
                   **({"shard": 0, "num_shards": 1} if "num_shards" in cfg else {})},
    }


# --------------------------------------------------------------------------- shards of a sweep

SHARDS_DIR = ".rlbench_shards"  # each finished shard's failures, until the last one merges


def shard_of(cfg: DictConfig, slides: list[SlideInput], n_tiles: int | None,
             dist: dist_utils.DistInfo) -> list[SlideInput]:
    """The slides of job ``shard`` of ``num_shards`` (:func:`~rl_benchmarks.extraction.
    sharding.select_shard`: torchrun's balance by tile count when every slide has given
    coords, else round-robin); every slide when ``num_shards`` is 1."""
    from rl_benchmarks.extraction.sharding import given_tile_counts, select_shard

    shard, num_shards = cfg.get("shard", 0), cfg.get("num_shards", 1)
    if num_shards == 1 and shard == 0:
        return slides
    if dist.enabled:
        raise ValueError("shard/num_shards split slides across independent jobs (a Hydra "
                         "sweep); under torchrun the ranks already share them: give one")
    costs = given_tile_counts([s.coords_path for s in slides], n_tiles)
    return [slides[i] for i in select_shard(costs, shard, num_shards)]


def finish_shard(out: Path, cfg: DictConfig, slides: list[SlideInput], record: dict[str, Any],
                 new: dict[str, Any], summary: ExtractionSummary) -> None:
    """After job ``shard`` of ``num_shards``: keep its failures beside the outputs; the last
    shard to finish writes ``extraction_params.json`` (every slide) and ``failures.csv``
    (every shard's failures) as one job would, and removes the side files."""
    import shutil

    from rl_benchmarks.extraction import locks
    from rl_benchmarks.extraction.slides import _write_failures, _write_params
    from rl_benchmarks.utils import io

    shard, num_shards = int(cfg.shard), int(cfg.num_shards)
    side, guard = out / SHARDS_DIR, out / f"{SHARDS_DIR}.lock"
    locks.wait_lock(guard)
    try:
        io.write_json(side / f"{shard}-of-{num_shards}.json",
                      {"failed": summary.failed, "held": summary.held, "legacy": summary.legacy})
        parts = [side / f"{i}-of-{num_shards}.json" for i in range(num_shards)]
        if not all(p.is_file() for p in parts):
            return
        merged = ExtractionSummary(output_dir=str(out))
        for part in parts:
            obj = json.loads(part.read_text())
            merged.failed.update(obj.get("failed") or {})
            merged.held.update(obj.get("held") or {})
            merged.legacy += list(obj.get("legacy") or [])
        _write_params(out, record, new, slides, merged)
        _write_failures(out, merged.failed, slides, merged.held)
        shutil.rmtree(side, ignore_errors=True)
    finally:
        locks.release(guard)


def run_slides(
    cfg: DictConfig,
    dist: dist_utils.DistInfo | None = None,
    on_start: Callable[[Any, Path], None] | None = None,
) -> ExtractionSummary:
    """Run ``extract-slides`` as ``cfg`` describes; returns this rank's summary (the merged
    one on rank 0).

    ``on_start(extractor, output_dir)`` is called once everything is checked, before the
    (long) extraction. Bad input raises a one-line ``ValueError`` (a
    :class:`SlideSelectionError` for missing slides or output folder) before any output is
    written; ``StaleOutputError`` when finished outputs were made with other settings."""
    from rl_benchmarks.utils.seed import set_seed

    dist = dist or dist_utils.DistInfo()
    settings_from_config(cfg)  # bad values: one line, before any work
    check_shard(cfg.get("shard", 0), cfg.get("num_shards", 1))
    apply_weights_path(cfg)
    set_seed(int(cfg.seed))  # random-init extractors (tests, demo) are reproducible
    extractor = build_extractor(cfg, dist)
    tile_size = extractor.tile_size if unset(cfg.tile_size) is None else int(cfg.tile_size)
    if tile_size != extractor.tile_size:
        raise ValueError(f"tile_size={tile_size} differs from {extractor.name}'s "
                         f"{extractor.tile_size}: leave tile_size=auto")
    slides, out = slides_and_output(cfg, extractor.name, tile_size)
    settings = settings_from_config(cfg, tile_size=tile_size)
    resolve_decode(settings.decode, extractor.device)  # decode=gpu without CUDA: one line, now
    record = slides_run_record(cfg, extractor, settings)
    mine = shard_of(cfg, slides, settings.n_tiles, dist)
    if on_start is not None:
        on_start(extractor, out)
    summary = run_slide_extraction(mine, out, extractor, settings, run_record=record, dist=dist)
    if mine is not slides:
        finish_shard(out, cfg, slides, record, slide_settings(extractor, settings), summary)
    return summary


# --------------------------------------------------------------------------- extract-tiles


def tile_dataset_frame(cfg: DictConfig):
    """The tiles (``image_path``, ``image_id``) of ``cfg.tile_dataset`` and its cohort name:
    an ImageFolder tree (its own ``root``, no data root needed) or a reference cohort read
    under ``data_dir`` (the key, else ``$RLB_DATA_DIR`` / conf.yaml)."""
    from hydra.utils import instantiate

    from rl_benchmarks import paths

    node = cfg.tile_dataset
    if "root" in node:
        return instantiate(node)(), Path(str(node.root)).name
    frame = instantiate(node)(data_dir=str(paths.data_dir(cfg.get("data_dir") or None)))
    return frame, node.cohort


def run_tiles(
    cfg: DictConfig,
    on_start: Callable[[Any, Path], None] | None = None,
) -> TileExtractionSummary:
    """Run ``extract-tiles`` as ``cfg`` describes.

    ``on_start(extractor, output_dir)`` is called before the (long) extraction. The default
    output folder is ``<data_dir>/preprocessed/tiles_classification/features/<extractor>/
    <cohort>``. Bad input raises a one-line ``ValueError``."""
    from rl_benchmarks import __version__, paths
    from rl_benchmarks.models.feature_extractors import extractor_from_config
    from rl_benchmarks.utils.safe_names import safe_name
    from rl_benchmarks.utils.seed import set_seed

    for key, minimum in (("batch_size", 1), ("num_workers", 0), ("chunk_size", 1), ("seed", 0)):
        check_int(key, cfg[key], minimum=minimum)  # one line, before any work
    apply_weights_path(cfg)
    stain = stain_from_config(cfg)  # a bad target fails here, before the model is built
    set_seed(int(cfg.seed))  # random-init extractors (tests, demo) are reproducible
    extractor = extractor_from_config(cfg.feature_extractor, device=_device(cfg),
                                      precision=cfg.precision,
                                      inference_path=cfg.get("inference_path", "auto"))
    tile_size = extractor.tile_size if cfg.tile_size in (None, "auto") else check_int(
        "tile_size", cfg.tile_size)
    frame, cohort = tile_dataset_frame(cfg)
    out = cfg.output_dir or cfg.features_output_dir
    if not out:
        out = (paths.data_dir(cfg.get("data_dir") or None) / "preprocessed"
               / "tiles_classification" / "features" / safe_name(extractor.name) / cohort)
    record = {
        "extractor": extractor.record(), "tile_size": tile_size, "cohort": cohort,
        "seed": cfg.seed, "batch_size": cfg.batch_size, "num_workers": cfg.num_workers,
        "package_version": __version__, "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if on_start is not None:
        on_start(extractor, Path(out))
    return extract_tile_dataset(
        frame, out, extractor, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers),
        chunk_size=int(cfg.chunk_size), tile_size=tile_size, record=record,
        progress=bool(cfg.progress), overwrite=bool(cfg.get("overwrite", False)),
        accept_legacy=bool(cfg.get("accept_legacy", False)), stain=stain,
    )
