"""Losses: Cox partial likelihood against a float64 hand computation, CE and BCE against
torch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rl_benchmarks.losses import BCEWithLogitsLoss, CoxLoss, CrossEntropyLoss, cox


def hand_cox(risks: list[float], labels: list[float], reduction: str = "mean") -> float:
    """Definition, float64, pure Python: order by descending time, ties in batch order;
    risk set of i = samples placed at or before i."""
    order = sorted(range(len(labels)), key=lambda i: (-abs(labels[i]), i))
    total = 0.0
    for pos, i in enumerate(order):
        if labels[i] > 0:
            risk_set = [order[j] for j in range(pos + 1)]
            total -= risks[i] - math.log(sum(math.exp(risks[j]) for j in risk_set))
    return total / len(labels) if reduction == "mean" else total


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cox_matches_hand_computation(reduction):
    g = torch.Generator().manual_seed(0)
    risks = torch.randn(12, 1, generator=g, dtype=torch.float64)
    times = torch.randint(1, 6, (12, 1), generator=g).double()  # many ties
    signs = torch.where(torch.rand(12, 1, generator=g) < 0.6, 1.0, -1.0).double()
    labels = times * signs
    got = CoxLoss(reduction=reduction)(risks, labels)
    expected = hand_cox(risks[:, 0].tolist(), labels[:, 0].tolist(), reduction)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_cox_float32_and_flat_shapes():
    risks = torch.tensor([0.5, -1.0, 2.0, 0.1])
    labels = torch.tensor([3.0, -2.5, 1.0, 4.0])
    expected = hand_cox(risks.tolist(), labels.tolist())
    assert cox(risks[:, None], labels[:, None]).item() == pytest.approx(expected, rel=1e-6)
    assert cox(risks, labels).item() == pytest.approx(expected, rel=1e-6)


def test_cox_without_ties_is_order_free_and_censored_only_is_zero():
    risks = torch.randn(7, 1, dtype=torch.float64)
    labels = torch.tensor([5.0, -3.0, 2.0, 7.5, -1.0, 4.0, 6.0], dtype=torch.float64)[:, None]
    perm = torch.randperm(7)
    torch.testing.assert_close(cox(risks, labels), cox(risks[perm], labels[perm]))
    assert cox(risks, -labels.abs()).item() == 0.0


def test_cox_ties_follow_batch_order_deterministically():
    risks = torch.tensor([[1.0], [0.0], [2.0]], dtype=torch.float64)
    labels = torch.tensor([[2.0], [2.0], [1.0]], dtype=torch.float64)
    # order: sample 0, sample 1 (tie kept in batch order), sample 2
    expected = (
        -(
            (1.0 - math.log(math.e))
            + (0.0 - math.log(math.e + 1.0))
            + (2.0 - math.log(math.e + 1.0 + math.e**2))
        )
        / 3
    )
    for _ in range(3):
        assert cox(risks, labels).item() == pytest.approx(expected, rel=1e-12)


def test_cox_rejects_nan_labels():
    labels = torch.tensor([[1.0], [float("nan")], [-2.0]])
    with pytest.raises(ValueError, match=r"survival label NaN at batch positions \[1\]"):
        CoxLoss()(torch.zeros(3, 1), labels)


def test_cox_gradient_is_finite_and_matches_autograd_of_hand_formula():
    risks = torch.tensor([[0.3], [-0.2], [1.5], [0.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[2.0], [-4.0], [1.0], [3.0]], dtype=torch.float64)
    cox(risks, labels).backward()
    h = 1e-6
    base = risks.detach()[:, 0].tolist()
    for i in range(4):
        up, down = list(base), list(base)
        up[i] += h
        down[i] -= h
        numeric = (hand_cox(up, labels[:, 0].tolist()) - hand_cox(down, labels[:, 0].tolist())) / (
            2 * h
        )
        assert risks.grad[i, 0].item() == pytest.approx(numeric, abs=1e-7)


def test_cox_reduction_validation():
    with pytest.raises(ValueError, match="reduction"):
        CoxLoss(reduction="max")


@pytest.mark.parametrize("batch", [1, 5])
def test_cross_entropy_squeezes_but_keeps_the_batch(batch):
    g = torch.Generator().manual_seed(batch)
    logits = torch.randn(batch, 4, generator=g)
    labels = torch.randint(0, 4, (batch, 1), generator=g).float()
    expected = F.cross_entropy(logits, labels[:, 0].long())
    torch.testing.assert_close(CrossEntropyLoss()(logits, labels), expected)
    torch.testing.assert_close(CrossEntropyLoss()(logits[:, None, :], labels), expected)
    assert CrossEntropyLoss()(logits, labels).dim() == 0


def test_bce_with_logits_accepts_flat_or_integer_labels():
    logits = torch.tensor([[0.2], [-1.0], [3.0]])
    labels = torch.tensor([1, 0, 1])
    expected = F.binary_cross_entropy_with_logits(logits, labels[:, None].float())
    torch.testing.assert_close(BCEWithLogitsLoss()(logits, labels), expected)
    torch.testing.assert_close(BCEWithLogitsLoss()(logits, labels[:, None].float()), expected)
    with pytest.raises(ValueError, match="do not match"):
        BCEWithLogitsLoss()(logits, torch.zeros(2))


def test_cox_works_under_vmap_for_ensembles():
    """The trainer may vmap the loss over an ensemble of models."""
    from torch.func import vmap

    risks = torch.randn(3, 8, 1, dtype=torch.float64)
    labels = torch.tensor([3.0, -2, 1, 4, 5, -6, 2, 1], dtype=torch.float64)[:, None]
    batched = vmap(cox, in_dims=(0, None))(risks, labels)
    expected = [hand_cox(r[:, 0].tolist(), labels[:, 0].tolist()) for r in risks]
    torch.testing.assert_close(batched, torch.tensor(expected, dtype=torch.float64))
