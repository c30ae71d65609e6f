"""Losses of the slide-level tasks: BCE (binary), cross-entropy (multi-class) and the Cox
partial likelihood (survival)."""

from __future__ import annotations

from .bce_with_logits_loss import BCEWithLogitsLoss
from .cox_loss import CoxLoss, _sort_risks, cox
from .cross_entropy_loss import CrossEntropyLoss

__all__ = ["BCEWithLogitsLoss", "CoxLoss", "CrossEntropyLoss", "_sort_risks", "cox"]
