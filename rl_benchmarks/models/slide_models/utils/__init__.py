"""Building blocks of the MIL slide models."""

from __future__ import annotations

import torch

from .attention import GatedAttention, NystromAttention, SelfAttention, _moore_penrose_iter_pinv
from .extreme_layer import ExtremeLayer
from .mlp import MLP, resolve_activation
from .state_dict_keys import LEGACY_PREFIXES, legacy_key_map, register_legacy_keys
from .tile_layers import MaskedLinear, TilesMLP

__all__ = [
    "LEGACY_PREFIXES",
    "MLP",
    "ExtremeLayer",
    "GatedAttention",
    "MaskedLinear",
    "NystromAttention",
    "SelfAttention",
    "TilesMLP",
    "_moore_penrose_iter_pinv",
    "legacy_key_map",
    "register_legacy_keys",
    "resolve_activation",
    "split_features",
    "prepare_mask",
    "scores_with_nan_padding",
]


def split_features(features: torch.Tensor, metadata_cols: int) -> torch.Tensor:
    """The feature columns of (B, N, metadata_cols + D) input, as a view (no copy)."""
    if features.dim() != 3:
        raise ValueError(
            f"features must be (batch, tiles, {metadata_cols} + D); got shape "
            f"{tuple(features.shape)}"
        )
    if features.shape[-1] <= metadata_cols:
        raise ValueError(
            f"features have {features.shape[-1]} columns, not more than metadata_cols="
            f"{metadata_cols}"
        )
    return features[..., metadata_cols:] if metadata_cols else features


def prepare_mask(mask: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor | None:
    """The padding mask as (B, N, 1) bool (True = padding); (B, N) masks are accepted."""
    if mask is None:
        return None
    b, n = features.shape[0], features.shape[1]
    if tuple(mask.shape) not in ((b, n, 1), (b, n)):
        raise ValueError(
            f"mask must be (batch, tiles, 1) = ({b}, {n}, 1) like the features; got shape "
            f"{tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        mask = mask.bool()
    return mask.reshape(b, n, 1)


def scores_with_nan_padding(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, N) tile scores with NaN at padded tiles, detached, for heatmaps."""
    scores = scores.detach()
    if mask is None:
        return scores
    return scores.masked_fill(mask.reshape(scores.shape), float("nan"))


def score_model_tile_scores(
    model: torch.nn.Module, features: torch.Tensor, mask: torch.Tensor | None, class_index: int
) -> torch.Tensor:
    """Logits of ``model.score_model`` for output ``class_index``, (B, N), NaN at padded
    tiles: the tile scores of models with a per-tile scoring MLP (Chowder, DSMIL)."""
    x = split_features(features, model.metadata_cols)
    mask = prepare_mask(mask, features)
    return scores_with_nan_padding(model.score_model(x, mask)[..., class_index], mask)
