"""Blockwise masks for masked image modelling on the student's global crops.

iBOT masks rectangular blocks of patches (the BEiT scheme) rather than isolated patches:
neighbouring patches are strongly correlated, so hiding whole blocks forces the model to
use context. In histology a block is a few cells or a piece of a gland. The number of
masked patches is drawn per crop: with probability ``1 - probability`` a crop is not masked
at all (iBOT's "random MIM": predicting only the [CLS] target on those), otherwise the mask
ratio is uniform in ``ratio``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def block_mask(
    height: int,
    width: int,
    num_masked: int,
    rng: np.random.Generator,
    min_block: int = 4,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
    max_tries: int = 10,
) -> np.ndarray:
    """A (height, width) bool mask with exactly ``num_masked`` True patches.

    Blocks of random area (>= ``min_block`` patches, at most what is still to mask) and
    random log-uniform aspect ratio in [min_aspect, max_aspect] are placed at random until
    a block can no longer add patches; the few patches still missing are then taken at
    random among the unmasked ones, so the count is exact.
    """
    total = height * width
    if not 0 <= num_masked <= total:
        raise ValueError(f"num_masked={num_masked} outside [0, {total}]")
    max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
    log_lo, log_hi = math.log(min_aspect), math.log(max_aspect)
    mask = np.zeros((height, width), dtype=bool)
    count = 0
    while count < num_masked:
        remaining = num_masked - count
        if remaining < min_block:
            break
        added = 0
        for _ in range(max_tries):
            area = rng.uniform(min_block, remaining)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if not (0 < h <= height and 0 < w <= width):
                continue
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            block = mask[top : top + h, left : left + w]
            new = h * w - int(block.sum())
            if 0 < new <= remaining:
                block[...] = True
                added = new
                break
        if added == 0:
            break
        count += added
    if count < num_masked:
        free = np.flatnonzero(~mask.ravel())
        pick = rng.choice(free, size=num_masked - count, replace=False)
        mask.ravel()[pick] = True
    return mask


@dataclass
class MaskGenerator:
    """Draws a blockwise mask for one global crop.

    * ``ratio``: (min, max) fraction of patches masked when a crop is masked;
    * ``probability``: chance that a crop is masked at all (iBOT: 0.5);
    * ``min_block`` and ``min_aspect``: block shape limits (iBOT/BEiT: 4 and 0.3).
    """

    ratio: tuple[float, float] = (0.1, 0.5)
    probability: float = 0.5
    min_block: int = 4
    min_aspect: float = 0.3

    def __post_init__(self) -> None:
        lo, hi = (float(r) for r in self.ratio)
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"masking.ratio must satisfy 0 <= min <= max < 1, got {self.ratio}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"masking.probability must be in [0, 1], got {self.probability}")
        if not 0 < self.min_aspect <= 1:
            raise ValueError(f"masking.min_aspect must be in (0, 1], got {self.min_aspect}")
        self.ratio = (lo, hi)

    def __call__(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        if self.probability <= 0 or rng.random() >= self.probability:
            return np.zeros((height, width), dtype=bool)
        ratio = rng.uniform(*self.ratio)
        n = int(round(ratio * height * width))
        return block_mask(height, width, n, rng, self.min_block, self.min_aspect)
