"""Top-k / bottom-k selection of tile scores (Chowder's "extreme" layer)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from rl_benchmarks.utils.functional import is_functorch_tensor


class ExtremeLayer(nn.Module):
    """Keep the ``n_top`` highest and ``n_bottom`` lowest scores of every channel.

    ``forward(x (B, N, C), mask (B, N, 1) or None)`` returns the values (B, n_top + n_bottom, C),
    top scores sorted descending followed by bottom scores sorted ascending, and with
    ``return_indices=True`` also their tile indices (same shape, into dim 1 of ``x``).

    Padded tiles are never preferred to real ones: they count as -inf for the top and +inf
    for the bottom. When a slide has fewer real tiles than requested, the missing
    selections are 0 (with a warning), exactly what padding the slide would give: a slide
    with fewer than ``n_top`` (or ``n_bottom``) tiles gives the same output whatever its
    padding. Missing selections have index -1.
    """

    def __init__(
        self,
        n_top: int | None = None,
        n_bottom: int | None = None,
        dim: int = 1,
        return_indices: bool = False,
    ) -> None:
        super().__init__()
        self.n_top = int(n_top or 0)
        self.n_bottom = int(n_bottom or 0)
        if self.n_top < 0 or self.n_bottom < 0 or self.n_top + self.n_bottom == 0:
            raise ValueError(
                f"ExtremeLayer: n_top={n_top} and n_bottom={n_bottom}; at least one must be > 0 "
                "and neither may be negative"
            )
        if dim != 1:
            raise ValueError(f"ExtremeLayer: dim={dim}; only the tile dimension 1 is supported")
        self.dim = dim
        self.return_indices = return_indices

    def _select(
        self, x: torch.Tensor, k: int, largest: bool, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[1]
        if mask is not None:
            x = x.masked_fill(mask, float("-inf") if largest else float("inf"))
        kk = min(k, n)
        values, indices = torch.topk(x, k=kk, dim=1, largest=largest, sorted=True)
        if kk < k:  # fewer tiles than requested: what padding with masked rows would give
            shape = (x.shape[0], k - kk, x.shape[2])
            fill = float("-inf") if largest else float("inf")
            values = torch.cat([values, values.new_full(shape, fill)], dim=1)
            indices = torch.cat([indices, indices.new_full(shape, -1)], dim=1)
        return values, indices

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[1]
        if self.n_top + self.n_bottom > n:
            warnings.warn(
                f"ExtremeLayer: n_top + n_bottom = {self.n_top + self.n_bottom} is more than the "
                f"{n} tiles of the batch; missing selections are set to 0",
                stacklevel=2,
            )
        parts_v, parts_i = [], []
        if self.n_top:
            v, i = self._select(x, self.n_top, True, mask)
            parts_v.append(v)
            parts_i.append(i)
        if self.n_bottom:
            v, i = self._select(x, self.n_bottom, False, mask)
            parts_v.append(v)
            parts_i.append(i)
        values = parts_v[0] if len(parts_v) == 1 else torch.cat(parts_v, dim=1)
        indices = parts_i[0] if len(parts_i) == 1 else torch.cat(parts_i, dim=1)

        if mask is not None or self.n_top + self.n_bottom > n:
            infinite = torch.isinf(values)
            if not is_functorch_tensor(values) and bool(infinite.any()):
                warnings.warn(
                    "ExtremeLayer: a slide has fewer real tiles than n_top or n_bottom; the "
                    "missing selections are set to 0",
                    stacklevel=2,
                )
            values = values.masked_fill(infinite, 0.0)
            indices = indices.masked_fill(infinite, -1)
        if self.return_indices:
            return values, indices
        return values

    def extra_repr(self) -> str:
        return f"n_top={self.n_top}, n_bottom={self.n_bottom}"
