"""HIPT-MIL and TransMIL on the fast ensemble path: equal to separate plain runs in fp32.

HIPT-MIL has dropout: the fast path replays each member's random numbers (the masks its
separate run draws). TransMIL depends on the tile order, so these cohorts read their tiles
in one fixed order (``shuffle = False``), as a dataset built with ``shuffle=False`` does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from testlib.cv import ToyCohort, assert_members_equal_plain, fp32_and_bf16_members, trainer_cfg

from rl_benchmarks.models.slide_models import PPEG
from rl_benchmarks.trainers.ensemble_trainer import (
    EnsembleTrainer,
    _batch,
    _RandomCapture,
    has_dropout,
    preload,
    unsupported_reason,
)
from rl_benchmarks.utils.seed import set_seed

MODELS = {
    "HIPTMIL": {"_target_": "rl_benchmarks.models.HIPTMIL"},
    # dropout in other models: replayed too, their fused shortcuts switched off
    "MeanPoolDropout": {"_target_": "rl_benchmarks.models.MeanPool", "hidden": [4],
                        "dropout": [0.5]},
    "ChowderDropout": {"_target_": "rl_benchmarks.models.Chowder", "n_top": 2, "n_bottom": 2,
                       "tiles_mlp_hidden": [8], "mlp_hidden": [8, 4], "mlp_dropout": [0.3, 0.3]},
    "TransMIL": {"_target_": "rl_benchmarks.models.TransMIL", "kw_cor": {"num_heads": 2},
                 "kw_agg": {"num_heads": 2}},
    "TransMILDepthwise": {"_target_": "rl_benchmarks.models.TransMIL", "ppeg": "depthwise",
                          "kw_cor": {"num_heads": 2}, "kw_agg": {"num_heads": 2}},
    # attention and projection dropout: the replayed path
    "TransMILDropout": {"_target_": "rl_benchmarks.models.TransMIL",
                        "kw_cor": {"num_heads": 2, "dropout": 0.2},
                        "kw_agg": {"num_heads": 2, "dropout": 0.2}},
}


class FixedOrderCohort(ToyCohort):
    """``ToyCohort`` whose reads keep each slide's tile order (and draw no random numbers)."""

    shuffle = False

    def __getitem__(self, i: int):
        return self.features[i], torch.tensor([self.labels[i]], dtype=torch.float32)


def model_cfg(model: str, task: str = "binary", num_epochs: int = 3, batch_size: int = 4):
    cfg = trainer_cfg("MeanPool", task, num_epochs=num_epochs, batch_size=batch_size)
    cfg.model = OmegaConf.create({**MODELS[model], "in_features": 8, "out_features": 1})
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("task", ["binary", "survival"])
def test_fast_members_equal_separate_plain_runs(model, task):
    # binary: no padding; survival: ragged slides (padding, per-slide TransMIL grids)
    cohort = FixedOrderCohort(n_patients=16, n_tiles=10, ragged=task == "survival", task=task)
    n = len(cohort)
    tr_idx, va_idx = list(range(0, n - 8)), list(range(n - 8, n))
    cfg = model_cfg(model, task)
    members = [(1e-3, 0.0), (1e-2, 1e-2)]
    data = preload(cohort)
    assert data.fixed_order
    fast = EnsembleTrainer(cfg).train(data, tr_idx, va_idx, members, 3, seed=11, keep_state=True)
    assert_members_equal_plain(fast, members, cfg, cohort, tr_idx, va_idx, task)

def test_dropout_models_are_supported_and_replayed():
    set_seed(0)
    hipt = instantiate(model_cfg("HIPTMIL"))
    assert unsupported_reason(hipt) is None and has_dropout(hipt.model)
    trans = instantiate(model_cfg("TransMIL"))
    assert unsupported_reason(trans) is None and not has_dropout(trans.model)
    assert has_dropout(instantiate(model_cfg("TransMILDropout")).model)


def test_replay_differs_from_one_shared_mask_draw():
    """Sanity check of the test above: without replaying, a second member would draw other
    dropout masks, so the equality there is not automatic."""
    set_seed(0)
    model = instantiate(model_cfg("HIPTMIL")).model.train()
    x = torch.randn(2, 6, 11)
    torch.manual_seed(3)
    a = model(x)
    b = model(x)  # the generator moved on: other masks
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("padded", [False, True])
def test_safe_softmax_runs_as_softmax_only_without_padding(monkeypatch, padded):
    """HIPT-MIL's training attention (math SDPA with dropout) calls ``_safe_softmax``; the
    replayed members run it as the plain softmax on batches without padding (then bit for
    bit the same outputs and gradients as with ``_safe_softmax``), never on padded ones."""
    import copy

    from torch.func import stack_module_state
    from torch.profiler import ProfilerActivity, profile

    import rl_benchmarks.trainers.ensemble_trainer as et

    set_seed(0)
    model = instantiate(model_cfg("HIPTMIL")).model.train()
    g = 3
    params, buffers = stack_module_state([model] * g)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    base = copy.deepcopy(model).to("meta")
    x = torch.randn(2, 9, 11)
    m = torch.zeros(2, 9, 1, dtype=torch.bool)
    if padded:
        m[1, 6:] = True

    def run() -> tuple[torch.Tensor, list[torch.Tensor], int]:
        torch.manual_seed(7)
        replay = et._replay_forward(base, params, buffers, torch.device("cpu"), True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = replay(x, m)
        grads = torch.autograd.grad(out.square().sum(), list(params.values()))
        safe = sum(e.count for e in prof.key_averages() if e.key == "aten::isneginf")
        return out.detach(), list(grads), safe

    out, grads, safe = run()
    monkeypatch.setattr(et, "_SAFE_SOFTMAX", None)  # no substitution: the reference
    ref_out, ref_grads, ref_safe = run()
    assert ref_safe > 0  # the math attention does call it (its isneginf pass)
    # every member runs in the replay mode: none calls the real _safe_softmax unpadded
    assert (safe == ref_safe) if padded else (safe == 0)
    assert torch.equal(out, ref_out)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


@pytest.mark.parametrize("kind", ["full", "depthwise"])
def test_merged_ppeg_kernels_equal_three_convolutions(kind):
    """The fast path's one 7x7 convolution with summed kernels equals the reference's sum
    of the 7x7, 5x5 and 3x3 convolutions (checked in float64), gradients included."""
    torch.manual_seed(0)
    ppeg = PPEG(6, kind=kind).double()
    grid = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    ref = ppeg(grid)
    grads_ref = torch.autograd.grad(ref.square().sum(), list(ppeg.parameters()))
    ppeg.merge_kernels = True
    out = ppeg(grid)
    grads = torch.autograd.grad(out.square().sum(), list(ppeg.parameters()))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    assert "merge_kernels" not in str(list(ppeg.state_dict()))


def test_batch_is_cut_to_longest_slide_and_reordered_within_real_tiles():
    feats = torch.arange(3 * 6 * 2, dtype=torch.float32).view(3, 6, 2)
    mask = torch.ones(3, 6, 1, dtype=torch.bool)
    mask[0, :4], mask[1, :2], mask[2, :3] = False, False, False
    idx = torch.tensor([1, 2])
    x, m = _batch(feats, mask, idx, None)
    assert x.shape == (2, 3, 2) and m[:, :, 0].tolist() == [[False, False, True],
                                                            [False, False, False]]
    torch.testing.assert_close(x, feats[idx, :3])
    gen = torch.Generator().manual_seed(0)
    orders = set()
    for _ in range(20):
        x, m = _batch(feats, mask, idx, gen)
        # each slide keeps its own real tiles (padding stays last), in some order
        assert sorted(x[0, :2, 0].tolist()) == feats[1, :2, 0].tolist()
        assert x[0, 2, 0] == feats[1, 2, 0]
        assert sorted(x[1, :, 0].tolist()) == feats[2, :3, 0].tolist()
        orders.add(tuple(x[1, :, 0].tolist()))
    assert len(orders) > 1


def test_transmil_shuffled_cohort_gets_a_fresh_order_per_read():
    """With a shuffling dataset (the reference's), TransMIL sees a new tile order at every
    read, as the plain path does: two epochs of a zero learning rate give different val
    logits (fixed weights, other orders); a fixed-order cohort gives the same."""
    for cohort, differ in ((ToyCohort(n_patients=8, n_tiles=9), True),
                           (FixedOrderCohort(n_patients=8, n_tiles=9), False)):
        n = len(cohort)
        cfg = model_cfg("TransMIL", num_epochs=2)
        trainer = EnsembleTrainer(cfg)
        seen = []
        orig = trainer._evaluate

        def spy(*args, orig=orig, seen=seen, **kwargs):
            out = orig(*args, **kwargs)
            seen.append(out[1].copy())
            return out

        trainer._evaluate = spy
        trainer.train(preload(cohort), list(range(n - 4)), list(range(n - 4, n)),
                      [(0.0, 0.0)], 2, seed=1)
        assert (not np.allclose(seen[0], seen[1], atol=1e-7)) is differ


@pytest.mark.slow
@pytest.mark.parametrize("model", ["HIPTMIL", "TransMIL"])
def test_bf16_members_close_to_fp32(model):
    """precision=bf16 (autocast): float32 weights and Adam, metrics within rounding noise."""
    cohort = FixedOrderCohort(n_patients=16, n_tiles=10, ragged=True)
    n = len(cohort)
    tr_idx, va_idx = list(range(0, n - 8)), list(range(n - 8, n))
    cfg = model_cfg(model)
    # learning rates where 8 training slides give smooth curves (at 1e-2 HIPT-MIL's fp32
    # curve itself jumps from epoch to epoch: any rounding then moves it)
    members = [(1e-3, 0.0), (3e-4, 1e-2)]
    for a, b in fp32_and_bf16_members(cfg, cohort, tr_idx, va_idx, members):
        # after one epoch: bf16 rounding only; later it compounds through training
        assert abs(b.val_metrics["loss"][0] - a.val_metrics["loss"][0]) < 0.02
        np.testing.assert_allclose(b.val_metrics["loss"], a.val_metrics["loss"], atol=0.1)
        np.testing.assert_allclose(b.val_metrics["auc"], a.val_metrics["auc"], atol=0.15)


def test_random_capture_hands_the_first_members_masks_on():
    """The dropout masks of the first member are recorded and given to the next one: its
    output equals a plain forward from the same generator state, and it draws nothing."""
    set_seed(0)
    model = instantiate(model_cfg("HIPTMIL")).model.train()
    x, m = torch.randn(2, 6, 11), torch.zeros(2, 6, 1, dtype=torch.bool)
    capture = _RandomCapture()
    torch.manual_seed(7)
    with capture.member(0):
        first = model(x, m)
    state = torch.get_rng_state()
    assert capture.usable and len(capture.records) == 12  # HIPT-MIL's 12 dropout layers
    with capture.member(1):
        second = model(x, m)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
    torch.manual_seed(7)
    torch.testing.assert_close(second, model(x, m), rtol=0, atol=0)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_attention_in_float32_is_the_math_kernel_with_its_dropout_draws(mask_kind):
    """``_attention_in`` computes what ``scaled_dot_product_attention`` with dropout computes
    on the CPU (the math kernel), from the same random numbers: in float32 the outputs agree
    to rounding and the generator ends in the same state; a fully masked row gives 0."""
    import torch.nn.functional as F

    from rl_benchmarks.trainers.ensemble_trainer import _attention_in

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=gen) for _ in range(3))
    mask = None
    if mask_kind is not None:
        keep = torch.rand(2, 3, 7, 7, generator=gen) > 0.3
        keep[..., 0] = True
        keep[0, 1, 2] = False  # one row with every key masked
        mask = keep if mask_kind == "bool" else torch.zeros(keep.shape).masked_fill(
            ~keep, float("-inf"))
    torch.manual_seed(5)
    ref = F.scaled_dot_product_attention(q, k, v, mask, 0.25)
    ref_state = torch.get_rng_state()
    torch.manual_seed(5)
    ours = _attention_in(torch.float32, q, k, v, mask, 0.25)
    assert torch.equal(torch.get_rng_state(), ref_state)  # the same draws
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    if mask_kind is not None:
        assert torch.equal(ours[0, 1, 2], torch.zeros(8))
    torch.manual_seed(5)
    low = _attention_in(torch.bfloat16, q, k, v, mask, 0.25)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0, atol=0.05)  # bf16 rounding only


def test_low_precision_attention_takes_bf16_attention_with_dropout_only(monkeypatch):
    """Within ``_low_precision_attention(bfloat16)``, nn.MultiheadAttention's attention with
    dropout on bfloat16 inputs (autocast) runs through ``_attention_in``; without dropout
    (eval), in float32, or without ``low`` it does not, and the swap ends with the block."""
    import torch.nn.functional as F

    import rl_benchmarks.trainers.ensemble_trainer as et

    calls, attention_in = [], et._attention_in

    def spy(*args, **kwargs):
        calls.append(args[0])
        return attention_in(*args, **kwargs)

    monkeypatch.setattr(et, "_attention_in", spy)
    original = F.scaled_dot_product_attention
    mha = torch.nn.MultiheadAttention(16, 2, dropout=0.25, batch_first=True)
    x = torch.randn(2, 9, 16)

    def run(low, train=True, autocast=True):
        mha.train(train)
        torch.manual_seed(1)
        with et._low_precision_attention(low), torch.autocast("cpu", torch.bfloat16,
                                                              enabled=autocast):
            out = mha(x, x, x, need_weights=False)[0]
        assert F.scaled_dot_product_attention is original
        return out.float()

    patched = run(torch.bfloat16)
    assert calls == [torch.bfloat16]
    plain = run(None)  # the math kernel (float32 products)
    run(torch.bfloat16, train=False)
    run(torch.bfloat16, autocast=False)
    assert calls == [torch.bfloat16]
    # the same dropout masks: the outputs differ by bf16 rounding only
    torch.testing.assert_close(patched, plain, rtol=0, atol=0.05)
    assert not torch.equal(patched, plain)
    with pytest.raises(RuntimeError), et._low_precision_attention(torch.bfloat16):
        raise RuntimeError
    assert F.scaled_dot_product_attention is original
