"""HIPT-MIL: the last (slide-level) stage of HIPT (Chen et al. 2022) on tile features."""

from __future__ import annotations

import torch
from torch import nn

from .utils import prepare_mask, register_legacy_keys, scores_with_nan_padding, split_features


class HIPTMIL(nn.Module):
    """HIPT's slide-level transformer with gated attention pooling.

    ``phi = Linear(D, 192) + ReLU + Dropout(0.25)``; two post-norm transformer layers
    (d_model 192, 3 heads, feed-forward 192, dropout 0.25, ReLU); gated attention ``gat``
    (``Linear+Tanh+Dropout`` times ``Linear+Sigmoid+Dropout``, then ``Linear(192, 1)``) with a
    softmax over the real tiles; ``rho = Linear(192, 192) + ReLU + Dropout(0.25)``; a linear
    classifier. Module names (``global_phi``, ``global_transformer``, ``gat``,
    ``global_rho``, ``classifier``) are the reference's.

    Unlike the reference (batch size 1, mask ignored) any batch size works: padded tiles are
    excluded from the transformer's keys and from the pooling, so padding never changes a
    slide's output.
    """

    def __init__(self, in_features: int, out_features: int, metadata_cols: int = 3) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.metadata_cols = metadata_cols
        d = 192
        self.global_phi = nn.Sequential(nn.Linear(in_features, d), nn.ReLU(), nn.Dropout(0.25))
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=3,
            dim_feedforward=d,
            dropout=0.25,
            activation="relu",
            batch_first=True,
        )
        self.global_transformer = nn.TransformerEncoder(
            layer, num_layers=2, enable_nested_tensor=False
        )
        self.gat = _GatedAttentionNet(d, dropout=0.25)
        self.global_rho = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(0.25))
        self.classifier = nn.Linear(d, out_features)
        register_legacy_keys(self)

    def _attention(
        self, features: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tile embeddings (B, N, 192) and attention weights (B, N, 1)."""
        x = split_features(features, self.metadata_cols)
        mask = prepare_mask(mask, features)
        pad = None if mask is None else mask.reshape(mask.shape[0], mask.shape[1])
        h = self.global_phi(x)
        h = self.global_transformer(h, src_key_padding_mask=pad)
        logits = self.gat(h)  # (B, N, 1)
        if mask is not None:
            logits = logits.masked_fill(mask.reshape(logits.shape), float("-inf"))
        return h, torch.softmax(logits, dim=1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, metadata_cols + D), (B, N, 1) -> logits (B, out_features)."""
        h, weights = self._attention(features, mask)
        pooled = torch.matmul(weights.transpose(1, 2), h).squeeze(1)  # (B, 192)
        return self.classifier(self.global_rho(pooled))

    def tile_scores(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, class_index: int = 0
    ) -> torch.Tensor:
        """Attention weights (B, N) over the real tiles, NaN at padded tiles.

        Shared by all outputs: ``class_index`` is ignored.
        """
        _, weights = self._attention(features, mask)
        return scores_with_nan_padding(weights.squeeze(-1), mask)

    def count_trainable(self) -> dict[str, int]:
        """Number of trainable parameters per part and in total."""
        parts = {
            "global_phi": self.global_phi,
            "global_transformer": self.global_transformer,
            "gat": self.gat,
            "global_rho": self.global_rho,
            "classifier": self.classifier,
        }
        counts = {
            name: sum(p.numel() for p in part.parameters() if p.requires_grad)
            for name, part in parts.items()
        }
        counts["total"] = sum(counts.values())
        return counts


class _GatedAttentionNet(nn.Module):
    """``c(a(h) * b(h))`` with ``a = Linear+Tanh+Dropout``, ``b = Linear+Sigmoid+Dropout``."""

    def __init__(self, d: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(d, d), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(d, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(h) * self.attention_b(h))
