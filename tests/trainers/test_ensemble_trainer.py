"""The fast ensemble trainer reproduces separate seeded TorchTrainer runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cv_testlib import ToyCohort, trainer_cfg
from hydra.utils import instantiate
from torch.utils.data import Subset

from rl_benchmarks.trainers.ensemble_trainer import (
    EnsembleTrainer,
    _StackedAdam,
    preload,
    unsupported_reason,
)
from rl_benchmarks.utils.seed import set_seed
from rl_benchmarks.val_schemes import update_trainer_cfg


def test_stacked_adam_equals_torch_adam():
    torch.manual_seed(0)
    w0 = torch.randn(3, 5, 4)
    lrs, wds = torch.tensor([1e-3, 1e-2, 1e-1]), torch.tensor([0.0, 1e-4, 1e-1])
    stacked = {"w": w0.clone()}
    opt = _StackedAdam(stacked, lrs, wds, betas=(0.9, 0.999), eps=1e-8)
    singles = [w0[i].clone().requires_grad_(True) for i in range(3)]
    opts = [torch.optim.Adam([singles[i]], lr=float(lrs[i]), weight_decay=float(wds[i]))
            for i in range(3)]
    for step in range(5):
        grads = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(step))
        opt.step([grads])
        for i in range(3):
            singles[i].grad = grads[i].clone()
            opts[i].step()
    for i in range(3):
        torch.testing.assert_close(stacked["w"][i], singles[i].detach(), atol=1e-6, rtol=1e-5)


def test_preload_pads_and_masks():
    cohort = ToyCohort(n_patients=6, n_tiles=6, ragged=True)
    data = preload(cohort)
    lengths = [len(x) for x in cohort.features]
    assert data.features.shape == (len(cohort), max(lengths), 11)
    assert data.mask[:, :, 0].sum(1).tolist() == [max(lengths) - n for n in lengths]
    means = data.slide_means()
    expected = torch.stack([x.mean(0) for x in cohort.features])
    torch.testing.assert_close(means.features[:, 0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", ["MeanPool", "Chowder", "ABMIL", "DSMIL"])
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
    metric = "auc" if task == "binary" else "cindex"
    for (lr, wd), res in zip(members, fast):
        set_seed(11)
        trainer = instantiate(update_trainer_cfg(cfg, {"learning_rate": lr, "weight_decay": wd}))
        trainer.seed = 11
        tr_m, va_m = trainer.train(Subset(cohort, tr_idx), Subset(cohort, va_idx))
        np.testing.assert_allclose(res.train_metrics["loss"], tr_m["loss"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.val_metrics["loss"], va_m["loss"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.val_metrics[metric], va_m[metric], atol=1e-6)
        ours, plain = res.val_logits, trainer.val_outputs[1]
        if task == "survival":
            # the Cox loss ignores a constant shift of the logits: the output bias only sees
            # rounding noise, which Adam scales up, so compare centred logits
            ours, plain = ours - ours.mean(), plain - plain.mean()
        np.testing.assert_allclose(ours, plain, rtol=1e-4, atol=1e-5)
        if task == "binary":
            for k, v in trainer.model.state_dict().items():
                if v.numel() == 1:  # e.g. ABMIL's attention-logit bias: softmax ignores it,
                    continue  # its gradient is rounding noise that Adam scales up
                torch.testing.assert_close(res.state_dict[k], v, atol=1e-5, rtol=1e-4)


def test_unsupported_reasons():
    cfg = trainer_cfg("MeanPool")
    set_seed(0)
    assert unsupported_reason(instantiate(cfg)) is None
    sgd = update_trainer_cfg(cfg, {"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True}})
    assert "Adam" in unsupported_reason(instantiate(sgd))
    drop = update_trainer_cfg(cfg, {"model": {"hidden": [4], "dropout": [0.5]}})
    assert "dropout" in unsupported_reason(instantiate(drop))
    assert "gc_step" in unsupported_reason(instantiate(update_trainer_cfg(cfg, {"gc_step": 2})))


@pytest.mark.parametrize("model,expected", [("Chowder", "two_phase"), ("MeanPool", "plain"),
                                            ("ABMIL", "plain")])
def test_chowder_uses_the_selected_tiles_shortcut(model, expected):
    set_seed(0)
    base = instantiate(trainer_cfg(model)).model
    fn = EnsembleTrainer._train_forward(base, None, {}, {}, None)
    assert fn.__name__ == expected
