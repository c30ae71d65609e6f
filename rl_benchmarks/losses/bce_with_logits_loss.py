"""Binary cross-entropy on logits."""

from __future__ import annotations

import torch
from torch import nn


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """``torch.nn.BCEWithLogitsLoss`` on logits (B, 1) and labels (B, 1) or (B,).

    Labels are cast to the logits' dtype and, when they hold as many values, reshaped to the
    logits' shape (so integer or (B,) labels work).
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        labels = labels.to(logits.dtype)
        if labels.shape != logits.shape:
            if labels.numel() != logits.numel():
                raise ValueError(
                    f"BCEWithLogitsLoss: logits {tuple(logits.shape)} and labels "
                    f"{tuple(labels.shape)} do not match"
                )
            labels = labels.reshape(logits.shape)
        return super().forward(logits, labels)
