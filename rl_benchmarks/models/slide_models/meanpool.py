"""MeanPool: a masked mean of the tile features followed by an MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .utils import MLP, prepare_mask, register_legacy_keys, split_features


class MeanPool(nn.Module):
    """Average the features of the real tiles, then ``MLP(in_features -> out_features)``.

    With the reference config (no ``hidden``) this is one ``Linear(D, out)`` on the mean.
    ``forward(features (B, N, metadata_cols + D), mask (B, N, 1) bool or None)`` -> (B, out).
    MeanPool does not score tiles, so it has no ``tile_scores``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] | None = None,
        dropout: Sequence[float] | None = None,
        activation: Any = nn.Sigmoid(),
        bias: bool = True,
        metadata_cols: int = 3,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.metadata_cols = metadata_cols
        self.mlp = MLP(in_features, out_features, hidden, dropout, activation, bias)
        register_legacy_keys(self)

    def pool(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, D) mean of the real tiles (a matrix product: the features are not copied)."""
        x = split_features(features, self.metadata_cols)
        mask = prepare_mask(mask, features)
        if mask is None:
            return x.mean(dim=1)
        keep = (~mask).to(x.dtype).reshape(x.shape[0], 1, x.shape[1])  # (B, 1, N)
        total = torch.matmul(keep, x).squeeze(1)
        return total / keep.sum(dim=2).clamp_min(1.0)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(self.pool(features, mask))
