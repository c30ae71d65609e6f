"""Splitting slides across ranks, balanced by tile count."""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def shard_by_cost(costs: Sequence[int], world_size: int) -> list[list[int]]:
    """Greedy longest-processing-time assignment of items to ``world_size`` ranks.

    Deterministic: items are taken by decreasing cost (ties by index) and each goes to the
    rank with the least total so far (ties by rank). Returns, per rank, item indices in
    increasing order.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    heap = [(0, rank) for rank in range(world_size)]
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(costs)), key=lambda i: (-int(costs[i]), i)):
        load, rank = heapq.heappop(heap)
        shards[rank].append(index)
        heapq.heappush(heap, (load + max(int(costs[index]), 1), rank))
    return [sorted(s) for s in shards]


def check_shard(shard: int, num_shards: int) -> None:
    """``shard=i num_shards=K``: K >= 1 and 0 <= i < K (a one-line ValueError otherwise)."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be an integer in [0, num_shards - 1] = [0, {num_shards - 1}], "
                         f"got {shard!r}")


def given_tile_counts(coords_paths: Sequence[object], n_tiles: int | None) -> list[int]:
    """The cost of each slide for :func:`select_shard`: its selected tile count
    (``min(n_tiles, N)``, read from the header of its given ``coords.npy``) when every slide
    has given coords; otherwise 1 for every slide (a slide's tile count is not known before
    it is tiled, and every job must compute the same assignment without talking to the
    others, whatever the others have already written)."""
    import numpy as np

    if not coords_paths or any(p is None for p in coords_paths):
        return [1] * len(coords_paths)
    counts = []
    for path in coords_paths:
        try:
            n = int(np.load(str(path), mmap_mode="r", allow_pickle=False).shape[0])
        except (OSError, ValueError):
            return [1] * len(coords_paths)  # the extraction names the unreadable file
        counts.append(n if n_tiles is None else min(n, int(n_tiles)))
    return counts


def select_shard(costs: Sequence[int], shard: int, num_shards: int) -> list[int]:
    """The item indices of job ``shard`` of ``num_shards`` independent jobs (Hydra sweep
    ``shard=range(K) num_shards=K``): torchrun's rule (:func:`shard_by_cost` over the tile
    counts), applied to every item, done or not, so that each job gets the same answer
    at any time. Together the shards hold every index exactly once."""
    check_shard(shard, num_shards)
    return shard_by_cost(costs, num_shards)[shard]
