"""Tiny generated cohorts and trainer configs for the training-stack tests.

The metrics here are written independently of ``rl_benchmarks.metrics`` (scikit-learn and
lifelines directly) so that the tests check the CV machinery, not the metric code.
"""

from __future__ import annotations

import numpy as np
import torch
from lifelines.utils import concordance_index
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score


def auc(labels: np.ndarray, logits: np.ndarray) -> float:
    labels = np.asarray(labels).reshape(-1)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(logits)[:, 0]))


def cindex(labels: np.ndarray, logits: np.ndarray) -> float:
    y = np.asarray(labels).reshape(-1)
    return float(concordance_index(np.abs(y), -np.asarray(logits)[:, 0], y > 0))


def cox_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cox partial likelihood within the batch (signed times, events > 0)."""
    y = labels.reshape(-1)
    r = logits.reshape(-1)
    order = torch.argsort(torch.abs(y), descending=True, stable=True)
    r, y = r[order], y[order]
    events = (y > 0).to(r.dtype)
    return -(events * (r - torch.logcumsumexp(r, 0))).sum() / len(r)


class CoxLoss(torch.nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cox_loss(logits, labels)


class ToyCohort(torch.utils.data.Dataset):
    """``n_patients`` patients with 1-2 slides each, ``n_tiles`` tiles of ``3 + d`` columns.

    Positive slides (or high-risk ones for survival) carry a planted signal: a fraction
    ``frac`` of their tiles is shifted by ``strength`` along one feature direction.
    """

    def __init__(self, n_patients: int = 40, n_tiles: int = 12, d: int = 8, task: str = "binary",
                 strength: float = 3.0, frac: float = 0.5, seed: int = 0,
                 ragged: bool = False) -> None:
        rng = np.random.default_rng(seed)
        slides_per = rng.integers(1, 3, size=n_patients)
        self.patient_id = np.repeat(np.arange(n_patients), slides_per).astype(str)
        n = len(self.patient_id)
        self.center_id = (np.arange(n) % 4).astype(str)
        label_per_patient = rng.permutation(np.arange(n_patients) % 2)
        y = label_per_patient[np.repeat(np.arange(n_patients), slides_per)]
        self.features = []
        for i in range(n):
            k = int(rng.integers(n_tiles // 2, n_tiles + 1)) if ragged else n_tiles
            x = rng.normal(size=(k, d)).astype(np.float32)
            if y[i] == 1:
                sel = rng.random(k) < frac
                sel[0] = True
                x[sel, 0] += strength
            coords = np.stack([np.full(k, 10), np.arange(k), np.zeros(k)], 1).astype(np.float32)
            self.features.append(torch.from_numpy(np.concatenate([coords, x], 1)))
        if task == "binary":
            self.labels = y.astype(np.float32)
            self.stratified = y
        else:
            time = rng.exponential(1.0, size=n) * np.exp(-2.0 * y) * 100 + 1.0
            event = rng.random(n) < 0.8
            self.labels = np.where(event, time, -time).astype(np.float32)
            self.stratified = event.astype(int)
        self.n_features = d
        self.n_labels = 1

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int):
        x = self.features[i]
        return x[torch.randperm(len(x))], torch.tensor([self.labels[i]], dtype=torch.float32)


MODELS = {
    "MeanPool": {"_target_": "rl_benchmarks.models.MeanPool"},
    "Chowder": {"_target_": "rl_benchmarks.models.Chowder", "n_top": 2, "n_bottom": 2,
                "tiles_mlp_hidden": [8], "mlp_hidden": [8, 4]},
    # one linear tile score: the fast path's generic two-phase selection, not the fused one
    "ChowderLinearScore": {"_target_": "rl_benchmarks.models.Chowder", "n_top": 2,
                           "n_bottom": 2, "tiles_mlp_hidden": None, "mlp_hidden": [8, 4]},
    "DSMIL": {"_target_": "rl_benchmarks.models.DSMIL", "d_tiles_values": 4, "d_tiles_queries": 4,
              "tiles_scores_mlp_hidden": [8], "tiles_queries_mlp_hidden": [8],
              "mlp_hidden": [8]},
    "ABMIL": {"_target_": "rl_benchmarks.models.ABMIL", "d_model_attention": 8,
              "mlp_hidden": [8, 4], "mlp_activation": {"_target_": "torch.nn.ReLU"}},
}


def trainer_cfg(model: str = "MeanPool", task: str = "binary", num_epochs: int = 4,
                batch_size: int = 8, in_features: int = 8):
    """A TorchTrainer Hydra config over a toy cohort."""
    if task == "binary":
        criterion = {"_target_": "torch.nn.BCEWithLogitsLoss"}
        metrics = {"auc": {"_target_": "testlib.cv.auc", "_partial_": True}}
    else:
        criterion = {"_target_": "testlib.cv.CoxLoss"}
        metrics = {"cindex": {"_target_": "testlib.cv.cindex", "_partial_": True}}
    return OmegaConf.create({
        "_target_": "rl_benchmarks.trainers.TorchTrainer",
        "model": {**MODELS[model], "in_features": in_features, "out_features": 1},
        "criterion": criterion,
        "metrics": metrics,
        "batch_size": batch_size,
        "num_epochs": num_epochs,
        "learning_rate": 1.0e-3,
        "weight_decay": 0.0,
        "device": "cpu",
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True},
        "collator": {"_target_": "testlib.cv.pad_collate", "_partial_": True},
        "use_tqdm": False,
    })


def pad_collate(batch):
    """Zero-padding collation (independent of rl_benchmarks.utils.features)."""
    n = max(x.shape[0] for x, _ in batch)
    feats = torch.zeros(len(batch), n, batch[0][0].shape[1])
    mask = torch.ones(len(batch), n, 1, dtype=torch.bool)
    for i, (x, _) in enumerate(batch):
        feats[i, : len(x)] = x
        mask[i, : len(x)] = False
    return feats, mask, torch.stack([y for _, y in batch])


def plain_run(cfg, cohort, train_idx, val_idx, lr: float, wd: float, seed: int):
    """One plain seeded TorchTrainer run of ``cfg`` at (lr, wd), built right after
    ``set_seed(seed)`` as the fast path assumes: ``(trainer, train_metrics, val_metrics)``."""
    from hydra.utils import instantiate
    from torch.utils.data import Subset

    from rl_benchmarks.utils.seed import set_seed
    from rl_benchmarks.val_schemes import update_trainer_cfg

    set_seed(seed)
    trainer = instantiate(update_trainer_cfg(cfg, {"learning_rate": lr, "weight_decay": wd}))
    trainer.seed = seed
    tr_m, va_m = trainer.train(Subset(cohort, train_idx), Subset(cohort, val_idx))
    return trainer, tr_m, va_m


def assert_members_equal_plain(fast, members, cfg, cohort, train_idx, val_idx, task: str,
                               seed: int = 11) -> None:
    """Each fast-path member equals the separate plain run at its (lr, wd): losses, metric,
    validation logits and (binary) the weights. Softmax-invariant parameters are skipped:
    scalars (e.g. an attention-logit bias) and the key slice of ``in_proj_bias``; their
    gradient is rounding noise that Adam scales up. The Cox loss ignores a shift of the
    logits, so survival logits are compared centred."""
    import numpy as np
    import torch

    metric = "auc" if task == "binary" else "cindex"
    for (lr, wd), res in zip(members, fast):
        trainer, tr_m, va_m = plain_run(cfg, cohort, train_idx, val_idx, lr, wd, seed=seed)
        np.testing.assert_allclose(res.train_metrics["loss"], tr_m["loss"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.val_metrics["loss"], va_m["loss"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.val_metrics[metric], va_m[metric], atol=1e-6)
        ours, plain = res.val_logits, trainer.val_outputs[1]
        if task == "survival":
            ours, plain = ours - ours.mean(), plain - plain.mean()
        np.testing.assert_allclose(ours, plain, rtol=1e-4, atol=1e-5)
        if task != "binary":
            continue
        for k, v in trainer.model.state_dict().items():
            ours_v = res.state_dict[k]
            if v.numel() == 1:
                continue
            if k.endswith("in_proj_bias"):
                d = v.numel() // 3
                ours_v, v = torch.cat([ours_v[:d], ours_v[2 * d:]]), torch.cat([v[:d], v[2 * d:]])
            torch.testing.assert_close(ours_v, v, atol=1e-5, rtol=1e-4)



def fp32_and_bf16_members(cfg, cohort, train_idx, val_idx, members, epochs: int = 3,
                          seed: int = 5) -> list[tuple]:
    """The fast path's members trained in fp32 and in bf16 on the same seed, paired
    (fp32, bf16); every bf16 member's weights are checked to stay float32 (master weights)."""
    from rl_benchmarks.trainers.ensemble_trainer import EnsembleTrainer, preload

    data = preload(cohort)
    runs = [EnsembleTrainer(cfg, p).train(data, train_idx, val_idx, members, epochs, seed=seed,
                                          keep_state=True) for p in ("fp32", "bf16")]
    for b in runs[1]:
        assert all(v.dtype == torch.float32 for v in b.state_dict.values())
    return list(zip(*runs))
