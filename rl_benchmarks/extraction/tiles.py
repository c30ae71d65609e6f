"""Tile datasets -> ``tile_features.npy`` (N, D) and ``tile_ids.npy`` (N,).

Works on any frame with ``image_path`` and ``image_id`` columns (NCT-CRC, Camelyon17-WILDS,
an ImageFolder tree). Tiles not at the extractor's size are resized as the reference does
(``PIL.Image.resize`` with Pillow's default filter). Work is cut into chunks written
atomically, so a killed run, re-run, resumes at the first missing chunk; the final files
are assembled at the end and the chunks removed.

* ``tile_ids.npy`` is a fixed-width unicode array, read with ``allow_pickle=False``. An
  object array written by an older version is read through the plain-data unpickler of
  :mod:`rl_benchmarks.utils.safe_pickle` (a crafted file is refused; no code runs) and, on
  resume, rewritten as fixed-width strings.
* Skips are never stale: the record (``rlbenchmarks_extraction_params.json``) and the
  chunks (``_chunks/settings.json``) hold the settings that define the features
  (:func:`tile_settings`: extractor, weights SHA-256 (of the parameters for random
  weights), precision, tile size, mean/std,
  the dataset's tile count and the SHA-256 of its ordered ids and paths; chunk size for
  chunks). Finished work is reused only when those match; otherwise the run stops before
  any work with one line naming the differences, unless ``overwrite=True`` (recompute).
  Outputs without such a record (older versions) count as a mismatch, unless
  ``accept_legacy=True`` keeps them.
* The output folder is one locked item (:mod:`rl_benchmarks.extraction.locks`): a second
  run on it waits for the first, then finds its files and reuses them.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from rl_benchmarks.extraction import locks
from rl_benchmarks.extraction.slides import (
    StaleOutputError,
    _read_json,
    check_int,
    features_of_uint8,
    settings_diff,
    weights_identity,
)
from rl_benchmarks.utils import io

logger = logging.getLogger(__name__)

FEATURES_NAME = "tile_features.npy"
IDS_NAME = "tile_ids.npy"
RECORD_NAME = "rlbenchmarks_extraction_params.json"
CHUNKS_DIR = "_chunks"
CHUNK_SETTINGS = "settings.json"
LOCK_NAME = ".rlbench.lock"


class TileImages(Dataset):
    """uint8 (T, T, 3) tensors of the images in ``paths`` (RGB, resized to T if needed)."""

    def __init__(self, paths: list[str], tile_size: int):
        self.paths = paths
        self.tile_size = tile_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except Exception as exc:
            raise OSError(f"cannot read tile image {path}: {exc}") from exc
        if image.size != (self.tile_size, self.tile_size):
            image = image.resize((self.tile_size, self.tile_size))
        return torch.from_numpy(np.array(image, dtype=np.uint8))


@dataclass
class TileExtractionSummary:
    output_dir: str
    n_tiles: int
    n_chunks_done: int
    n_chunks_skipped: int
    seconds: float
    note: str = ""

    def line(self) -> str:
        rate = self.n_tiles / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.n_tiles} tiles ({self.n_chunks_done} chunks extracted, "
                f"{self.n_chunks_skipped} resumed) in {self.seconds:.1f} s ({rate:.1f} tiles/s); "
                f"outputs in {self.output_dir}" + (f" ({self.note})" if self.note else ""))


def read_tile_ids(path: str | Path) -> np.ndarray:
    """``tile_ids.npy`` as a str array; numpy never unpickles it (see the module
    docstring for older object arrays)."""
    return _load_ids(Path(path))[0]


def _load_ids(path: Path) -> tuple[np.ndarray, bool]:
    """(ids as str, whether the file was an object array of an older version)."""
    from rl_benchmarks.utils.safe_pickle import load_object_npy

    try:
        return np.asarray(np.load(path, allow_pickle=False)).astype(str), False
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise ValueError(f"cannot read {path}: {exc}") from exc
    return load_object_npy(path).astype(str), True


def _sha256_lines(values: list[str]) -> str:
    h = hashlib.sha256()
    for v in values:
        h.update(v.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


def tile_settings(frame: pd.DataFrame, extractor, tile_size: int | None = None,
                  stain=None) -> dict[str, Any]:
    """The settings that define a tile dataset's features (compared before reusing any)."""
    rec = extractor.record()
    out = {
        "extractor": rec.get("name"),
        "weights_sha256": weights_identity(extractor),
        "precision": rec.get("precision"),
        "tile_size": int(tile_size or extractor.tile_size),
        "mean": [float(m) for m in rec.get("mean", [])],
        "std": [float(s) for s in rec.get("std", [])],
        "n_tiles": len(frame),
        "image_ids_sha256": _sha256_lines(frame["image_id"].astype(str).tolist()),
        "image_paths_sha256": _sha256_lines(frame["image_path"].astype(str).tolist()),
    }
    if stain is not None:  # absent otherwise: records made before it still match
        out["stain_norm"] = stain.record()
    return out


def extract_tile_dataset(
    frame: pd.DataFrame,
    output_dir: str | Path,
    extractor,
    batch_size: int = 64,
    num_workers: int = 8,
    chunk_size: int = 8192,
    tile_size: int | None = None,
    record: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    accept_legacy: bool = False,
    stain=None,
) -> TileExtractionSummary:
    """Extract features of every row of ``frame`` (in frame order) into ``output_dir``.

    ``stain`` (a :class:`~rl_benchmarks.slides.stain.StainNormalizer`) normalises each batch
    of tiles first; its fitted target is part of the recorded settings.

    Bad settings are a one-line ValueError before anything is written; see the module
    docstring for skips (:class:`StaleOutputError`), older tile ids and locking."""
    missing = {"image_path", "image_id"} - set(frame.columns)
    if missing:
        raise ValueError(f"tile dataset frame lacks the column(s) {sorted(missing)}")
    check_int("batch_size", batch_size)
    check_int("num_workers", num_workers, minimum=0)
    check_int("chunk_size", chunk_size)
    check_int("tile_size", tile_size, none_ok=True)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lock = out / LOCK_NAME
    waited: list[str] = []

    def on_wait(owner: locks.LockOwner) -> None:
        waited.append(str(owner))
        logger.warning("%s: another run (%s) is writing this folder; waiting for it", out, owner)

    locks.wait_lock(lock, on_wait=on_wait)
    try:
        summary = _extract_locked(frame, out, extractor, batch_size, num_workers, chunk_size,
                                  tile_size, record, progress, overwrite, accept_legacy, stain)
    finally:
        locks.release(lock)
    if waited and summary.n_chunks_done == 0:
        summary.note = f"finished by another run, {waited[0]}"
    summary.seconds = time.perf_counter() - t0
    return summary


def _stale(out: Path, what: str, diff: str) -> StaleOutputError:
    return StaleOutputError(f"{out}: {what} made with other settings ({diff}); rerun with "
                            f"overwrite=true to recompute them, or use another output_dir")


def _extract_locked(frame, out: Path, extractor, batch_size, num_workers, chunk_size,
                    tile_size, record, progress, overwrite, accept_legacy, stain=None
                    ) -> TileExtractionSummary:
    from tqdm.auto import tqdm

    new = tile_settings(frame, extractor, tile_size, stain)
    chunks_dir = out / CHUNKS_DIR
    feats_path, ids_path = out / FEATURES_NAME, out / IDS_NAME
    # 1. Finished files: reused only when their record holds the same settings.
    if feats_path.is_file() and ids_path.is_file():
        old = (_read_json(out / RECORD_NAME) or {}).get("settings")
        diff = (settings_diff(old, new) if isinstance(old, dict)
                else "" if accept_legacy else "no record of their settings (legacy output)")
        if not diff:
            ids, pickled = _load_ids(ids_path)
            if len(ids) != len(frame):
                raise _stale(out, "tile features", f"{len(ids)} tile ids vs {len(frame)} tiles")
            if pickled:
                io.save_npy(ids_path, ids)  # older object-array ids, rewritten as plain strings
            return TileExtractionSummary(str(out), len(ids), 0, 0, 0.0)
        if not overwrite:
            raise _stale(out, "tile features", diff)
        feats_path.unlink(missing_ok=True)
        ids_path.unlink(missing_ok=True)
        (out / RECORD_NAME).unlink(missing_ok=True)
    # 2. Chunks of an interrupted run: reused under the same settings and chunk size.
    chunk_new = {**new, "chunk_size": int(chunk_size)}
    if chunks_dir.is_dir() and any(chunks_dir.glob("chunk_*.npy")):
        old = _read_json(chunks_dir / CHUNK_SETTINGS)
        diff = (settings_diff(old, chunk_new) if old is not None
                else "" if accept_legacy else "no record of their settings (legacy chunks)")
        if diff:
            if not overwrite:
                raise _stale(out, f"chunks in {chunks_dir}", diff)
            shutil.rmtree(chunks_dir)
    io.write_json(chunks_dir / CHUNK_SETTINGS, chunk_new)

    size = tile_size or extractor.tile_size
    paths = frame["image_path"].astype(str).tolist()
    ids = np.asarray(frame["image_id"].astype(str).tolist(), dtype=str)
    n_chunks = -(-len(paths) // chunk_size)

    def chunk_path(c: int) -> Path:
        return chunks_dir / f"chunk_{c:06d}.npy"

    def chunk_len(c: int) -> int:
        return min((c + 1) * chunk_size, len(paths)) - c * chunk_size

    todo = [c for c in range(n_chunks) if not chunk_path(c).is_file()]
    skipped = n_chunks - len(todo)
    device = getattr(extractor, "device", torch.device("cpu"))
    # One DataLoader (one set of workers) over every tile still to do, in order; features
    # are cut into chunks as they arrive and each chunk is written atomically.
    indices = [i for c in todo for i in range(c * chunk_size, c * chunk_size + chunk_len(c))]
    bar = tqdm(total=len(paths), unit="tile", desc="extract tiles", disable=not progress,
               initial=len(paths) - len(indices))
    loader = DataLoader(
        Subset(TileImages(paths, size), indices), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, pin_memory=torch.device(device).type == "cuda",
    )
    buffer: list[np.ndarray] = []
    buffered, k = 0, 0
    for tiles in loader:
        feats = features_of_uint8(extractor, tiles, stain)
        buffer.append(feats)
        buffered += len(feats)
        bar.update(len(tiles))
        while k < len(todo) and buffered >= chunk_len(todo[k]):
            rows = np.concatenate(buffer, axis=0)
            n = chunk_len(todo[k])
            io.save_npy(chunk_path(todo[k]), rows[:n])
            buffer, buffered, k = [rows[n:]], buffered - n, k + 1
    bar.close()
    done = k
    features = np.concatenate(
        [np.load(chunk_path(c), allow_pickle=False) for c in range(n_chunks)], axis=0
    ) if n_chunks else np.zeros((0, extractor.feature_dim), np.float32)
    # The record first, the features last: their presence means "done".
    io.write_json(out / RECORD_NAME, {**(record or {}), "settings": new, "n_tiles": len(paths)})
    io.save_npy(ids_path, ids)
    io.save_npy(feats_path, features)
    shutil.rmtree(chunks_dir, ignore_errors=True)
    return TileExtractionSummary(str(out), len(paths), done, skipped, 0.0)
