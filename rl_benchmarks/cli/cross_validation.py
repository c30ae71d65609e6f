"""``rlbench cv task=<task> model=<model> ...``: nested cross-validation of a MIL model.

Reference §7.6 bookkeeping, without pickles: the run folder
``<logs_root_dir>/cross_validation/<name>/`` holds ``status.json``, ``params.json`` (the
resolved configuration and the run's identity), ``train_metrics.json``,
``test_metrics.json`` and ``<name>.log``; a completed experiment is skipped. Added:
``selected_params.json`` (the hyper-parameters chosen in each outer fold),
``predictions/<fold>.csv`` (slide id, patient id, label or time/event, scores),
``models/<fold>.pt`` (state dicts, for heatmaps) and ``summary.json``. The folder's layout,
writers and readers live in :mod:`rl_benchmarks.val_schemes.experiment`.

``name`` hashes the configuration and the identity of the features (extraction records) and
of the cohort (its CSV or label files): other features or labels make another experiment.
A lock file (``.lock``) makes a second concurrent run of the same experiment exit with a
message naming the holder. A run whose outer-fold test metrics are not finite is not marked
completed and exits non-zero.

``task=`` also takes a cohort CSV (``task=/path/cohort.csv``): the task skeleton of the
reference is used with that cohort, and the loss and metrics follow the CSV's target
(binary, multi-class or survival).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from rl_benchmarks.cli.validation import hydra_quote
from rl_benchmarks.utils.cross_validation import params2experiment_name, resume_training
from rl_benchmarks.val_schemes.experiment import (
    ExperimentFolder,
    ExperimentLockedError,
    NonFiniteMetricsError,
    build_dataset,
    check_finite_test_metrics,
    experiment_folder,
    experiment_identity,
    features_root,
    identity_digests,
    is_csv,
    last_epoch_values,
    logs_root,
    predictions_frame,
    run_extractor,
)

logger = logging.getLogger("rl_benchmarks.cv")

CSV_TASK_TEMPLATE = "tcga_crc_msi_prediction"
_TASK_HEADS = {
    "binary": (
        "rl_benchmarks.losses.BCEWithLogitsLoss",
        {"auc": "compute_binary_auc", "accuracy": "compute_binary_accuracy"},
    ),
    "multiclass": (
        "rl_benchmarks.losses.CrossEntropyLoss",
        {"auc": "compute_mean_one_vs_all_auc", "accuracy": "compute_multiclass_accuracy"},
    ),
    "survival": ("rl_benchmarks.losses.CoxLoss", {"cindex": "compute_cindex"}),
}


_is_csv = is_csv
# moved to rl_benchmarks.val_schemes.experiment; importable from here as before
__all__ = ["build_dataset", "features_root", "main", "predictions_frame", "prepare_config",
           "preprocess_overrides", "run", "user_message"]


def preprocess_overrides(overrides: list[str]) -> list[str]:
    """Turn ``task=<cohort.csv>`` into the task skeleton plus ``task.data.train.cohort``
    (Hydra cannot take a file path as a config-group option)."""
    out: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]  # a quoted path (Hydra quoting), e.g. task='/my data/c.csv'
        if sep and key in ("task", "+task") and _is_csv(value):
            path = str(Path(value).expanduser().resolve())
            out += [f"task={CSV_TASK_TEMPLATE}", f"task.data.train.cohort={hydra_quote(path)}",
                    "task.data.train.label=null"]
        else:
            out.append(item)
    return out


def _set_task_head(trainer_cfg: DictConfig, task_type: str | None, source: str) -> None:
    """Loss and metrics that fit a CSV cohort's target."""
    if task_type not in _TASK_HEADS:
        raise ValueError(f"{source}: the cohort has no usable target (task type {task_type!r})")
    criterion, metrics = _TASK_HEADS[task_type]
    with open_dict(trainer_cfg):
        trainer_cfg.criterion = {"_target_": criterion}
        trainer_cfg.metrics = {
            name: {"_target_": f"rl_benchmarks.metrics.{fn}", "_partial_": True}
            for name, fn in metrics.items()
        }


def prepare_config(cfg: DictConfig) -> DictConfig:
    """The run configuration: the ``model`` group placed in the trainer config, ``device``
    applied, and the loss/metrics of a CSV cohort set from its target."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(cfg, False)
    if "task" not in cfg or "validation_scheme" not in cfg.task:
        raise ValueError("the config has no task.validation_scheme: pass task=<task name or CSV>")
    trainer_cfg = cfg.task.validation_scheme.trainer_cfg
    if cfg.get("model") is not None:
        trainer_cfg.model = cfg.model
    if cfg.get("device") is not None:
        trainer_cfg.device = cfg.device
    cohort = cfg.task.data.train.get("cohort")
    if _is_csv(cohort):
        from rl_benchmarks.datasets import load_csv_cohort

        table = load_csv_cohort(cohort, cfg.get("features_root_dir"),
                                label=cfg.task.data.train.get("label"))
        _set_task_head(trainer_cfg, table.attrs.get("task"), str(cohort))
    return cfg


def _attach_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("rl_benchmarks")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def _summarise(metrics: dict[str, dict[str, list]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, folds in metrics.items():
        last = last_epoch_values(folds)
        out[name] = {"mean": float(np.nanmean(last)) if np.isfinite(last).any() else float("nan"),
                     "std": float(np.nanstd(last)) if np.isfinite(last).any() else float("nan"),
                     "folds": last.tolist()}
    return out


def run(cfg: DictConfig) -> Path:
    """Run (or skip) one experiment; returns its folder."""
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
            print(f"rlbench cv: already completed, skipped: {exp.path}")
            return exp.path
        _run_locked(cfg, exp, dataset, identity)
    return exp.path


def _run_locked(cfg: DictConfig, exp: ExperimentFolder, dataset: Any,
                identity: dict[str, Any]) -> None:
    """Train and write the experiment (the caller holds its lock and emptied its folder)."""
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
        extractor = run_extractor(cfg, identity)
        summary = {
            "experiment": exp.name,
            "test": _summarise(test_metrics),
            "selected_params": ncv.selected_params,
            "fast_path": ncv.used_fast_path,
            "extractor": extractor,
            "identity": identity,
            "wall_time_s": round(time.time() - start, 1),
        }
        check_finite_test_metrics(test_metrics)  # before anything says "completed"
        if cfg.get("test_cohort"):
            from rl_benchmarks.val_schemes.train_test import evaluate_test_cohort

            summary["test_cohort"] = evaluate_test_cohort(cfg, ncv, exp.path)
        exp.write_summary(summary)
        exp.write_status(True)
        _print_summary(exp.path, summary)
    finally:
        logging.getLogger("rl_benchmarks").removeHandler(handler)
        handler.close()


def _print_summary(folder: Path, summary: dict[str, Any]) -> None:
    lines = [f"rlbench cv: done in {summary['wall_time_s']:.0f} s -> {folder}",
             f"  features: {summary.get('extractor') or 'unknown extractor (no record)'}"]
    for name, s in summary["test"].items():
        if name != "loss":
            lines.append(f"  test {name}: {s['mean']:.4f} ± {s['std']:.4f} (last epoch, "
                         f"{len(s['folds'])} outer folds)")
    for key, p in summary["selected_params"].items():
        lines.append(f"  {key}: lr={p.get('learning_rate')} wd={p.get('weight_decay')} "
                     f"epochs={p.get('num_epochs')}")
    if "test_cohort" in summary:
        t = summary["test_cohort"]
        lines.append(f"  test cohort {t['metric']}: {t['value']:.4f} "
                     f"[{t['ci_low']:.4f}, {t['ci_high']:.4f}] ({t['n_slides']} slides)")
    print("\n".join(lines))


def main(cfg: DictConfig) -> int:
    """Entry point of ``rlbench cv``; returns the exit code."""
    try:
        run(cfg)
    except (NonFiniteMetricsError, ExperimentLockedError) as err:  # the work failed
        print(f"rlbench cv: error: {user_message(err)}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, MemoryError, KeyError,
            InstantiationException) as err:  # bad input
        print(f"rlbench cv: error: {user_message(err)}", file=sys.stderr)
        return 2
    return 0


def user_message(err: BaseException) -> str:
    """The user-facing cause of an error (Hydra's instantiation wrapper removed)."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip()
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    return text or type(err).__name__


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import main as rlbench

    sys.exit(rlbench(["cv", *preprocess_overrides(sys.argv[1:])]))
