"""Seeding of every RNG (python, numpy, torch)."""

from __future__ import annotations

import random

import numpy as np


def set_seed(seed: int = 42) -> None:
    """Seed python, numpy and torch (CPU and CUDA) RNGs."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (e.g. ``(seed, slide_id)``), independent of
    Python's hash randomisation, run order and number of ranks."""
    import hashlib

    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1
