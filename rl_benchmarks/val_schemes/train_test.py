"""Train/test evaluation with a fold ensemble (the reference tutorial's Camelyon16 protocol).

The cross-validation on the training cohort leaves one model per outer fold. A held-out
test cohort is scored by the **mean of the fold models' logits**; the test metric (AUC, or
C-index for survival) gets a percentile bootstrap confidence interval over slides.
``rlbench cv ... test_cohort=<cohort or CSV>`` runs it after the CV and writes
``test_predictions.csv`` (slide, patient, target, ensemble score, one column per fold).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rl_benchmarks.metrics.bootstrap import bootstrap
from rl_benchmarks.trainers.ensemble_trainer import Preloaded, preload
from rl_benchmarks.val_schemes.experiment import (
    ExperimentFolder,
    build_dataset,
    features_identity,
    predictions_frame,
)


@torch.no_grad()
def fold_logits(model_cfg: DictConfig, states: Mapping[str, Mapping[str, torch.Tensor]],
                data: Preloaded, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Logits (n, C) of every fold model (``states``: fold -> state dict) on ``data``."""
    out = {}
    for key, state in states.items():
        model = instantiate(model_cfg)
        model.load_state_dict(state)
        model.eval()
        parts = [model(data.features[i : i + batch_size], data.mask[i : i + batch_size])
                 for i in range(0, len(data), batch_size)]
        out[key] = torch.cat(parts).float().numpy()
    return out


def heldout_dataset(cfg: DictConfig) -> Any:
    """The dataset of ``cfg.test_cohort``, built as the training cohort's (same task data)."""
    data_cfg = OmegaConf.create(OmegaConf.to_container(cfg.task.data.train, resolve=True))
    data_cfg.cohort = str(cfg.test_cohort)
    return build_dataset(cfg, data_cfg)


def heldout_features_identity(cfg: DictConfig, train_features: Mapping[str, Any],
                              ) -> dict[str, Any]:
    """The identity of the test cohort's features (:func:`features_identity`), checked
    before any training: features from another extraction than the training cohort's
    (another extractor or other settings, or records on one side only) would be scored by
    models that never saw such features, so that is an error naming both."""
    dataset = heldout_dataset(cfg)
    features = list(getattr(dataset, "features", []))
    identity = features_identity(features, list(getattr(dataset, "slide_id",
                                                        range(len(features)))))
    train, test = train_features.get("settings"), identity.get("settings")
    if train != test:
        if train is None or test is None:
            which = "the training cohort's" if test is None else "the test cohort's"
            raise ValueError(f"test_cohort {cfg.test_cohort}: only {which} features have "
                             "extraction records: the two cohorts' features are of different "
                             "origins")
        keys = sorted(k for k in set(train) | set(test) if train.get(k) != test.get(k))
        raise ValueError(
            f"test_cohort {cfg.test_cohort}: its features come from another extraction than "
            f"the training cohort's (they differ in {', '.join(keys)}; extractor "
            f"{identity.get('extractor')} vs {train_features.get('extractor')}): extract both "
            "cohorts with one extractor and one set of settings"
        )
    return identity


def evaluate_test_cohort(cfg: DictConfig, ncv: Any, folder: Path) -> dict[str, Any]:
    """Score ``cfg.test_cohort`` with the mean logits of ``ncv``'s fold models; writes
    ``test_predictions.csv`` in the experiment ``folder``."""
    dataset = heldout_dataset(cfg)
    if int(dataset.n_features) != int(ncv.trainer_cfg.model.in_features):
        raise ValueError(
            f"test_cohort {cfg.test_cohort}: {dataset.n_features} features per tile, but the "
            f"models were trained on {ncv.trainer_cfg.model.in_features}"
        )
    data = preload(dataset)
    per_fold = fold_logits(ncv.trainer_cfg.model, ncv.fold_state_dicts, data,
                           int(ncv.trainer_cfg.batch_size))
    ensemble = np.mean(np.stack(list(per_fold.values())), axis=0)
    labels = data.labels.numpy()
    name = ncv._selection()
    metric = instantiate(ncv.trainer_cfg.metrics[name])
    value = float(metric(labels, ensemble))
    _, low, high = bootstrap(labels, ensemble, metric, int(cfg.get("n_bootstrap", 1000)),
                             0.95, seed=int(cfg.get("seed", 0)), method="percentile")
    frame = predictions_frame(dataset, np.arange(len(dataset)), labels, ensemble, "ensemble")
    for key, logits in per_fold.items():
        for k in range(logits.shape[1]):
            col = f"score_{key}" if logits.shape[1] == 1 else f"score_{k}_{key}"
            frame[col] = logits[:, k]
    ExperimentFolder(Path(folder)).write_test_predictions(frame)
    return {"cohort": str(cfg.test_cohort), "metric": name, "value": value, "ci_low": low,
            "ci_high": high, "ci_level": 0.95, "n_slides": len(dataset),
            "n_models": len(per_fold)}
