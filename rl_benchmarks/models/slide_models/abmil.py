"""ABMIL (Ilse et al. 2018): tile embedding, gated attention pooling, then an MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .utils import (
    MLP,
    GatedAttention,
    TilesMLP,
    prepare_mask,
    register_legacy_keys,
    scores_with_nan_padding,
    split_features,
)


class ABMIL(nn.Module):
    """Attention-based MIL.

    ``TilesMLP(D -> d_model_attention)`` embeds the tiles (a plain Linear by default),
    ``GatedAttention`` pools them into one (B, d_model_attention) vector, and
    ``MLP(d_model_attention -> out_features)`` gives the logits. PyTorch's default init.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        d_model_attention: int = 128,
        temperature: float = 1.0,
        tiles_mlp_hidden: Sequence[int] | None = None,
        mlp_hidden: Sequence[int] | None = None,
        mlp_dropout: Sequence[float] | None = None,
        mlp_activation: Any = nn.Sigmoid(),
        bias: bool = True,
        metadata_cols: int = 3,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.metadata_cols = metadata_cols
        self.tiles_emb = TilesMLP(
            in_features, out_features=d_model_attention, hidden=tiles_mlp_hidden, bias=bias
        )
        self.attention_layer = GatedAttention(d_model=d_model_attention, temperature=temperature)
        self.mlp = MLP(
            d_model_attention,
            out_features,
            hidden=mlp_hidden,
            dropout=mlp_dropout,
            activation=mlp_activation,
            bias=bias,
        )
        register_legacy_keys(self)

    def score_model(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention logits (B, N, 1) of feature columns ``x`` (-inf at padded tiles)."""
        return self.attention_layer.attention_logits(self.tiles_emb(x, mask), mask)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, metadata_cols + D), (B, N, 1) -> logits (B, out_features)."""
        x = split_features(features, self.metadata_cols)
        mask = prepare_mask(mask, features)
        pooled, _ = self.attention_layer(self.tiles_emb(x, mask), mask)
        return self.mlp(pooled)

    def tile_scores(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, class_index: int = 0
    ) -> torch.Tensor:
        """Attention weights (B, N) (softmax over the real tiles), NaN at padded tiles.

        The attention is shared by all outputs, so ``class_index`` is ignored.
        """
        x = split_features(features, self.metadata_cols)
        mask = prepare_mask(mask, features)
        _, weights = self.attention_layer(self.tiles_emb(x, mask), mask)
        return scores_with_nan_padding(weights.squeeze(-1), mask)
