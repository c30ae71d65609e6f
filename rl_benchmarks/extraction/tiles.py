"""Tile datasets -> ``tile_features.npy`` (N, D) and ``tile_ids.npy`` (N,).

Works on any frame with ``image_path`` and ``image_id`` columns (NCT-CRC, Camelyon17-WILDS,
an ImageFolder tree). Tiles not at the extractor's size are resized as the reference does
(``PIL.Image.resize`` with Pillow's default filter). Work is cut into chunks written
atomically, so a killed run, re-run, resumes at the first missing chunk; the final files
are assembled at the end and the chunks removed.
"""

from __future__ import annotations

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

from rl_benchmarks.extraction.slides import features_of_uint8
from rl_benchmarks.utils import io

logger = logging.getLogger(__name__)


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

    def line(self) -> str:
        rate = self.n_tiles / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.n_tiles} tiles ({self.n_chunks_done} chunks extracted, "
                f"{self.n_chunks_skipped} resumed) in {self.seconds:.1f} s ({rate:.1f} tiles/s); "
                f"outputs in {self.output_dir}")


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
) -> TileExtractionSummary:
    """Extract features of every row of ``frame`` (in frame order) into ``output_dir``."""
    from tqdm.auto import tqdm

    missing = {"image_path", "image_id"} - set(frame.columns)
    if missing:
        raise ValueError(f"tile dataset frame lacks the column(s) {sorted(missing)}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if (out / "tile_features.npy").is_file() and (out / "tile_ids.npy").is_file():
        n = len(np.load(out / "tile_ids.npy", allow_pickle=True))
        if n == len(frame):
            return TileExtractionSummary(str(out), n, 0, 0, 0.0)
    size = tile_size or extractor.tile_size
    paths = frame["image_path"].astype(str).tolist()
    ids = np.asarray(frame["image_id"].astype(str).tolist(), dtype=object)
    chunks_dir = out / "_chunks"
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
        feats = features_of_uint8(extractor, tiles)
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
        [np.load(chunk_path(c)) for c in range(n_chunks)], axis=0
    ) if n_chunks else np.zeros((0, extractor.feature_dim), np.float32)
    if record is not None:
        io.write_json(out / "rlbenchmarks_extraction_params.json",
                      {**record, "n_tiles": len(paths)})
    io.save_npy(out / "tile_ids.npy", ids)
    io.save_npy(out / "tile_features.npy", features)
    shutil.rmtree(chunks_dir, ignore_errors=True)
    return TileExtractionSummary(str(out), len(paths), done, skipped, time.perf_counter() - t0)
