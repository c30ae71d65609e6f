"""Feature utilities shared by training and extraction: the one per-slide feature reader
(``features.npy`` or a TRIDENT/CLAM ``.h5``), padding collation and preloading.

Why one reader: ``rlbench cv``, ``heatmap`` and ``report`` and every cohort loader read a
slide's (N, 3+D) matrix through :func:`read_feature_matrix`, so an h5 feature folder works
wherever a ``features.npy`` folder does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import default_collate


def is_feature_file(path: str | os.PathLike) -> bool:
    """True for the per-slide feature files this toolkit reads (``.npy``, ``.h5``, ``.hdf5``)."""
    from rl_benchmarks.datasets.h5_features import is_h5

    return str(path).lower().endswith(".npy") or is_h5(path)


def read_feature_matrix(
    path: str | os.PathLike, mmap: bool = True, slide_dims: tuple[int, int] | None = None
) -> np.ndarray:
    """A slide's (N, 3+D) feature matrix ``[dz_level, col, row, f_1..f_D]``, by format.

    ``.npy``: memory-mapped (``mmap``), never unpickled. ``.h5``/``.hdf5`` (TRIDENT/CLAM
    layout): read into memory, coords mapped to DeepZoom by
    :func:`rl_benchmarks.datasets.h5_features.deepzoom_mapping` (level -1 when the file does
    not record it and ``slide_dims`` is not given; the training stack ignores these columns).
    Bad h5 input raises :class:`~rl_benchmarks.datasets.h5_features.H5FeaturesError` naming
    the file.
    """
    from rl_benchmarks.datasets.h5_features import h5_feature_matrix, is_h5

    if is_h5(path):
        return h5_feature_matrix(path, slide_dims)
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def feature_matrix_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(N, 3+D) of a feature file without reading its values (npy header or h5 metadata)."""
    from rl_benchmarks.datasets.h5_features import h5_shape, is_h5

    if is_h5(path):
        n, d = h5_shape(path)
        return n, d + 3
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    return tuple(int(v) for v in arr.shape)  # type: ignore[return-value]


def feature_boxes_level0(
    path: str | os.PathLike, tile_size: int, slide_dims: tuple[int, int]
) -> tuple[np.ndarray, bool]:
    """Level-0 boxes ``(x0, y0, x1, y1)`` (N, 4) int64 of a feature file's tiles, in file
    order, and whether its DeepZoom ``[dz_level, col, row]`` columns are exact.

    For heatmaps and GeoJSON: ``features.npy`` rows are DeepZoom tiles of ``tile_size``
    (:func:`rl_benchmarks.slides.geometry.tile_boxes_level0`, exact); h5 rows are drawn from
    their own level-0 coords and footprint (always placed where they were read, even when
    the DeepZoom mapping is approximate, docs/interop.md)."""
    from rl_benchmarks.datasets.h5_features import deepzoom_mapping, h5_boxes_level0, is_h5, read_h5
    from rl_benchmarks.slides.geometry import tile_boxes_level0

    if is_h5(path):
        h5 = read_h5(path)
        return h5_boxes_level0(h5, slide_dims), deepzoom_mapping(h5, slide_dims).exact
    coords = np.rint(np.asarray(read_feature_matrix(path)[:, :3])).astype(np.int64)
    return tile_boxes_level0(coords, int(tile_size), *slide_dims), True


def pad_collate_fn(
    batch: Sequence[tuple], batch_first: bool = True, max_len: int | None = None
) -> tuple:
    """Collate items ``(features (n_i, F), *others)`` of different lengths.

    Features are zero-padded to the longest item (or ``max_len``; a longer item is an
    error) and a boolean mask, True on padding, marks the added rows. The other members
    go through ``default_collate`` (labels (1,) become (B, 1)).

    Returns ``(padded (B, L, F), mask (B, L, 1), *others)``; with ``batch_first=False``
    the first two are (L, B, F) and (L, B, 1).
    """
    if len(batch) == 0:
        raise ValueError("pad_collate_fn: empty batch")
    feats = [item[0] for item in batch]
    lengths = [int(f.shape[0]) for f in feats]
    length = max(lengths) if max_len is None else int(max_len)
    if max(lengths) > length:
        raise ValueError(f"pad_collate_fn: an item has {max(lengths)} tiles > max_len={length}")
    padded = feats[0].new_zeros((len(feats), length, *feats[0].shape[1:]))
    mask = torch.ones((len(feats), length, 1), dtype=torch.bool)
    for i, (f, n) in enumerate(zip(feats, lengths)):
        padded[i, :n] = f
        mask[i, :n] = False
    if not batch_first:
        padded, mask = padded.transpose(0, 1), mask.transpose(0, 1)
    others = [default_collate([item[k] for item in batch]) for k in range(1, len(batch[0]))]
    return (padded, mask, *others)


def preload_features(
    fpaths: Sequence[str | os.PathLike],
    n_tiles: int | None = 1000,
    shuffle: bool = False,
    with_memory_map: bool = True,
    seed: int = 0,
) -> list[np.ndarray]:
    """Load each feature file (``features.npy`` or ``.h5``) into RAM, keeping ``n_tiles`` rows (the first ones, or a
    random subset when ``shuffle``, seeded per file index). Kept for the reference's API;
    ``SlideClassificationDataset`` reads per item instead."""
    from tqdm.auto import tqdm

    out = []
    for i, path in enumerate(tqdm(fpaths, desc="preloading features", unit="slide")):
        arr = read_feature_matrix(path, mmap=with_memory_map)
        n = arr.shape[0] if n_tiles is None else min(int(n_tiles), arr.shape[0])
        if shuffle:
            idx = np.sort(np.random.default_rng([seed, i]).choice(arr.shape[0], n, replace=False))
            out.append(np.array(arr[idx]))
        else:
            out.append(np.array(arr[:n]))
    return out
