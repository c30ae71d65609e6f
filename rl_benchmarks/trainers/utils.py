"""One training pass and one validation pass over a DataLoader of padded slides."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def _unpack(batch: Any, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    features, mask, labels = batch
    return features.to(device), mask.to(device), labels.to(device)


def slide_level_train_step(
    model: nn.Module,
    train_dataloader: Any,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device = "cpu",
    gc_step: int = 1,
) -> tuple[float, np.ndarray, np.ndarray]:
    """One epoch of training; returns (mean loss, logits (n, C), labels (n, L)).

    The loss is divided by ``gc_step`` and the optimizer steps every ``gc_step`` batches
    and on the last batch (gradient accumulation). Logits are collected in train mode.
    """
    model.train()
    losses, all_logits, all_labels = [], [], []
    n_batches = len(train_dataloader)
    optimizer.zero_grad()
    for i, batch in enumerate(train_dataloader):
        features, mask, labels = _unpack(batch, device)
        logits = model(features, mask)
        loss = criterion(logits, labels) / gc_step
        loss.backward()
        if (i + 1) % gc_step == 0 or i + 1 == n_batches:
            optimizer.step()
            optimizer.zero_grad()
        losses.append(float(loss.detach()) * gc_step)
        all_logits.append(logits.detach().float().cpu().numpy())
        all_labels.append(labels.detach().cpu().numpy())
    return _gather(losses, all_logits, all_labels)


@torch.no_grad()
def slide_level_val_step(
    model: nn.Module,
    val_dataloader: Any,
    criterion: nn.Module,
    device: str | torch.device = "cpu",
) -> tuple[float, np.ndarray, np.ndarray]:
    """One pass in eval mode without gradients; returns (mean loss, logits, labels)."""
    model.eval()
    losses, all_logits, all_labels = [], [], []
    for batch in val_dataloader:
        features, mask, labels = _unpack(batch, device)
        logits = model(features, mask)
        losses.append(float(criterion(logits, labels)))
        all_logits.append(logits.float().cpu().numpy())
        all_labels.append(labels.cpu().numpy())
    return _gather(losses, all_logits, all_labels)


def _gather(losses: list, logits: list, labels: list) -> tuple[float, np.ndarray, np.ndarray]:
    if not logits:
        return float("nan"), np.zeros((0, 1), np.float32), np.zeros((0, 1), np.float32)
    return float(np.mean(losses)), np.concatenate(logits), np.concatenate(labels)
