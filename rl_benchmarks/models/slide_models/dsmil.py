"""DSMIL (Li et al. 2021): a max-instance branch and a query-attention bag branch."""

from __future__ import annotations

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
    scores_with_nan_padding,
    split_features,
)

_OUT_LOGITS = ("mean", "max", "bag")


class DSMIL(nn.Module):
    """Dual-stream MIL.

    * Max branch: ``tiles_scores``, a ``TilesMLP(D -> C)``, scores every tile; the top tile
      of each class (the "critical" tile) gives ``s_max`` (B, C).
    * Bag branch: queries ``Q = tiles_queries(x)``, a ``TilesMLP(D -> d_tiles_queries)``;
      per class c the logits ``Q_i . Q_critical(c)`` (no scaling) are soft-maxed over the
      real tiles and pool the values into ``b_c``; a shared ``MLP(D_v -> 1)`` gives
      ``s_bag`` (B, C).
    * Values: the raw features (D_v = D) when ``passing_values=False`` (the reference
      config), ``tiles_values``, a ``TilesMLP(D -> d_tiles_values)``, when True. (The
      reference docstring says the opposite; its code, followed here, does this.) The value
      MLP is always built, as in the reference, so the parameter counts match.
    * Output (``out_logits``): ``"mean"`` = (s_max + s_bag) / 2, or ``"max"`` / ``"bag"``
      alone. Shape (B, out_features) for any number of classes.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        d_tiles_values: int = 32,
        d_tiles_queries: int = 32,
        passing_values: bool = False,
        tiles_scores_mlp_hidden: Sequence[int] | None = None,
        tiles_values_mlp_hidden: Sequence[int] | None = None,
        tiles_queries_mlp_hidden: Sequence[int] | None = None,
        mlp_hidden: Sequence[int] | None = None,
        mlp_dropout: Sequence[float] | None = None,
        mlp_activation: Any = nn.Sigmoid(),
        bias: bool = True,
        metadata_cols: int = 3,
        out_logits: str = "mean",
    ) -> None:
        super().__init__()
        if out_logits not in _OUT_LOGITS:
            raise ValueError(f"DSMIL: out_logits={out_logits!r}; expected one of {_OUT_LOGITS}")
        self.in_features = in_features
        self.out_features = out_features
        self.metadata_cols = metadata_cols
        self.passing_values = passing_values
        self.out_logits = out_logits
        self.tiles_scores = TilesMLP(
            in_features, out_features=out_features, hidden=tiles_scores_mlp_hidden, bias=bias
        )
        self.extreme_layer = ExtremeLayer(n_top=1, n_bottom=0, return_indices=True)
        self.tiles_values = TilesMLP(
            in_features, out_features=d_tiles_values, hidden=tiles_values_mlp_hidden, bias=bias
        )
        self.tiles_queries = TilesMLP(
            in_features, out_features=d_tiles_queries, hidden=tiles_queries_mlp_hidden, bias=bias
        )
        d_values = d_tiles_values if passing_values else in_features
        self.mlp = MLP(
            d_values,
            1,
            hidden=mlp_hidden,
            dropout=mlp_dropout,
            activation=mlp_activation,
            bias=bias,
        )
        register_legacy_keys(self)

    @property
    def score_model(self) -> TilesMLP:
        """The instance classifier ``tiles_scores`` (the name Chowder uses for its own)."""
        return self.tiles_scores

    def _branches(
        self, features: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tile scores (B,N,C), s_max (B,C), attention (B,N,C) and s_bag (B,C)."""
        x = split_features(features, self.metadata_cols)
        mask = prepare_mask(mask, features)
        return self._branches_from(x, mask)

    def _branches_from(
        self, x: torch.Tensor, mask: torch.Tensor | None,
        first_scores: torch.Tensor | None = None, first_queries: torch.Tensor | None = None,
        start: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_branches` on feature columns ``x`` (B, N, D) and a (B, N, 1) mask or None.
        ``first_scores`` / ``first_queries``: see :meth:`attention_from`."""
        scores, s_max, attention = self.attention_from(x, mask, first_scores, first_queries,
                                                       start)
        values = self.tiles_values(x, mask) if self.passing_values else x
        bag = torch.matmul(attention.transpose(1, 2), values)  # (B, C, Dv)
        s_bag = self.mlp(bag).squeeze(-1)  # (B, C)
        return scores, s_max, attention, s_bag

    def attention_from(
        self, x: torch.Tensor | None, mask: torch.Tensor | None,
        first_scores: torch.Tensor | None = None, first_queries: torch.Tensor | None = None,
        start: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tile scores (B, N, C), s_max (B, C) and the bag attention (B, N, C), everything
        before the bag pooling. ``first_scores`` / ``first_queries``: the outputs of the
        layers before ``start`` of ``tiles_scores`` / ``tiles_queries`` (their first layer
        when ``start=1``, its activation too when ``start=2``) when the caller computed them
        (the nested-CV fast path computes them for several members in one matmul, and then
        pools the features of all members at once); ``x`` may then be None."""
        if first_scores is None:
            scores = self.tiles_scores(x, mask)  # (B, N, C)
        else:
            scores = self.tiles_scores.forward_from(first_scores, mask, start)
        s_max, idx = self.extreme_layer(scores, mask)  # (B, 1, C) each
        if first_queries is None:
            queries = self.tiles_queries(x, mask)  # (B, N, dq)
        else:
            queries = self.tiles_queries.forward_from(first_queries, mask, start)
        critical = idx.squeeze(1).clamp_min(0)  # (B, C); -1 only for a slide without tiles
        q_star = torch.gather(
            queries, 1, critical.unsqueeze(-1).expand(-1, -1, queries.shape[-1])
        )  # (B, C, dq)
        logits = torch.matmul(queries, q_star.transpose(1, 2))  # (B, N, C)
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        attention = torch.softmax(logits, dim=1)
        return scores, s_max.squeeze(1), attention

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, metadata_cols + D), (B, N, 1) -> logits (B, out_features)."""
        _, s_max, _, s_bag = self._branches(features, mask)
        return self._combine(s_max, s_bag)

    def _combine(self, s_max: torch.Tensor, s_bag: torch.Tensor) -> torch.Tensor:
        """The logits from the instance and bag branches, as ``out_logits`` says (any
        leading dimensions)."""
        if self.out_logits == "max":
            return s_max
        if self.out_logits == "bag":
            return s_bag
        return 0.5 * (s_max + s_bag)

    def tile_scores(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, class_index: int = 0
    ) -> torch.Tensor:
        """Instance-classifier logits of class ``class_index`` (B, N), NaN at padded tiles."""
        return score_model_tile_scores(self, features, mask, class_index)

    def tile_attention(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, class_index: int = 0
    ) -> torch.Tensor:
        """Bag-branch attention of class ``class_index`` (B, N), NaN at padded tiles."""
        _, _, attention, _ = self._branches(features, mask)
        return scores_with_nan_padding(attention[..., class_index], mask)
