"""``rlbench cv task=<task> model=<model> ...``: nested cross-validation of a MIL model.

Reference §7.6 bookkeeping: the run folder ``<logs_root_dir>/cross_validation/<name>/``
(``name`` = hash of the configuration) holds ``status.pkl``, ``params.pkl``,
``train_metrics.pkl``, ``test_metrics.pkl`` and ``<name>.log``; a completed experiment is
skipped. Added: ``selected_params.json`` (the hyper-parameters chosen in each outer fold),
``predictions/<fold>.csv`` (slide id, patient id, label or time/event, scores),
``models/<fold>.pt`` (state dicts, for heatmaps) and ``summary.json``.

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
import pandas as pd
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from rl_benchmarks.paths import logs_dir
from rl_benchmarks.utils.cross_validation import params2experiment_name, resume_training
from rl_benchmarks.utils.io import atomic_open, save_pickle, write_csv, write_json

logger = logging.getLogger("rl_benchmarks.cv")

CSV_TASK_TEMPLATE = "tcga_crc_msi_prediction"
_CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
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


def _is_csv(value: Any) -> bool:
    return isinstance(value, str) and value.lower().endswith(_CSV_SUFFIXES)


def preprocess_overrides(overrides: list[str]) -> list[str]:
    """Turn ``task=<cohort.csv>`` into the task skeleton plus ``task.data.train.cohort``
    (Hydra cannot take a file path as a config-group option)."""
    out: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key in ("task", "+task") and _is_csv(value):
            path = str(Path(value).expanduser().resolve())
            out += [f"task={CSV_TASK_TEMPLATE}", f"task.data.train.cohort={path}",
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


def features_root(cfg: DictConfig) -> str | None:
    """Reference cohorts: ``<features_root_dir or data_dir/preprocessed>/slides_classification/
    features/<extractor>``; CSV cohorts: ``features_root_dir`` as given."""
    if _is_csv(cfg.task.data.train.get("cohort")):
        return cfg.get("features_root_dir")
    extractor = cfg.task.data.get("feature_extractor", "iBOTViTBasePANCAN")
    if cfg.get("features_root_dir"):
        root = Path(cfg.features_root_dir)
    else:
        from rl_benchmarks.constants import preprocessed_dir

        root = Path(preprocessed_dir(cfg.get("data_dir")))
    return str(root / "slides_classification" / "features" / str(extractor))


def _attach_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("rl_benchmarks")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def build_dataset(cfg: DictConfig, data_cfg: DictConfig | None = None) -> Any:
    """Instantiate ``task.data.train`` (or ``data_cfg``) with the features root (n_tiles
    reaches the dataset through the task's interpolation)."""
    kwargs: dict[str, Any] = {"features_root_dir": features_root(cfg)}
    if cfg.get("data_dir"):
        kwargs["data_dir"] = cfg.data_dir
    data_cfg = cfg.task.data.train if data_cfg is None else data_cfg
    return instantiate(data_cfg, **kwargs)


def predictions_frame(dataset: Any, indices: np.ndarray, labels: np.ndarray,
                      logits: np.ndarray, fold: str) -> pd.DataFrame:
    """One row per slide: fold, slide_id, patient_id, the target, the score(s)."""
    frame = pd.DataFrame({
        "fold": fold,
        "slide_id": np.asarray(getattr(dataset, "slide_id", np.arange(len(dataset))))[indices],
        "patient_id": np.asarray(dataset.patient_id)[indices],
    })
    y = np.asarray(labels, dtype=float).reshape(len(indices), -1)[:, 0]
    if getattr(dataset, "task", None) == "survival":
        frame["time"], frame["event"] = np.abs(y), (y > 0).astype(int)
    else:
        frame["label"] = y.astype(int) if np.all(np.isfinite(y)) else y
    logits = np.asarray(logits, dtype=float).reshape(len(indices), -1)
    if logits.shape[1] == 1:
        frame["score"] = logits[:, 0]
    else:
        for k in range(logits.shape[1]):
            frame[f"score_{k}"] = logits[:, k]
    return frame


def _summarise(metrics: dict[str, dict[str, list]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, folds in metrics.items():
        last = np.array([v[-1] if len(v) else np.nan for v in folds.values()], dtype=float)
        out[name] = {"mean": float(np.nanmean(last)) if np.isfinite(last).any() else float("nan"),
                     "std": float(np.nanstd(last)) if np.isfinite(last).any() else float("nan"),
                     "folds": last.tolist()}
    return out


def run(cfg: DictConfig) -> Path:
    """Run (or skip) one experiment; returns its folder."""
    cfg = prepare_config(cfg)
    name = params2experiment_name(cfg)
    folder = logs_dir(cfg.get("logs_root_dir")) / "cross_validation" / name
    if resume_training(folder):
        print(f"rlbench cv: already completed, skipped: {folder}")
        return folder
    start = time.time()
    handler = _attach_log(folder / f"{name}.log")
    try:
        save_pickle(folder / "params.pkl", cfg)
        logger.info("experiment %s\n%s", name, OmegaConf.to_yaml(cfg))
        dataset = build_dataset(cfg)
        if hasattr(dataset, "summary"):
            logger.info("%s", dataset.summary())
        ncv = instantiate(cfg.task.validation_scheme, _recursive_=False,
                          seed=int(cfg.get("seed", 0)), fast=bool(cfg.get("fast", True)),
                          precision=str(cfg.get("precision", "fp32")))
        train_metrics, test_metrics = ncv.run(dataset)
        save_pickle(folder / "train_metrics.pkl", train_metrics)
        save_pickle(folder / "test_metrics.pkl", test_metrics)
        write_json(folder / "selected_params.json", ncv.selected_params)
        frames = []
        for key, pred in ncv.predictions.items():
            frame = predictions_frame(dataset, pred["indices"], pred["labels"], pred["logits"], key)
            write_csv(folder / "predictions" / f"{key}.csv", frame, index=False)
            frames.append(frame)
        if cfg.get("save_models", True):
            for key, state in ncv.fold_state_dicts.items():
                with atomic_open(folder / "models" / f"{key}.pt", "wb") as f:
                    torch.save(state, f)
        summary = {
            "experiment": name,
            "test": _summarise(test_metrics),
            "selected_params": ncv.selected_params,
            "fast_path": ncv.used_fast_path,
            "wall_time_s": round(time.time() - start, 1),
        }
        if cfg.get("test_cohort"):
            from rl_benchmarks.val_schemes.train_test import evaluate_test_cohort

            summary["test_cohort"] = evaluate_test_cohort(cfg, ncv, folder)
        write_json(folder / "summary.json", summary)
        save_pickle(folder / "status.pkl", {"completed": True})
        _print_summary(folder, summary)
        return folder
    finally:
        logging.getLogger("rl_benchmarks").removeHandler(handler)
        handler.close()


def _print_summary(folder: Path, summary: dict[str, Any]) -> None:
    lines = [f"rlbench cv: done in {summary['wall_time_s']:.0f} s -> {folder}"]
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
    except (ValueError, FileNotFoundError, MemoryError, KeyError, InstantiationException) as err:
        print(f"rlbench cv: error: {user_message(err)}", file=sys.stderr)
        return 1
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
