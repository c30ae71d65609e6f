"""TransMIL (Shao et al. 2021): correlated MIL with a transformer and the PPEG position
encoding, following the reference's variant (full PPEG convolutions, no MLP sub-layers)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .utils import (
    NystromAttention,
    SelfAttention,
    prepare_mask,
    register_legacy_keys,
    scores_with_nan_padding,
    split_features,
)

_BLOCK_KEYS = {
    "attention_type",
    "num_heads",
    "dropout",
    "dim_head",
    "num_landmarks",
    "pinv_iterations",
    "residual",
    "residual_conv_kernel",
}
_PPEG_KINDS = ("full", "depthwise")


class _Block(nn.Module):
    """``x + attn(norm1(x))`` (no MLP sub-layer, as in the reference).

    ``attention_type="original"``: multi-head self-attention (qkv without bias);
    ``"nystrom"``: :class:`NystromAttention` (head size ``dim // num_heads`` by default,
    256 landmarks, 6 pseudo-inverse iterations, residual convolution).
    """

    def __init__(
        self,
        dim: int,
        attention_type: str = "original",
        num_heads: int = 8,
        dropout: float = 0.0,
        dim_head: int | None = None,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual: bool = True,
        residual_conv_kernel: int = 33,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention_type = attention_type
        if attention_type == "original":
            self.attn: nn.Module = SelfAttention(
                dim, num_heads=num_heads, qkv_bias=False, attn_dropout=dropout, proj_dropout=dropout
            )
        elif attention_type == "nystrom":
            self.attn = NystromAttention(
                dim,
                dim_head=dim_head or dim // num_heads,
                heads=num_heads,
                num_landmarks=num_landmarks,
                pinv_iterations=pinv_iterations,
                residual=residual,
                residual_conv_kernel=residual_conv_kernel,
                dropout=dropout,
            )
        else:
            raise ValueError(
                f"TransMIL: attention_type={attention_type!r}; expected 'original' or 'nystrom'"
            )

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.attn(self.norm1(x), pad)

    def forward_with_attention(
        self, x: torch.Tensor, pad: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.attention_type != "original":
            raise NotImplementedError(
                "TransMIL.tile_scores needs attention_type='original' in kw_agg; the Nystrom "
                "attention has no explicit attention matrix"
            )
        out, attn = self.attn(self.norm1(x), pad, return_attention=True)
        return x + out, attn


class PPEG(nn.Module):
    """Pyramid position encoding generator: ``x + conv7(x) + conv5(x) + conv3(x)`` on the
    square grid of tokens (the reference's ``group_conv3`` 7x7, ``group_conv2`` 5x5 and
    ``group_conv1`` 3x3, all with "same" padding and a bias).

    ``kind="full"`` (default, the reference and the paper's numbers): full ``Conv2d(D, D)``
    convolutions (about 49M parameters at D=768). ``kind="depthwise"`` (the original
    TransMIL paper's code): depthwise ``Conv2d(D, D, groups=D)``, about 64x cheaper.
    """

    def __init__(self, dim: int, kind: str = "full") -> None:
        super().__init__()
        if kind not in _PPEG_KINDS:
            raise ValueError(f"TransMIL: ppeg={kind!r}; expected one of {_PPEG_KINDS}")
        self.kind = kind
        groups = dim if kind == "depthwise" else 1
        # built 7, 5, 3 (as before the rename): the same random init under a seed
        self.group_conv3 = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=groups)
        self.group_conv2 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=groups)
        self.group_conv1 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=groups)

    # One convolution with the three kernels summed (the 5x5 and 3x3 zero-padded to 7x7) and
    # the three biases summed: the same function (all "same"-padded and centred, so
    # conv7(x) + conv5(x) + conv3(x) = conv(x, W7 + pad(W5) + pad(W3))), 49 instead of
    # 7*7 + 5*5 + 3*3 = 83 kernel taps per output, so about 1.7x fewer FLOPs forward and
    # backward; only float rounding differs. Off by default (the reference sums three
    # convolutions); the nested-CV fast path switches it on in its own copy of the model.
    merge_kernels: bool = False

    def merged_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The 7x7 kernel and bias equal to the sum of the three convolutions."""
        w = _CentredKernelSum.apply(self.group_conv3.weight, self.group_conv2.weight,
                                    self.group_conv1.weight)
        biases = [c.bias for c in (self.group_conv3, self.group_conv2, self.group_conv1)]
        b = None if any(x is None for x in biases) else biases[0] + biases[1] + biases[2]
        return w, b

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, D, H, W)."""
        if self.merge_kernels:
            w, b = self.merged_weight()
            return grid + F.conv2d(grid, w, b, padding=3, groups=self.group_conv3.groups)
        # summed 7, 5, 3 as before the rename: the same float rounding
        return grid + self.group_conv3(grid) + self.group_conv2(grid) + self.group_conv1(grid)

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


class _CentredKernelSum(torch.autograd.Function):
    """``W7 + pad(W5) + pad(W3)``: the smaller kernels added in place, centred, to a copy of
    the largest. The same sums in the same order as with padded copies (bit for bit), in one
    pass over the large kernel instead of two pads and two full-size adds; the gradients are
    views of the output's (none copied). At D=768 the 7x7 kernel is 115 MB per member, and
    the padded form cost TransMIL's fast path about a fifth of its 64-tile step."""

    generate_vmap_rule = True

    @staticmethod
    def forward(big: torch.Tensor, *small: torch.Tensor) -> torch.Tensor:
        out = big.clone()
        for w in small:
            a, b = (big.shape[-2] - w.shape[-2]) // 2, (big.shape[-1] - w.shape[-1]) // 2
            out[..., a : a + w.shape[-2], b : b + w.shape[-1]] += w
        return out

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.shapes = [w.shape for w in inputs]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        big = ctx.shapes[0]
        grads = [grad]
        for shape in ctx.shapes[1:]:
            a, b = (big[-2] - shape[-2]) // 2, (big[-1] - shape[-1]) // 2
            grads.append(grad[..., a : a + shape[-2], b : b + shape[-1]])
        return tuple(grads)


@dataclass
class _Layout:
    """Where each slide's tokens sit. ``pad`` (B, 1+L) is None when no slide is padded."""

    side: int  # S: side of the common canvas
    pad: torch.Tensor | None
    canvas_pos: torch.Tensor | None  # (B, L) position on the S*S canvas, S*S = unused slot
    source: torch.Tensor  # (B, L) or (L,) index of the input tile each token copies


def _ceil_sqrt(n: torch.Tensor) -> torch.Tensor:
    """Exact ceil(sqrt(n)) of a long tensor (at least 1)."""
    s = torch.ceil(torch.sqrt(n.to(torch.float64))).long().clamp_min(1)
    s = torch.where((s - 1) * (s - 1) >= n, s - 1, s).clamp_min(1)
    return torch.where(s * s < n, s + 1, s)


class TransMIL(nn.Module):
    """TransMIL as in the reference.

    Steps: optional ``Linear(D, proj_dim)`` (+ Dropout ``proj_dropout``); *squaring*: the n
    tiles are completed to ``ceil(sqrt(n))**2`` tokens by copies of the first ones; a learnable
    CLS token (zeros); a correlation ``_Block`` (``cor``); PPEG on the square grid
    (``pos_enc``); an aggregation ``_Block`` (``agg``); LayerNorm of the CLS token
    (``norm``); ``Linear(dim, out_features)`` (``head``). These are the reference's module
    names, so its checkpoints load as they are.
    ``kw_cor`` / ``kw_agg`` configure the two blocks (``attention_type``: "original" or
    "nystrom", ``num_heads``, ``dropout``, and the Nystrom keys ``dim_head``, ``num_landmarks``,
    ``pinv_iterations``, ``residual``, ``residual_conv_kernel``). ``position_encoding`` is
    "PPEG" or None; ``ppeg`` is "full" (reference) or "depthwise" (original paper).

    Padding: each slide is squared from its own n real tiles, its grid keeps its own side
    (zero padded like a lone slide) and padded tokens are never attended to, so a slide's
    output in a padded batch equals its output alone (the reference ignored the mask).
    Init: truncated normal (std 0.02) Linear weights, zero biases, LayerNorm (1, 0).
    """

    def __init__(
        self,
        in_features: int,
        position_encoding: str | None = "PPEG",
        proj_dim: int | None = None,
        proj_dropout: float | None = None,
        out_features: int = 1,
        kw_cor: dict[str, Any] | None = None,
        kw_agg: dict[str, Any] | None = None,
        metadata_cols: int = 3,
        ppeg: str = "full",
    ) -> None:
        super().__init__()
        for name, kw in (("kw_cor", kw_cor), ("kw_agg", kw_agg)):
            unknown = set(kw or {}) - _BLOCK_KEYS
            if unknown:
                raise ValueError(
                    f"TransMIL: unknown {name} keys {sorted(unknown)}; known: {sorted(_BLOCK_KEYS)}"
                )
        if position_encoding not in ("PPEG", None, "none", "None"):
            raise ValueError(
                f"TransMIL: position_encoding={position_encoding!r}; expected 'PPEG' or None"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.metadata_cols = metadata_cols
        dim = proj_dim or in_features
        self.dim = dim
        self.projection: nn.Module | None = None
        if proj_dim:
            self.projection = nn.Sequential(
                nn.Linear(in_features, proj_dim), nn.Dropout(proj_dropout or 0.0)
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cor = _Block(dim, **dict(kw_cor or {}))
        self.pos_enc = PPEG(dim, kind=ppeg) if position_encoding == "PPEG" else None
        self.agg = _Block(dim, **dict(kw_agg or {}))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_features)
        self.apply(_init_weights)
        register_legacy_keys(self)

    # ------------------------------------------------------------------ layout
    def _layout(self, n_tiles: int, mask: torch.Tensor | None, device: torch.device) -> _Layout:
        pad = None if mask is None else mask.reshape(mask.shape[0], n_tiles)
        if pad is not None and not bool(pad.any()):
            pad = None
        if pad is None:  # every slide has the same n tiles, in order
            side = math.isqrt(max(n_tiles, 1) - 1) + 1
            extra = side * side - n_tiles
            source = torch.cat(
                [torch.arange(n_tiles, device=device), torch.arange(extra, device=device)]
            )
            return _Layout(side=side, pad=None, canvas_pos=None, source=source)
        valid = ~pad
        n = valid.sum(dim=1)  # (B,)
        side_b = _ceil_sqrt(n)
        squared = side_b * side_b
        length = int(squared.max())
        side = int(side_b.max())
        order = torch.argsort(pad.to(torch.uint8), dim=1, stable=True)  # real tiles first
        j = torch.arange(length, device=device)[None, :]
        rank = torch.where(j < n[:, None], j, j - n[:, None]).clamp(0, n_tiles - 1)
        source = torch.gather(order, 1, rank)  # (B, L)
        slot_valid = j < squared[:, None]
        canvas_pos = (j // side_b[:, None]) * side + j % side_b[:, None]
        canvas_pos = torch.where(slot_valid, canvas_pos, torch.full_like(canvas_pos, side * side))
        token_pad = torch.cat(
            [torch.zeros_like(slot_valid[:, :1]), ~slot_valid], dim=1
        )  # (B, 1 + L)
        return _Layout(side=side, pad=token_pad, canvas_pos=canvas_pos, source=source)

    def _position_encoding(self, tokens: torch.Tensor, layout: _Layout) -> torch.Tensor:
        if self.pos_enc is None:
            return tokens
        b, length, d = tokens.shape
        s = layout.side
        if layout.canvas_pos is None:
            grid = tokens.transpose(1, 2).reshape(b, d, s, s)
            return self.pos_enc(grid).flatten(2).transpose(1, 2)
        index = layout.canvas_pos.unsqueeze(-1).expand(-1, -1, d)
        canvas = tokens.new_zeros(b, s * s + 1, d).scatter(1, index, tokens)
        grid = canvas[:, : s * s].transpose(1, 2).reshape(b, d, s, s)
        out = self.pos_enc(grid).flatten(2).transpose(1, 2)  # (B, S*S, d)
        return torch.gather(out, 1, index.clamp(max=s * s - 1))

    def _encode(
        self, features: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, _Layout]:
        """Tokens after the correlation block and PPEG, (B, 1 + L, dim), and the layout."""
        x = split_features(features, self.metadata_cols)
        mask = prepare_mask(mask, features)
        if self.projection is not None:
            x = self.projection(x)
        b, n_tiles, d = x.shape
        layout = self._layout(n_tiles, mask, x.device)
        if layout.source.dim() == 1:
            tokens = x if layout.source.numel() == n_tiles else x[:, layout.source]
        else:
            tokens = torch.gather(x, 1, layout.source.unsqueeze(-1).expand(-1, -1, d))
        h = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        h = self.cor(h, layout.pad)
        h = torch.cat([h[:, :1], self._position_encoding(h[:, 1:], layout)], dim=1)
        return h, layout

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, metadata_cols + D), (B, N, 1) -> logits (B, out_features)."""
        h, layout = self._encode(features, mask)
        h = self.agg(h, layout.pad)
        return self.head(self.norm(h[:, 0]))

    def tile_scores(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, class_index: int = 0
    ) -> torch.Tensor:
        """Attention of the CLS token on each tile in the aggregation block, averaged over
        heads, (B, N); a tile copied by the squaring gets the sum over its copies. NaN at
        padded tiles. Needs ``attention_type="original"``; ``class_index`` is ignored."""
        h, layout = self._encode(features, mask)
        _, attn = self.agg.forward_with_attention(h, layout.pad)
        cls_attn = attn[:, :, 0, 1:].mean(dim=1)  # (B, L)
        b, n_tiles = features.shape[0], features.shape[1]
        source = layout.source
        if source.dim() == 1:
            source = source.unsqueeze(0).expand(b, -1)
        if layout.pad is not None:
            cls_attn = cls_attn.masked_fill(layout.pad[:, 1:], 0.0)
        scores = cls_attn.new_zeros(b, n_tiles).scatter_add(1, source, cls_attn)
        return scores_with_nan_padding(scores, mask)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
