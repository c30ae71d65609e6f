"""Feature utilities shared by training and extraction: padding collation and preloading.

(The extraction pipeline adds its tile readers here later.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import default_collate


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
    """Load each ``features.npy`` into RAM, keeping ``n_tiles`` rows (the first ones, or a
    random subset when ``shuffle``, seeded per file index). Kept for the reference's API;
    ``SlideClassificationDataset`` reads per item instead."""
    from tqdm.auto import tqdm

    out = []
    for i, path in enumerate(tqdm(fpaths, desc="preloading features", unit="slide")):
        arr = np.load(path, mmap_mode="r" if with_memory_map else None)
        n = arr.shape[0] if n_tiles is None else min(int(n_tiles), arr.shape[0])
        if shuffle:
            idx = np.sort(np.random.default_rng([seed, i]).choice(arr.shape[0], n, replace=False))
            out.append(np.array(arr[idx]))
        else:
            out.append(np.array(arr[:n]))
    return out
