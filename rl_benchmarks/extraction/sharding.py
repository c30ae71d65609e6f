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
