"""Tile-wise layers that know about padding: ``MaskedLinear`` and ``TilesMLP``.

Shapes: ``x`` is (B, N, d), ``mask`` is (B, N, 1) bool with True on padded tiles (or None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .mlp import check_dropout, resolve_activation


class MaskedLinear(nn.Linear):
    """A Linear layer whose output rows at padded tiles are set to ``float(mask_value)``.

    With ``mask_value="-inf"`` a following softmax or top-k ignores the padding, and a
    following sigmoid maps it to 0.
    """

    def __init__(
        self, in_features: int, out_features: int, mask_value: str | float, bias: bool = True
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.mask_value = mask_value

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        out = super().forward(x)
        if mask is not None:
            out = out.masked_fill(mask, float(self.mask_value))
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_value={self.mask_value}"


class TilesMLP(nn.Module):
    """An MLP applied to every tile: hidden layers are ``MaskedLinear(-inf)`` + activation
    (+ dropout), the last layer is a plain ``Linear(d, out_features)``.

    ``hidden_layers`` is the reference's flat ``nn.Sequential`` ``[MaskedLinear, activation,
    (Dropout), ..., Linear]``, so the state-dict keys are the reference's
    (``hidden_layers.0.weight``, ..., ``hidden_layers.{last}.weight``).
    After a sigmoid the padded rows of the hidden layers are 0; the output rows at padded
    tiles are not masked (the caller masks what it pools).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        hidden: Sequence[int] | None = None,
        bias: bool = True,
        activation: Any = nn.Sigmoid(),
        dropout: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_dropout(hidden, dropout, "TilesMLP")
        act = resolve_activation(activation)
        layers: list[nn.Module] = []
        d = in_features
        for i, width in enumerate(hidden or []):
            layers += [MaskedLinear(d, int(width), mask_value="-inf", bias=bias), act]
            if dropout is not None:
                layers.append(nn.Dropout(float(dropout[i])))
            d = int(width)
        layers.append(nn.Linear(d, out_features, bias=bias))
        self.hidden_layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, in_features) -> (B, N, out_features)."""
        return self.forward_from(x, mask, 0)

    def forward_from(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                     start: int = 0) -> torch.Tensor:
        """The layers ``hidden_layers[start:]`` on ``x`` (the output of layer ``start - 1``):
        the nested-CV fast path computes the first layer of several models at once."""
        for layer in self.hidden_layers[start:]:
            x = layer(x, mask) if isinstance(layer, MaskedLinear) else layer(x)
        return x
