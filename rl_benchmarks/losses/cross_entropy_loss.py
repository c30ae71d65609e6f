"""Multi-class cross-entropy on logits."""

from __future__ import annotations

import torch
from torch import nn


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` on logits (B, C) (or (B, 1, C)) and integer labels
    (B, 1) or (B,).

    Like the reference it drops the singleton dimensions, but it keeps the batch one, so a
    batch of one slide works: logits become (B, C) and labels (B,) of dtype long.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        n_classes = logits.shape[-1]
        logits = logits.reshape(-1, n_classes)
        labels = labels.reshape(-1).long()
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"CrossEntropyLoss: {logits.shape[0]} rows of logits but {labels.shape[0]} labels"
            )
        return super().forward(logits, labels)
