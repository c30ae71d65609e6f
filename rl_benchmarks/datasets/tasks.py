"""Task configurations: the 14 reference tasks ship as YAML; this builds the same skeleton
for any cohort (a CSV of one's own, or a reference cohort/label not in the 14), with the
criterion and metrics that fit its target (binary, multiclass or survival).

:func:`cohort_task_config` is the one place where a cohort becomes a task: the Python API
(:func:`build_task_config`) and ``rlbench cv task=<cohort.csv>`` both call it."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from rl_benchmarks.datasets.validation import CohortError
from rl_benchmarks.paths import CONF_ROOT

TASK_DIR_PARTS = ("slide_level_task", "cross_validation", "task")
#: the shipped task whose validation scheme and trainer a cohort of one's own runs with
CSV_TASK_TEMPLATE = "tcga_crc_msi_prediction"
#: task kind -> (loss class in rl_benchmarks.losses, {metric name: rl_benchmarks.metrics fn})
TASK_HEADS: dict[str, tuple[str, dict[str, str]]] = {
    "binary": ("BCEWithLogitsLoss",
               {"auc": "compute_binary_auc", "accuracy": "compute_binary_accuracy"}),
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


def task_template() -> DictConfig:
    """The shipped task skeleton (:data:`CSV_TASK_TEMPLATE`) a cohort of one's own runs with."""
    return OmegaConf.load(CONF_ROOT.joinpath(*TASK_DIR_PARTS) / f"{CSV_TASK_TEMPLATE}.yaml")


def cohort_task_config(
    cohort: str | os.PathLike,
    label: str | None = None,
    kind: str | None = None,
    task: DictConfig | None = None,
) -> DictConfig:
    """The task config of ``cohort`` (and ``label``): a task skeleton whose trainer gets the
    criterion and metrics of the cohort's target ``kind`` (detected from the labels when
    None: :func:`task_type`).

    ``task``: a composed task config whose ``data.train`` already names the cohort (the
    ``cv`` command's, after ``task=<cohort.csv>`` became the template plus
    ``task.data.train.cohort``); it is completed in place and returned, so that the rest of
    the user's configuration is kept. None: a copy of the template with ``data.train`` set to
    a ``SlideClassificationDataset`` of ``cohort`` (``label`` only when given).
    """
    kind = kind or task_type(str(cohort), label)
    if kind not in TASK_HEADS:
        raise ValueError(f"{cohort}: unknown task kind {kind!r}; expected one of "
                         f"{', '.join(TASK_HEADS)}")
    if task is None:
        task = task_template()
        train: dict[str, Any] = {
            "_target_": "rl_benchmarks.datasets.SlideClassificationDataset",
            "cohort": str(cohort),
            "n_tiles": "${..n_tiles}",
        }
        if label is not None:
            train["label"] = label
        task.data.train = train
    criterion, metrics = TASK_HEADS[kind]
    trainer = task.validation_scheme.trainer_cfg
    with open_dict(trainer):
        trainer.criterion = {"_target_": f"rl_benchmarks.losses.{criterion}"}
        trainer.metrics = {
            name: {"_target_": f"rl_benchmarks.metrics.{fn}", "_partial_": True}
            for name, fn in metrics.items()
        }
    return task


def build_task_config(
    cohort: str | os.PathLike,
    label: str | None = None,
    kind: str | None = None,
    n_tiles: int = 1000,
    feature_extractor: str = "iBOTViTBasePANCAN",
) -> DictConfig:
    """The reference task skeleton for ``cohort`` (and ``label``): the validation scheme
    and trainer of the shipped tasks, with the criterion and metrics of ``kind`` (detected
    from the labels when None), ``n_tiles`` tiles per slide and the features of
    ``feature_extractor``."""
    cfg = cohort_task_config(cohort, label, kind)
    cfg.data.n_tiles = n_tiles
    cfg.data.feature_extractor = feature_extractor
    return cfg
