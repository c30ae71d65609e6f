"""Attention layers of the MIL models: gated attention pooling (ABMIL), multi-head
self-attention and Nystrom self-attention (TransMIL).

Masks: ``mask`` is (B, N, 1) or (B, N) bool with True on padded tokens (or None). A padded
token is never attended to, so the outputs at real tokens do not depend on the padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tile_layers import MaskedLinear


def _key_padding(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N, 1) or (B, N) bool -> (B, N) bool (True = padding)."""
    if mask is None:
        return None
    return mask.reshape(mask.shape[0], mask.shape[1])


class GatedAttention(nn.Module):
    """Gated attention pooling (Ilse et al. 2018).

    ``h = tanh(W_a v)``, ``u = sigmoid(W_g v)``, logits ``= W (h * u) / temperature`` with
    padded tiles at -inf, weights ``= softmax`` over tiles. ``forward`` returns the pooled
    vector (B, d) and the weights (B, N, 1).
    """

    def __init__(self, d_model: int = 128, temperature: float = 1.0) -> None:
        super().__init__()
        self.att = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(d_model, d_model)
        self.w = MaskedLinear(d_model, 1, mask_value="-inf")
        self.temperature = float(temperature)

    def attention_logits(self, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention logits (B, N, 1); -inf at padded tiles."""
        h = torch.tanh(self.att(v)) * torch.sigmoid(self.gate(v))
        return self.w(h, mask) / self.temperature

    def forward(
        self, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.softmax(self.attention_logits(v, mask), dim=1)  # (B, N, 1)
        pooled = torch.matmul(weights.transpose(1, 2), v).squeeze(1)  # (B, d)
        return pooled, weights


class SelfAttention(nn.Module):
    """Standard multi-head self-attention (TransMIL's ``"original"`` attention).

    ``qkv = Linear(dim, 3 dim, bias=qkv_bias)``, scaled dot product per head, output
    projection ``Linear(dim, dim)``. Padded keys are excluded.
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_features % num_heads:
            raise ValueError(
                f"SelfAttention: in_features={in_features} is not divisible by num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.head_dim = in_features // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(in_features, 3 * in_features, bias=qkv_bias)
        self.attn_dropout = float(attn_dropout)
        self.proj = nn.Linear(in_features, in_features)
        self.proj_drop = nn.Dropout(proj_dropout)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each (B, h, N, hd)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, N, dim) -> (B, N, dim); with ``return_attention`` also (B, h, N, N) weights."""
        b, n, d = x.shape
        q, k, v = self._qkv(x)
        pad = _key_padding(mask)
        if return_attention:
            logits = torch.matmul(q * self.scale, k.transpose(-2, -1))
            if pad is not None:
                logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
            attn = torch.softmax(logits, dim=-1)
            out = torch.matmul(F.dropout(attn, self.attn_dropout, self.training), v)
        else:
            keep = None if pad is None else ~pad[:, None, None, :]
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=keep, dropout_p=self.attn_dropout if self.training else 0.0
            )
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))
        if return_attention:
            return out, attn
        return out


def _moore_penrose_iter_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Iterative Moore-Penrose pseudo-inverse of (..., h, m, m) matrices (Nystromformer).

    The starting point ``x^T / (max row sum * max column sum)`` takes its maxima over the
    heads of one sample (dimension -3 and the matrix), never over the batch: a slide's
    result does not depend on the other slides of its batch. For one sample this is the
    ``nystrom-attention`` package's choice exactly.
    """
    abs_x = x.abs()
    col = abs_x.sum(dim=-1).amax(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
    row = abs_x.sum(dim=-2).amax(dim=(-2, -1), keepdim=True)
    z = x.transpose(-1, -2) / (col * row).unsqueeze(-1)
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - (xz @ (15 * eye - (xz @ (7 * eye - xz)))))
    return z


class NystromAttention(nn.Module):
    """Nystrom self-attention (Xiong et al. 2021), equivalent to the ``nystrom-attention``
    package (0.0.11) that the reference re-implements, with a per-slide mask.

    For a slide of n real tokens, the result at its real tokens equals the package's output
    on that slide alone without a mask: the sequence is left-padded with zero tokens to a
    multiple of ``num_landmarks``, landmarks are means over consecutive groups, three
    softmaxes are combined through the iterative pseudo-inverse, and a depthwise residual
    convolution (kernel (``residual_conv_kernel``, 1)) over the values is added. In a padded
    batch each slide keeps its own group layout, so padding never changes its output.
    The real tokens must be contiguous at the start of the sequence (as TransMIL builds it).
    """

    def __init__(
        self,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual: bool = True,
        residual_conv_kernel: int = 33,
        eps: float = 1e-8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.eps = eps
        inner = heads * dim_head
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.residual = residual
        if residual:
            k = residual_conv_kernel
            self.res_conv = nn.Conv2d(
                heads, heads, (k, 1), padding=(k // 2, 0), groups=heads, bias=False
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, dim) -> (B, L, dim); outputs at padded tokens are meaningless."""
        b, length, _ = x.shape
        h, m = self.heads, self.num_landmarks
        pad = _key_padding(mask)
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, length, h, self.dim_head).transpose(1, 2) for t in (q, k, v))
        if pad is None:
            valid = torch.ones(b, length, dtype=torch.bool, device=x.device)
            n = torch.full((b,), length, dtype=torch.long, device=x.device)
        else:
            valid = ~pad
            keep = valid[:, None, :, None].to(q.dtype)
            q, k, v = q * keep, k * keep, v * keep
            n = valid.sum(dim=1)
        q = q * self.scale

        # Each slide's layout alone: p front zero tokens, groups of l consecutive tokens.
        n_pad = torch.div(n + m - 1, m, rounding_mode="floor") * m
        front = n_pad - n  # (B,)
        group_len = torch.div(n_pad, m, rounding_mode="floor").clamp(min=1)  # (B,)
        rank = torch.cumsum(valid.long(), dim=1) - 1  # position among the real tokens
        group = torch.div(rank + front[:, None], group_len[:, None], rounding_mode="floor")
        group = torch.where(valid, group.clamp(0, m - 1), torch.full_like(group, m))
        onehot = F.one_hot(group, m + 1)[..., :m].to(q.dtype)  # (B, L, m)
        inv_len = (1.0 / group_len.to(q.dtype))[:, None, None, None]
        q_land = torch.matmul(onehot.transpose(1, 2)[:, None], q) * inv_len  # (B, h, m, dh)
        k_land = torch.matmul(onehot.transpose(1, 2)[:, None], k) * inv_len

        attn1 = torch.softmax(torch.matmul(q, k_land.transpose(-1, -2)), dim=-1)  # (B,h,L,m)
        attn2 = torch.softmax(torch.matmul(q_land, k_land.transpose(-1, -2)), dim=-1)
        sim3 = torch.matmul(q_land, k.transpose(-1, -2))  # (B, h, m, L)
        if pad is not None:
            sim3 = sim3.masked_fill(pad[:, None, None, :], float("-inf"))
        # The p front zero tokens are keys with logit 0 and value 0: one extra column of
        # logit log(p) stands for all of them, then is dropped.
        extra = torch.log(front.to(q.dtype))[:, None, None, None].expand(b, h, m, 1)
        attn3 = torch.softmax(torch.cat([sim3, extra], dim=-1), dim=-1)[..., :length]

        attn2_inv = _moore_penrose_iter_pinv(attn2, self.pinv_iterations)
        out = torch.matmul(torch.matmul(attn1, attn2_inv), torch.matmul(attn3, v))
        if self.residual:
            out = out + self.res_conv(v)
        out = out.transpose(1, 2).reshape(b, length, h * self.dim_head)
        return self.to_out(out)
