"""The fast ensemble trainer reproduces separate seeded TorchTrainer runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from testlib.cv import ToyCohort, assert_members_equal_plain, fp32_and_bf16_members, trainer_cfg

from rl_benchmarks.trainers.ensemble_trainer import (
    EnsembleTrainer,
    _fused_forward,
    _GatedScores,
    _SharedLinear,
    _StackedAdam,
    preload,
    unsupported_reason,
)
from rl_benchmarks.utils.seed import set_seed
from rl_benchmarks.val_schemes import update_trainer_cfg


def test_stacked_adam_equals_torch_adam():
    torch.manual_seed(0)
    w0 = torch.randn(3, 5, 4)
    lrs, wds = [1e-3, 1e-2, 1e-1], [0.0, 1e-4, 1e-1]
    stacked = {"w": w0.clone(), "unused": torch.zeros(3, 2)}
    opt = _StackedAdam(stacked, lrs, wds, betas=(0.9, 0.999), eps=1e-8)
    singles = [w0[i].clone().requires_grad_(True) for i in range(3)]
    opts = [torch.optim.Adam([singles[i]], lr=float(lrs[i]), weight_decay=float(wds[i]))
            for i in range(3)]
    for step in range(5):
        grads = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(step))
        if step % 2:  # strided gradients (as vmap can give) are read as such
            grads = grads.transpose(1, 2).contiguous().transpose(1, 2)
        opt.step([grads, None])
        for i in range(3):
            singles[i].grad = grads[i].clone()
            opts[i].step()
    for i in range(3):
        torch.testing.assert_close(stacked["w"][i], singles[i].detach(), atol=1e-6, rtol=1e-5)
    assert not torch.equal(stacked["w"], w0)  # updated in place
    assert torch.equal(stacked["unused"], torch.zeros(3, 2))  # no gradient: untouched


def test_stacked_adam_without_a_fused_kernel(monkeypatch):
    """Where torch has no fused Adam for the device, the default Adam runs (same result)."""
    adam = torch.optim.Adam

    def no_fused(*args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be ... supported devices")
        return adam(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    w0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    stacked = {"w": w0.clone()}
    opt = _StackedAdam(stacked, [1e-2, 1e-1], [0.0, 1e-2], betas=(0.9, 0.999), eps=1e-8)
    assert not opt.optimizer.defaults["fused"]
    grad = torch.ones(2, 3)
    opt.step([grad])
    for i, lr in enumerate([1e-2, 1e-1]):  # Adam's first step moves each weight by lr
        torch.testing.assert_close(stacked["w"][i], w0[i] - lr, atol=1e-6, rtol=0)


def test_preload_pads_and_masks():
    cohort = ToyCohort(n_patients=6, n_tiles=6, ragged=True)
    data = preload(cohort)
    lengths = [len(x) for x in cohort.features]
    assert data.features.shape == (len(cohort), max(lengths), 11)
    assert data.mask[:, :, 0].sum(1).tolist() == [max(lengths) - n for n in lengths]
    means = data.slide_means()
    expected = torch.stack([x.mean(0) for x in cohort.features])
    torch.testing.assert_close(means.features[:, 0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", ["MeanPool", "Chowder", "ChowderLinearScore", "ABMIL", "DSMIL"])
@pytest.mark.parametrize("task", ["binary", "survival"])
def test_fast_members_equal_separate_plain_runs(model, task):
    # binary: slides without padding (the fast path then skips masking); survival: ragged
    cohort = ToyCohort(n_patients=24, n_tiles=10, ragged=task == "survival", task=task)
    n = len(cohort)
    tr_idx, va_idx = list(range(0, n - 10)), list(range(n - 10, n))
    cfg = trainer_cfg(model, task, num_epochs=3, batch_size=4)
    members = [(1e-3, 0.0), (1e-2, 1e-2)]
    fast = EnsembleTrainer(cfg).train(preload(cohort), tr_idx, va_idx, members, 3, seed=11,
                                      keep_state=True)
    assert_members_equal_plain(fast, members, cfg, cohort, tr_idx, va_idx, task)

def test_unsupported_reasons():
    cfg = trainer_cfg("MeanPool")
    set_seed(0)
    assert unsupported_reason(instantiate(cfg)) is None
    sgd = update_trainer_cfg(cfg, {"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True}})
    assert "Adam" in unsupported_reason(instantiate(sgd))
    # dropout is supported: the members replay their separate runs' random numbers
    # (tests/trainers/test_ensemble_models.py checks the equality)
    drop = update_trainer_cfg(cfg, {"model": {"hidden": [4], "dropout": [0.5]}})
    assert unsupported_reason(instantiate(drop)) is None
    assert "gc_step" in unsupported_reason(instantiate(update_trainer_cfg(cfg, {"gc_step": 2})))


@pytest.mark.parametrize("model,expected", [("Chowder", "two_phase"), ("MeanPool", "plain"),
                                            ("ABMIL", "plain")])
def test_chowder_uses_the_selected_tiles_shortcut(model, expected):
    set_seed(0)
    base = instantiate(trainer_cfg(model)).model
    fn = EnsembleTrainer._train_forward(base, None, {}, {}, None)
    assert fn.__name__ == expected


def _shared_linear_case(g: int, m: int, d: int, h: int, seed: int) -> tuple:
    """Input (m, d), weights (g, h, d) and biases (g, h) with gradients, an upstream (g, m, h)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=gen)
    w = torch.randn(g, h, d, generator=gen, requires_grad=True)
    b = torch.randn(g, h, generator=gen, requires_grad=True)
    return x, w, b, torch.randn(g, m, h, generator=gen)


def _float64_linears(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, up: torch.Tensor) -> tuple:
    """The G members as separate float64 Linears, back-propagated from ``up``: (output,
    weights, biases), the last two holding their gradients."""
    w64, b64 = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    ref = torch.stack([torch.nn.functional.linear(x.double(), w64[i], b64[i]) for i in range(len(w))])
    (ref * up.double()).sum().backward()
    return ref.detach(), w64, b64


@pytest.mark.parametrize("low", [None, torch.bfloat16])
def test_shared_linear_equals_per_member_linear(low):
    """The fused G-member layer: same outputs and weight/bias gradients as G float64 Linears;
    with ``low`` the output is in ``low`` and the gradients of the float32 weights float32."""
    x, w, b, up = _shared_linear_case(3, 50, 24, 8, seed=0)
    out = _SharedLinear.apply(x, w, b, low)
    assert out.shape == (3, 50, 8) and out.dtype == (low or torch.float32)
    (out.float() * up).sum().backward()
    assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
    ref, w64, b64 = _float64_linears(x, w, b, up)
    tol = {"atol": 1e-4, "rtol": 1e-5} if low is None else {"atol": 0.1, "rtol": 0.02}
    torch.testing.assert_close(out.double(), ref, **tol)
    torch.testing.assert_close(b.grad.double(), b64.grad, **tol)
    scale = float(w64.grad.abs().max())
    err = float((w.grad.double() - w64.grad).abs().max()) / scale
    assert err < (1e-5 if low is None else 2e-2)


@pytest.mark.parametrize("low", [None, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_gated_scores_equal_the_gated_attention_layers(low, bias):
    """ABMIL's fused gated scores (one product, tanh as 2 sigmoid(2a) - 1, the score layer
    inside): the scores and the gradients of v, the gate's and the score layer's weights and
    biases of ``w(tanh(v Wa^T + ba) * sigmoid(v Wg^T + bg)) + bw`` per member, computed
    independently in float64 by autograd."""
    g, m, d = 3, 70, 12
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(g, m, d, generator=gen, requires_grad=True)
    w = torch.randn(g, 2 * d, d, generator=gen, requires_grad=True)
    b = torch.randn(g, 2 * d, generator=gen, requires_grad=True) if bias else None
    w_out = torch.randn(g, 1, d, generator=gen, requires_grad=True)
    b_out = torch.randn(g, 1, generator=gen, requires_grad=True) if bias else None
    up = torch.randn(g, m, 1, generator=gen)
    cast = (lambda t: t) if low is None else (lambda t: t.to(low))
    out = _GatedScores.apply(cast(v), cast(w), None if b is None else cast(b), w_out, b_out)
    assert out.dtype == torch.float32 and out.shape == (g, m, 1)
    (out * up).sum().backward()
    leaves = [x for x in (v, w, b, w_out, b_out) if x is not None]
    v64, w64, b64, wo64, bo64 = (None if x is None else x.detach().double().requires_grad_()
                                 for x in (v, w, b, w_out, b_out))
    a = torch.bmm(v64, w64[:, :d].transpose(1, 2))
    z = torch.bmm(v64, w64[:, d:].transpose(1, 2))
    if b64 is not None:
        a, z = a + b64[:, None, :d], z + b64[:, None, d:]
    ref = torch.bmm(torch.tanh(a) * torch.sigmoid(z), wo64.transpose(1, 2))
    if bo64 is not None:
        ref = ref + bo64.unsqueeze(1)
    (ref * up.double()).sum().backward()
    tol = {"atol": 1e-5, "rtol": 1e-5} if low is None else {"atol": 0.1, "rtol": 0.05}
    torch.testing.assert_close(out.double(), ref, **tol)
    theirs_all = [x for x in (v64, w64, b64, wo64, bo64) if x is not None]
    for ours, theirs in zip(leaves, theirs_all):
        scale = float(theirs.grad.abs().max())
        err = float((ours.grad.double() - theirs.grad).abs().max()) / scale
        assert err < (1e-5 if low is None else 3e-2)


@pytest.mark.parametrize("model,fused", [("ABMIL", True), ("Chowder", True),
                                         ("MeanPool", False), ("DSMIL", True),
                                         ("DSMIL-unequal", False)])
def test_fused_tile_layer_is_used_for_abmil_chowder_and_dsmil(model, fused):
    """DSMIL fuses its first layers only when both tile MLPs start equally wide (the stacked
    layout); other widths run as the model itself."""
    set_seed(0)
    cfg = trainer_cfg(model.split("-")[0])
    if model == "DSMIL-unequal":
        cfg = update_trainer_cfg(cfg, {"model": {"tiles_queries_mlp_hidden": [6]}})
    base = instantiate(cfg).model
    params = {k: v.detach().unsqueeze(0) for k, v in base.named_parameters()}
    data = preload(ToyCohort(n_patients=4, n_tiles=6))
    fn = _fused_forward(base, params, {}, None, None, data, data.features)
    assert (fn is not None) is fused


@pytest.mark.parametrize("model", ["Chowder", "ABMIL", "DSMIL"])
def test_bf16_members_close_to_fp32(model):
    """precision=bf16: same protocol, float32 weights and Adam; metrics within rounding noise."""
    cohort = ToyCohort(n_patients=24, n_tiles=10, ragged=True)
    n = len(cohort)
    tr_idx, va_idx = list(range(0, n - 10)), list(range(n - 10, n))
    cfg = trainer_cfg(model, "binary", num_epochs=3, batch_size=4)
    members = [(1e-3, 0.0), (1e-2, 1e-2)]
    for a, b in fp32_and_bf16_members(cfg, cohort, tr_idx, va_idx, members):
        np.testing.assert_allclose(b.val_metrics["loss"], a.val_metrics["loss"], atol=0.02)
        np.testing.assert_allclose(b.val_metrics["auc"], a.val_metrics["auc"], atol=0.1)
        np.testing.assert_allclose(b.val_logits, a.val_logits, atol=0.05)
    with pytest.raises(ValueError, match="precision"):
        EnsembleTrainer(cfg, "fp16")
