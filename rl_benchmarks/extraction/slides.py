"""Slides -> ``<output_dir>/<slide file name>/features.npy`` ((N, 3+D) float32,
``[dz_level, col, row, f_1..f_D]``).

Design:

* **Plan.** Each slide gets coords: a given ``coords.npy``, one already written beside
  its outputs, or tissue tiling on the fly (:func:`rl_benchmarks.slides.tile_slide`) with
  the extractor's tile size and mpp (saved too). Slides whose ``features.npy`` exists are
  skipped, so a killed run, re-run, only does the rest.
* **Read.** One DataLoader over every selected tile of this rank's slides. Batches never
  span two slides, so a slide's features do not depend on which other slides a rank holds
  (1 rank and K ranks give identical files). Workers keep one OpenSlide handle per slide
  and return uint8 tiles; normalisation runs batched on tensors in the main process.
* **Write.** When a slide's last batch is done, its matrix and a JSON record are written
  atomically. A tile that cannot be read fails its slide (one line, a row in
  ``failures.csv``), and the other slides go on.
* **Scale.** Under ``torchrun`` slides are sharded across ranks, balanced by tile count;
  each rank writes its own slides and rank 0 writes the run files and the summary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rl_benchmarks.extraction import distributed as dist_utils
from rl_benchmarks.extraction.sampling import select_tiles
from rl_benchmarks.extraction.sharding import shard_by_cost
from rl_benchmarks.utils import io

logger = logging.getLogger(__name__)

FEATURES_NAME = "features.npy"
COORDS_NAME = "coords.npy"
RECORD_NAME = "features.json"
FAILURES_NAME = "failures.csv"


@dataclass
class SlideInput:
    """One slide to extract: its file, its id (file name with extension) and optional coords."""

    slide_path: Path
    slide_id: str
    coords_path: Path | None = None


@dataclass
class SlideExtractionSettings:
    """What to extract (defaults = the reference script's values, except n_tiles)."""

    n_tiles: int | None = None
    random_sampling: bool = False
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 8
    target_mpp: float | None = None  # None: the extractor's mpp
    tile_size: int | None = None  # None: the extractor's tile size
    min_tissue: float = 0.6
    default_mpp: float | None = None
    mpp_tolerance: float = 0.2
    float16: bool = False
    progress: bool = True


@dataclass
class ExtractionSummary:
    """What a run did: done, skipped and failed slides, and where the outputs went."""

    output_dir: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    n_tiles: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.n_tiles / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{len(self.done)} slides done, {len(self.skipped)} skipped (already extracted), "
            f"{len(self.failed)} failed; {self.n_tiles} tiles in {self.seconds:.1f} s "
            f"({rate:.1f} tiles/s); outputs in {self.output_dir}"
        )


# --------------------------------------------------------------------------- inputs


def list_slides(slides: str | Path | Sequence[str | Path]) -> list[SlideInput]:
    """Slides from a folder (every known WSI extension), a CSV (``slide_path`` column, and
    optional ``slide_id`` and ``coords_path`` columns) or a list of paths."""
    from rl_benchmarks.slides.tiling import collect_slides, read_slide_table

    src = Path(slides) if isinstance(slides, (str, Path)) else None
    if src is None or src.suffix.lower() != ".csv":
        return [SlideInput(p, p.name) for p in collect_slides(slides)]
    out = []
    for path, row in read_slide_table(src):
        sid = (row.get("slide_id") or "").strip() or None
        coords = (row.get("coords_path") or "").strip() or None
        coords = None if coords is None else Path(coords).expanduser()
        if coords is not None and not coords.is_absolute():
            coords = src.parent / coords
        out.append(SlideInput(path, path.name if sid is None else sid, coords))
    return out


# --------------------------------------------------------------------------- reading


class _TileBatches(Dataset):
    """Item k = batch k: (uint8 tiles (b,T,T,3), slide index, first tile index, error
    message or "")."""

    def __init__(self, slides: list[tuple[Path, np.ndarray]], batches: list[tuple[int, int, int]],
                 tile_size: int):
        self.slides = slides  # (path, coords (n,3)) per slide
        self.batches = batches  # (slide index, start, stop)
        self.tile_size = tile_size
        self._cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def _reader(self, slide_index: int):
        from rl_benchmarks.slides.reader import TileReader

        if slide_index not in self._cache:
            for old in self._cache.values():  # one open slide per worker at a time
                old.close()
            self._cache.clear()
            self._cache[slide_index] = TileReader(self.slides[slide_index][0], self.tile_size)
        return self._cache[slide_index]

    def __getitem__(self, k: int):
        slide_index, start, stop = self.batches[k]
        try:
            reader = self._reader(slide_index)
            coords = self.slides[slide_index][1]
            tiles = np.empty((stop - start, self.tile_size, self.tile_size, 3), np.uint8)
            for j, (lvl, col, row) in enumerate(coords[start:stop]):
                tiles[j] = reader.read(int(lvl), int(col), int(row))
            return torch.from_numpy(tiles), slide_index, start, ""
        except Exception as exc:  # a tile that cannot be read fails its slide only
            empty = torch.zeros((0, self.tile_size, self.tile_size, 3), dtype=torch.uint8)
            return empty, slide_index, start, _describe(exc)


class _InOrder(Sampler[int]):
    def __init__(self, n: int):
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


def _identity_collate(batch):
    return batch[0]


def features_of_uint8(extractor, tiles: torch.Tensor) -> np.ndarray:
    """Features (B, D) float32 of uint8 tiles (B, H, W, 3): batched normalisation on the
    extractor's device, then the model."""
    x = tiles.to(extractor.device, non_blocking=True)
    return extractor(extractor.normalize_uint8(x, channels_last=True)).cpu().numpy()


def extract_from_coords(
    jobs: list[tuple[Path, np.ndarray]],
    extractor,
    tile_size: int,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    on_slide_done=None,
    desc: str = "extract",
) -> dict[int, np.ndarray | str]:
    """Features of ``jobs`` (slide path, coords (n,3)), slide by slide.

    ``on_slide_done(index, result)`` is called as soon as a slide is complete, with its
    (n, 3+D) float32 matrix or an error message; the function then keeps no matrix (memory
    stays at one slide in flight) and returns index -> "" (done) or the error. Without a
    callback it returns index -> matrix or error message.
    """
    from tqdm.auto import tqdm

    batches = [
        (s, start, min(start + batch_size, len(coords)))
        for s, (_, coords) in enumerate(jobs)
        for start in range(0, len(coords), batch_size)
    ]
    remaining = {s: -(-len(c) // batch_size) for s, (_, c) in enumerate(jobs)}
    parts: dict[int, list[np.ndarray]] = {s: [] for s in remaining}
    results: dict[int, np.ndarray | str] = {}

    def finish(s: int, result: np.ndarray | str) -> None:
        if on_slide_done is None:
            results[s] = result
        else:
            results[s] = result if isinstance(result, str) else ""
            on_slide_done(s, result)

    for s, (_, coords) in enumerate(jobs):  # slides without tiles are complete at once
        if len(coords) == 0:
            finish(s, np.zeros((0, 3 + extractor.feature_dim), np.float32))
    loader = DataLoader(
        _TileBatches(jobs, batches, tile_size),
        batch_size=1,
        sampler=_InOrder(len(batches)),
        num_workers=num_workers,
        collate_fn=_identity_collate,
        pin_memory=getattr(extractor, "device", torch.device("cpu")).type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    total = sum(len(c) for _, c in jobs)
    bar = tqdm(total=total, unit="tile", desc=desc, disable=not progress, smoothing=0.05)
    for tiles, s, start, error in loader:
        bar.update(len(tiles))
        if s in results:  # the slide already failed
            continue
        if error:
            parts.pop(s, None)
            finish(s, error)
            continue
        meta = jobs[s][1][start:start + len(tiles)].astype(np.float32)
        parts[s].append(np.concatenate([meta, features_of_uint8(extractor, tiles)], axis=1))
        remaining[s] -= 1
        if remaining[s] == 0:
            finish(s, np.concatenate(parts.pop(s), axis=0))
    bar.close()
    return results


# --------------------------------------------------------------------------- pipeline


def _coords_for(slide: SlideInput, out_dir: Path, extractor, settings: SlideExtractionSettings):
    """Coords (n,3) int for a slide: given, previously written, or tiled now (and saved)."""
    if slide.coords_path is not None:
        coords = np.load(slide.coords_path)
    elif (out_dir / COORDS_NAME).is_file():
        coords = np.load(out_dir / COORDS_NAME)
    else:
        from rl_benchmarks.slides import tile_slide

        tiling = tile_slide(
            slide.slide_path,
            tile_size=settings.tile_size or extractor.tile_size,
            target_mpp=settings.target_mpp or extractor.mpp,
            min_tissue=settings.min_tissue,
            default_mpp=settings.default_mpp,
            mpp_tolerance=settings.mpp_tolerance,
        )
        coords = np.asarray(tiling.coords)
        try:
            from rl_benchmarks.slides.qc import save_qc

            save_qc(tiling, out_dir / "qc.png")
        except Exception as exc:  # a picture never fails a slide
            logger.warning("%s: QC picture not written: %s", slide.slide_path, exc)
        io.write_json(out_dir / "tiling.json", tiling.record())
        io.save_npy(out_dir / COORDS_NAME, coords.astype(np.int64))
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords for {slide.slide_id} must have shape (N, 3) "
                         f"[level, col, row], got {coords.shape}")
    if len(coords) and len(np.unique(coords[:, 0])) > 1:
        raise ValueError(f"coords for {slide.slide_id} mix several DeepZoom levels")
    return coords.astype(np.int64)


def run_slide_extraction(
    slides: Sequence[SlideInput],
    output_dir: str | Path,
    extractor,
    settings: SlideExtractionSettings,
    run_record: dict[str, Any] | None = None,
    dist: dist_utils.DistInfo | None = None,
) -> ExtractionSummary:
    """Extract every slide not yet done; see the module docstring."""
    dist = dist or dist_utils.DistInfo()
    out_root = Path(output_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    tile_size = settings.tile_size or extractor.tile_size
    summary = ExtractionSummary(output_dir=str(out_root))
    t0 = time.perf_counter()

    # 1. Plan: coords for every slide not done yet (tiling spread round-robin over ranks).
    todo: list[int] = []
    for i, slide in enumerate(slides):
        if (out_root / slide.slide_id / FEATURES_NAME).is_file():
            summary.skipped.append(slide.slide_id)
        else:
            todo.append(i)
    coords: dict[int, np.ndarray] = {}
    for k, i in enumerate(todo):
        if k % dist.world_size != dist.rank:
            continue
        try:
            coords[i] = _coords_for(slides[i], out_root / slides[i].slide_id, extractor, settings)
        except Exception as exc:
            summary.failed[slides[i].slide_id] = _describe(exc)
            logger.error("%s: %s", slides[i].slide_path, summary.failed[slides[i].slide_id])
    if dist.enabled:  # everyone needs every slide's tile count to shard
        dist_utils.barrier(dist)
        failed_anywhere = _all_failed(dist, summary)  # collective: every rank calls it once
        for i in todo:
            if i not in coords and slides[i].slide_id not in failed_anywhere:
                coords[i] = _coords_for(slides[i], out_root / slides[i].slide_id, extractor,
                                        settings)

    # 2. Select tiles (seeded per slide) and shard by tile count.
    selected: dict[int, np.ndarray] = {}
    for i, c in coords.items():
        idx = select_tiles(len(c), settings.n_tiles, settings.random_sampling, settings.seed,
                           slides[i].slide_id)
        selected[i] = c[idx]
    order = sorted(selected)
    shard = shard_by_cost([len(selected[i]) for i in order], dist.world_size)[dist.rank]
    mine = [order[j] for j in shard]

    # 3. Extract and write each slide as soon as it is complete.
    def write(local: int, result: np.ndarray | str) -> None:
        slide = slides[mine[local]]
        if isinstance(result, str):
            summary.failed[slide.slide_id] = result
            logger.error("%s: %s", slide.slide_path, result)
            return
        out_dir = out_root / slide.slide_id
        matrix = result.astype(np.float16) if settings.float16 else result
        record = {
            **(run_record or {}),
            "n_tiles_requested": (run_record or {}).get("n_tiles"),
            "slide_path": str(slide.slide_path),
            "slide_id": slide.slide_id,
            "n_tiles_available": int(len(coords[mine[local]])),
            "n_tiles": int(len(result)),
            "shape": list(matrix.shape),
            "dtype": str(matrix.dtype),
        }
        io.write_json(out_dir / RECORD_NAME, record)
        io.save_npy(out_dir / FEATURES_NAME, matrix)  # last: its presence means "done"
        summary.done.append(slide.slide_id)
        summary.n_tiles += int(len(result))

    jobs = [(slides[i].slide_path, selected[i]) for i in mine]
    extract_from_coords(jobs, extractor, tile_size, settings.batch_size, settings.num_workers,
                        progress=settings.progress and dist.is_main, on_slide_done=write,
                        desc=f"extract {len(jobs)} slides")
    summary.seconds = time.perf_counter() - t0

    # 4. Rank 0 gathers and writes the run files.
    gathered = dist_utils.all_gather_objects(dist, summary)
    if dist.is_main:
        summary = _merge(gathered, out_root)
        summary.seconds = time.perf_counter() - t0
        if run_record is not None:
            io.write_json(out_root / "extraction_params.json",
                          {**run_record, "slides": [str(s.slide_path) for s in slides]})
        _write_failures(out_root, summary.failed, slides)
    return summary


def _all_failed(dist: dist_utils.DistInfo, summary: ExtractionSummary) -> set[str]:
    failed: set[str] = set()
    for part in dist_utils.all_gather_objects(dist, sorted(summary.failed)):
        failed.update(part)
    return failed


def _merge(parts: list[ExtractionSummary], out_root: Path) -> ExtractionSummary:
    merged = ExtractionSummary(output_dir=str(out_root))
    for p in parts:
        merged.done += p.done
        merged.failed.update(p.failed)
        merged.n_tiles += p.n_tiles
    merged.skipped = parts[0].skipped
    return merged


def _write_failures(out_root: Path, failed: dict[str, str], slides: Sequence[SlideInput]) -> None:
    paths = {s.slide_id: str(s.slide_path) for s in slides}
    frame = pd.DataFrame(
        [{"slide": paths.get(k, k), "slide_id": k, "error": v} for k, v in sorted(failed.items())],
        columns=["slide", "slide_id", "error"],
    )
    io.write_csv(out_root / FAILURES_NAME, frame, index=False)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
