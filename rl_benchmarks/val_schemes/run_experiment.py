"""One nested cross-validation experiment, run or skipped: what ``rlbench cv`` does.

:func:`run_experiment` takes the composed ``cv`` configuration and

1. prepares it (:func:`prepare_config`: the ``model`` group placed in the trainer config,
   ``device`` applied, the loss and metrics of a CSV cohort set from its target);
2. builds the dataset and the run's identity (features and cohort), which with the
   configuration names the experiment folder (:mod:`rl_benchmarks.val_schemes.experiment`);
3. under the folder's lock, skips a completed run, else trains the nested CV and writes the
   metrics, selected hyper-parameters, predictions, fold models, the held-out test cohort's
   evaluation (``test_cohort``) and ``summary.json``, with a log file beside them.

It returns an :class:`ExperimentResult`; printing and exit codes belong to the command.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rl_benchmarks.datasets.tasks import cohort_task_config
from rl_benchmarks.utils.cross_validation import params2experiment_name, resume_training
from rl_benchmarks.val_schemes.experiment import (
    ExperimentFolder,
    build_dataset,
    check_finite_test_metrics,
    experiment_folder,
    experiment_identity,
    identity_digests,
    is_csv,
    logs_root,
    predictions_frame,
    run_extractor,
    summarise_metrics,
)

logger = logging.getLogger("rl_benchmarks.cv")


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` did: the experiment ``folder``, whether it was
    ``skipped`` (already completed), and its ``summary`` (``summary.json``'s content; {}
    for a skipped reference run, which has none)."""

    folder: Path
    skipped: bool
    summary: dict[str, Any] = field(default_factory=dict)


def prepare_config(cfg: DictConfig) -> DictConfig:
    """The run configuration (a copy): the ``model`` group placed in the trainer config,
    ``feature_extractor`` (short for ``task.data.feature_extractor``) and ``device``
    applied, and the loss/metrics of a CSV cohort set from its target
    (:func:`rl_benchmarks.datasets.tasks.cohort_task_config`)."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(cfg, False)
    if "task" not in cfg or "validation_scheme" not in cfg.task:
        raise ValueError("the config has no task.validation_scheme: pass task=<task name or CSV>")
    trainer_cfg = cfg.task.validation_scheme.trainer_cfg
    extractor = cfg.pop("feature_extractor", None)  # an alias: the run is named without it
    if extractor is not None:
        cfg.task.data.feature_extractor = extractor
    if cfg.get("model") is not None:
        trainer_cfg.model = cfg.model
    if cfg.get("device") is not None:
        trainer_cfg.device = cfg.device
    cohort = cfg.task.data.train.get("cohort")
    if is_csv(cohort):
        cohort_task_config(cohort, cfg.task.data.train.get("label"), task=cfg.task)
    return cfg


def run_experiment(cfg: DictConfig) -> ExperimentResult:
    """Run (or skip, when completed) the experiment of the composed ``cv`` config ``cfg``.

    Raises ValueError/FileNotFoundError/KeyError on bad input (before any training),
    :class:`~rl_benchmarks.val_schemes.experiment.ExperimentLockedError` when another run
    of the same experiment holds its lock, and
    :class:`~rl_benchmarks.val_schemes.experiment.NonFiniteMetricsError` when an outer
    fold's test metric is not finite (the run is then not marked completed).
    """
    cfg = prepare_config(cfg)
    root = logs_root(cfg.get("logs_root_dir"))
    dataset = build_dataset(cfg)
    identity = experiment_identity(cfg, dataset)
    if cfg.get("test_cohort"):  # checked before training; its features enter the name too
        from rl_benchmarks.val_schemes.train_test import heldout_features_identity

        identity["test_features"] = heldout_features_identity(cfg, identity["features"])
    name = params2experiment_name(cfg, identity_digests(identity))
    exp = experiment_folder(root, name)
    with exp.lock():
        if resume_training(exp.path):
            return ExperimentResult(exp.path, skipped=True, summary=_existing_summary(exp))
        summary = _run_locked(cfg, exp, dataset, identity)
    return ExperimentResult(exp.path, skipped=False, summary=summary)


def _existing_summary(exp: ExperimentFolder) -> dict[str, Any]:
    """A completed run's ``summary.json`` ({} when absent or unreadable: the skip stands)."""
    try:
        return exp.read_summary()
    except (OSError, ValueError) as err:
        logger.warning("%s: the summary of the completed run is unreadable (%s)", exp.path, err)
        return {}


def _attach_log(path: Path) -> logging.Handler:
    """Send the package's log records to the experiment's log file too."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("rl_benchmarks")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def _run_locked(cfg: DictConfig, exp: ExperimentFolder, dataset: Any,
                identity: dict[str, Any]) -> dict[str, Any]:
    """Train and write the experiment (the caller holds its lock and emptied its folder);
    returns the summary written to ``summary.json``."""
    start = time.time()
    handler = _attach_log(exp.path / f"{exp.name}.log")
    try:
        exp.write_params(OmegaConf.to_container(cfg, resolve=True), identity)
        logger.info("experiment %s\n%s", exp.name, OmegaConf.to_yaml(cfg))
        if hasattr(dataset, "summary"):
            logger.info("%s", dataset.summary())
        ncv = instantiate(cfg.task.validation_scheme, _recursive_=False,
                          seed=int(cfg.get("seed", 0)), fast=bool(cfg.get("fast", True)),
                          precision=str(cfg.get("precision", "fp32")))
        train_metrics, test_metrics = ncv.run(dataset)
        exp.write_metrics("train", train_metrics)
        exp.write_metrics("test", test_metrics)
        exp.write_selected_params(ncv.selected_params)
        for key, pred in ncv.predictions.items():
            exp.write_predictions(key, predictions_frame(dataset, pred["indices"],
                                                         pred["labels"], pred["logits"], key))
        if cfg.get("save_models", True):
            for key, state in ncv.fold_state_dicts.items():
                exp.save_fold_model(key, state)
        summary = {
            "experiment": exp.name,
            "test": summarise_metrics(test_metrics),
            "selected_params": ncv.selected_params,
            "fast_path": ncv.used_fast_path,
            "extractor": run_extractor(cfg, identity),
            "identity": identity,
            "wall_time_s": round(time.time() - start, 1),
        }
        check_finite_test_metrics(test_metrics)  # before anything says "completed"
        if cfg.get("test_cohort"):
            from rl_benchmarks.val_schemes.train_test import evaluate_test_cohort

            summary["test_cohort"] = evaluate_test_cohort(cfg, ncv, exp.path)
        exp.write_summary(summary)
        exp.write_status(True)
        return summary
    finally:
        logging.getLogger("rl_benchmarks").removeHandler(handler)
        handler.close()


__all__ = ["ExperimentResult", "prepare_config", "run_experiment"]
