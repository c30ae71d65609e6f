"""Task configurations: the 14 reference tasks ship as YAML; this builds the same skeleton
for any cohort (a CSV of one's own, or a reference cohort/label not in the 14), with the
criterion and metrics that fit its target (binary, multiclass or survival)."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rl_benchmarks.datasets.validation import CohortError
from rl_benchmarks.paths import CONF_ROOT

TASK_DIR_PARTS = ("slide_level_task", "cross_validation", "task")
_HEADS: dict[str, tuple[str, dict[str, str]]] = {
    "binary": ("BCEWithLogitsLoss", {"auc": "compute_binary_auc", "accuracy": "compute_binary_accuracy"}),
    "multiclass": (
        "CrossEntropyLoss",
        {"auc": "compute_mean_one_vs_all_auc", "accuracy": "compute_multiclass_accuracy"},
    ),
    "survival": ("CoxLoss", {"cindex": "compute_cindex"}),
}


def task_type(cohort: str, label: str | None = None) -> str:
    """"binary", "multiclass" or "survival" for ``cohort``/``label`` (reads label files
    only, no features)."""
    from rl_benchmarks.datasets.loading import load_slide_table, normalise_cohort
    from rl_benchmarks.datasets.slides_classification.csv_cohort import (
        is_csv_cohort,
        load_csv_cohort,
    )

    cohort = normalise_cohort(cohort)
    if is_csv_cohort(cohort):
        kind = load_csv_cohort(cohort, None, label=label).attrs["task"]
    else:
        kind = load_slide_table(cohort, None, label, load_slide=False).attrs.get("task")
    if kind is None:
        raise CohortError(f"{cohort}: a task needs a label (got label=None)")
    return kind


def build_task_config(
    cohort: str | os.PathLike,
    label: str | None = None,
    kind: str | None = None,
    n_tiles: int = 1000,
    feature_extractor: str = "iBOTViTBasePANCAN",
) -> DictConfig:
    """The reference task skeleton for ``cohort`` (and ``label``): the validation scheme
    and trainer of the shipped tasks, with the criterion and metrics of ``kind`` (detected
    from the labels when None)."""

    kind = kind or task_type(str(cohort), label)
    if kind not in _HEADS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(_HEADS)}")
    template = CONF_ROOT.joinpath(*TASK_DIR_PARTS) / "tcga_crc_msi_prediction.yaml"
    cfg = OmegaConf.load(template)
    cfg.data.n_tiles = n_tiles
    cfg.data.feature_extractor = feature_extractor
    train: dict[str, Any] = {
        "_target_": "rl_benchmarks.datasets.SlideClassificationDataset",
        "cohort": str(cohort),
        "n_tiles": "${..n_tiles}",
    }
    if label is not None:
        train["label"] = label
    cfg.data.train = train
    criterion, metrics = _HEADS[kind]
    trainer = cfg.validation_scheme.trainer_cfg
    trainer.criterion = {"_target_": f"rl_benchmarks.losses.{criterion}"}
    trainer.metrics = {
        k: {"_target_": f"rl_benchmarks.metrics.{v}", "_partial_": True} for k, v in metrics.items()
    }
    return cfg
