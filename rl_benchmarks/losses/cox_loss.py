"""Cox partial likelihood within a mini-batch (the reference's survival loss).

Labels are signed times: ``y > 0`` is an event (death) at ``|y|``, ``y <= 0`` a censoring at
``|y|``. A zero label is censored at time 0, as the reference's signed-time encoding makes
it (the loaders warn listing the patients; the reference's loss counted it as half an
event). A NaN label is rejected.
"""

from __future__ import annotations

import torch
from torch import nn

from rl_benchmarks.utils.functional import is_functorch_tensor

_REDUCTIONS = ("mean", "sum", "none")


def _sort_risks(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Risk scores and signed labels (both (B,)) in descending order of time.

    The sort is stable: samples with equal times keep their order in the batch.
    """
    risks = logits.reshape(-1)
    labels = labels.reshape(-1)
    order = torch.sort(labels.abs(), descending=True, stable=True).indices
    return risks[order], labels[order]


def cox(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative Cox partial log-likelihood of risk scores ``logits`` (B, 1) (higher = higher
    hazard) for signed survival times ``labels`` (B, 1).

    After a stable sort by descending time, sample i's risk set is every sample placed at or
    before it, i.e. every sample with a longer time, plus the samples with an *equal* time
    that come before it in the batch (ties are not grouped; this is the reference's
    cumulative-sum form, made deterministic by the stable sort):

        loss_i = -delta_i * (r_i - log sum_{j <= i} exp(r_j)),   delta_i = 1[y_i > 0].

    A zero label is a censoring at time 0 (delta = 0): it sorts last and adds nothing but
    its share of the mean's denominator.

    ``reduction="mean"`` divides the sum by B, censored samples included (the reference);
    ``"sum"`` returns the sum and ``"none"`` the (B,) terms in the sorted order.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cox: reduction={reduction!r}; expected one of {_REDUCTIONS}")
    if logits.numel() != labels.numel():
        raise ValueError(
            f"cox: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must hold one "
            "risk score and one signed time per sample"
        )
    if not is_functorch_tensor(labels):
        bad = torch.isnan(labels)
        if bool(bad.any()):
            where = torch.nonzero(bad.reshape(-1)).reshape(-1).tolist()
            raise ValueError(
                f"CoxLoss: survival label NaN at batch positions {where}; labels are signed "
                "times (> 0 event, <= 0 censored)"
            )
    risks, sorted_labels = _sort_risks(logits, labels.to(logits.dtype))
    events = (sorted_labels > 0).to(risks.dtype)
    log_risk_set = torch.logcumsumexp(risks, dim=0)
    terms = -events * (risks - log_risk_set)
    if reduction == "none":
        return terms
    total = terms.sum()
    return total / terms.shape[0] if reduction == "mean" else total


class CoxLoss(nn.Module):
    """Module form of :func:`cox`: ``CoxLoss(reduction="mean")(logits, labels)``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"CoxLoss: reduction={reduction!r}; expected one of {_REDUCTIONS}")
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cox(logits, labels, reduction=self.reduction)
