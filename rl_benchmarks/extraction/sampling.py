"""Which tiles of a slide are extracted.

With ``random_sampling`` the tiles are drawn without replacement from an RNG seeded by
``(seed, slide_id)``, so the draw depends neither on the order of slides nor on the number
of ranks (the reference used the global numpy RNG, seeded once with 42).
"""

from __future__ import annotations

import numpy as np

from rl_benchmarks.utils.seed import derive_seed


def select_tiles(
    n_available: int,
    n_tiles: int | None,
    random_sampling: bool,
    seed: int,
    slide_id: str,
) -> np.ndarray:
    """Indices of the tiles to extract, in the order they are written.

    * ``n_tiles`` None or >= ``n_available``: every tile, in coords order;
    * ``random_sampling``: ``n_tiles`` indices drawn without replacement, sorted, so that
      tiles are read in file order (the set, not the order, is what the seed fixes);
    * otherwise the first ``n_tiles`` in coords order.
    """
    if n_available < 0:
        raise ValueError(f"n_available must be >= 0, got {n_available}")
    if n_tiles is not None and n_tiles <= 0:
        raise ValueError(f"n_tiles must be a positive integer or None, got {n_tiles}")
    if n_tiles is None or n_tiles >= n_available:
        return np.arange(n_available)
    if random_sampling:
        rng = np.random.default_rng(derive_seed(seed, slide_id))
        return np.sort(rng.choice(n_available, size=n_tiles, replace=False))
    return np.arange(n_tiles)
