"""Chowder (Courtiol et al. 2018): tile scores, top/bottom-k selection, then an MLP."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .utils import (
    MLP,
    ExtremeLayer,
    TilesMLP,
    prepare_mask,
    register_legacy_keys,
    score_model_tile_scores,
    split_features,
)


class Chowder(nn.Module):
    """Chowder MIL model.

    A ``TilesMLP`` scores each tile (``out_features`` scores per tile), an ``ExtremeLayer``
    keeps the ``n_top`` highest and ``n_bottom`` lowest scores per output, and one shared
    ``MLP(n_top + n_bottom -> 1)`` turns each output's selection into its logit.
    ``n_extreme`` (deprecated) sets both ``n_top`` and ``n_bottom``.
    Init: Xavier-uniform weights and zero biases (score model and MLP), as the reference.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_extreme: int | None = None,
        n_top: int | None = None,
        n_bottom: int | None = None,
        tiles_mlp_hidden: Sequence[int] | None = None,
        mlp_hidden: Sequence[int] | None = None,
        mlp_dropout: Sequence[float] | None = None,
        mlp_activation: Any = nn.Sigmoid(),
        bias: bool = True,
        metadata_cols: int = 3,
    ) -> None:
        super().__init__()
        if n_extreme is not None:
            warnings.warn(
                "Chowder: n_extreme is deprecated; use n_top and n_bottom",
                DeprecationWarning,
                stacklevel=2,
            )
            if n_top is not None or n_bottom is not None:
                raise ValueError("Chowder: give either n_extreme or n_top/n_bottom, not both")
            n_top = n_bottom = n_extreme
        if not (n_top or n_bottom):
            raise ValueError("Chowder: n_top and n_bottom are both empty; set at least one")
        self.in_features = in_features
        self.out_features = out_features
        self.metadata_cols = metadata_cols
        self.n_top = int(n_top or 0)
        self.n_bottom = int(n_bottom or 0)
        self.score_model = TilesMLP(
            in_features, out_features=out_features, hidden=tiles_mlp_hidden, bias=bias
        )
        self.extreme_layer = ExtremeLayer(n_top=self.n_top, n_bottom=self.n_bottom)
        self.mlp = MLP(
            self.n_top + self.n_bottom,
            1,
            hidden=mlp_hidden,
            dropout=mlp_dropout,
            activation=mlp_activation,
            bias=bias,
        )
        self.score_model.apply(_xavier_init)
        self.mlp.apply(_xavier_init)
        register_legacy_keys(self)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, metadata_cols + D), (B, N, 1) -> logits (B, out_features)."""
        x = split_features(features, self.metadata_cols)
        mask = prepare_mask(mask, features)
        scores = self.score_model(x, mask)  # (B, N, C)
        extremes = self.extreme_layer(scores, mask)  # (B, n_top + n_bottom, C)
        return self.mlp(extremes.transpose(1, 2)).squeeze(-1)  # (B, C)

    def tile_scores(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, class_index: int = 0
    ) -> torch.Tensor:
        """Tile logits of output ``class_index``, (B, N), NaN at padded tiles."""
        return score_model_tile_scores(self, features, mask, class_index)


def _xavier_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
