"""Cox loss with zero survival times: censored at time 0 (the reference's signed-time
encoding), never an error. Checked against an independent float64 partial likelihood."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rl_benchmarks.losses import CoxLoss, cox


def partial_likelihood(risks: np.ndarray, labels: np.ndarray, reduction: str = "mean") -> float:
    """Negative Cox partial log-likelihood within the batch, float64, written from the
    definition without sorting: event_i = 1[y_i > 0] (so y = 0 is censored at time 0),
    t_i = |y_i|; the risk set of i is every j with t_j > t_i plus the tied j (t_j == t_i)
    at or before i in batch order (the stable sort's tie order)."""
    risks = np.asarray(risks, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    times, events = np.abs(labels), labels > 0
    total = 0.0
    for i in range(len(labels)):
        if not events[i]:
            continue
        in_set = (times > times[i]) | ((times == times[i]) & (np.arange(len(labels)) <= i))
        total -= risks[i] - np.log(np.sum(np.exp(risks[in_set])))
    return total / len(labels) if reduction == "mean" else total


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_zero_times_match_the_float64_reference(reduction):
    rng = np.random.default_rng(0)
    risks = rng.normal(size=16)
    times = rng.integers(0, 5, size=16).astype(np.float64)  # zeros and many ties
    times[[2, 7]] = 0.0
    signs = np.where(rng.random(16) < 0.6, 1.0, -1.0)
    labels = times * signs  # includes +0.0 and -0.0
    assert (labels == 0).sum() >= 2
    expected = partial_likelihood(risks, labels, reduction)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the loss neither raises nor warns
        got = CoxLoss(reduction=reduction)(
            torch.tensor(risks)[:, None], torch.tensor(labels)[:, None]
        )
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # float32 in, same value to float32 precision
    got32 = cox(torch.tensor(risks, dtype=torch.float32), torch.tensor(labels, dtype=torch.float32),
                reduction=reduction)
    assert got32.item() == pytest.approx(expected, rel=1e-5)


def test_a_zero_time_is_a_censoring_at_time_zero():
    """A zero label contributes only its share of the mean's denominator: the same loss
    as a censoring just above 0, and its risk score gets no gradient."""
    risks = torch.tensor([[0.3], [-1.2], [0.8], [2.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[3.0], [0.0], [-2.0], [1.0]], dtype=torch.float64)
    loss = cox(risks, labels)
    near_zero = cox(risks, torch.tensor([[3.0], [-1e-9], [-2.0], [1.0]], dtype=torch.float64))
    assert loss.item() == pytest.approx(near_zero.item(), rel=1e-12)
    assert loss.item() == pytest.approx(partial_likelihood(risks.detach()[:, 0].numpy(),
                                                           labels[:, 0].numpy()), rel=1e-12)
    # counted as an event (the reference's (sign + 1) / 2 weight made it half of one), the
    # loss would differ
    assert loss.item() != pytest.approx(
        partial_likelihood(risks.detach()[:, 0].numpy(), np.array([3.0, 1e-9, -2.0, 1.0])),
        rel=1e-6,
    )
    loss.backward()
    assert torch.isfinite(risks.grad).all() and risks.grad[1, 0].item() == 0.0


def test_all_zero_times_give_zero_loss():
    risks = torch.randn(5, 1, dtype=torch.float64)
    assert cox(risks, torch.zeros(5, 1, dtype=torch.float64)).item() == 0.0
