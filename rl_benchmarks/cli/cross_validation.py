"""``rlbench cv task=<task> model=<model> ...``: nested cross-validation of a MIL model.

Reference docs/protocol.md#run-folder bookkeeping, without pickles: the run folder
``<logs_root_dir>/cross_validation/<name>/`` holds ``status.json``, ``params.json`` (the
resolved configuration and the run's identity), ``train_metrics.json``,
``test_metrics.json`` and ``<name>.log``; a completed experiment is skipped. Added:
``selected_params.json`` (the hyper-parameters chosen in each outer fold),
``predictions/<fold>.csv`` (slide id, patient id, label or time/event, scores),
``models/<fold>.pt`` (state dicts, for heatmaps) and ``summary.json``. The folder's layout,
writers and readers live in :mod:`rl_benchmarks.val_schemes.experiment`; the run itself in
:func:`rl_benchmarks.val_schemes.run_experiment.run_experiment`.

``name`` hashes the configuration and the identity of the features (extraction records) and
of the cohort (its CSV or label files): other features or labels make another experiment.
A lock file (``.lock``) makes a second concurrent run of the same experiment exit with a
message naming the holder. A run whose outer-fold test metrics are not finite is not marked
completed and exits non-zero.

``task=`` also takes a cohort CSV (``task=/path/cohort.csv``): the task skeleton of the
reference is used with that cohort, and the loss and metrics follow the CSV's target
(binary, multi-class or survival; :func:`rl_benchmarks.datasets.tasks.cohort_task_config`).

This module holds the command only: the ``task=<csv>`` override rewriting, the console
(one header line, the progress bar of the runs, a short summary; ``verbose=true`` adds the
log records and the full config, which is always written as ``config.yaml`` in the run
folder) and the exit codes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

from rl_benchmarks.cli.console import header, quiet_logging, save_config
from rl_benchmarks.cli.validation import hydra_quote
from rl_benchmarks.datasets.tasks import CSV_TASK_TEMPLATE
from rl_benchmarks.val_schemes.experiment import (
    ExperimentLockedError,
    NonFiniteMetricsError,
    is_csv,
)
from rl_benchmarks.val_schemes.run_experiment import (
    ExperimentResult,
    prepare_config,
    run_experiment,
)

__all__ = ["CSV_TASK_TEMPLATE", "main", "prepare_config", "preprocess_overrides", "run",
           "run_and_print", "user_message"]


def preprocess_overrides(overrides: list[str]) -> list[str]:
    """Turn ``task=<cohort.csv>`` into the task skeleton plus ``task.data.train.cohort``
    (Hydra cannot take a file path as a config-group option)."""
    out: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]  # a quoted path (Hydra quoting), e.g. task='/my data/c.csv'
        if sep and key in ("task", "+task") and is_csv(value):
            path = str(Path(value).expanduser().resolve())
            out += [f"task={CSV_TASK_TEMPLATE}", f"task.data.train.cohort={hydra_quote(path)}",
                    "task.data.train.label=null"]
        else:
            out.append(item)
    return out


def _without_console_keys(cfg: DictConfig) -> tuple[DictConfig, bool]:
    """(``cfg`` without ``verbose``, verbose): a console setting is not part of the run (it
    neither enters the experiment's name nor its params.json)."""
    verbose = bool(cfg.get("verbose", False))
    if "verbose" not in cfg:
        return cfg, verbose
    out = cfg.copy()
    with open_dict(out):
        out.pop("verbose")
    return out, verbose


def _header(cfg: DictConfig) -> None:
    """``rlbench cv: <task> · <model> (<outer> x <inner> folds) -> <logs root>/cross_validation``."""
    from rl_benchmarks.val_schemes.experiment import logs_root, task_name

    try:
        params = OmegaConf.to_container(cfg, resolve=False)
        task = task_name(params)
    except Exception:  # noqa: BLE001 - a header never stops the run
        task = "task"
    model = str(OmegaConf.select(cfg, "model._target_", default="") or "").rsplit(".", 1)[-1]
    vs = OmegaConf.select(cfg, "task.validation_scheme", default=None)
    folds = ""
    if vs is not None and "n_splits_outer" in vs:
        folds = f" ({vs.get('n_splits_outer')} x {vs.get('n_splits_inner')} nested folds)"
    try:
        where = logs_root(cfg.get("logs_root_dir")) / "cross_validation"
    except Exception:  # noqa: BLE001 - run_experiment reports a bad logs root itself
        where = None
    header("cv", " · ".join(p for p in (task, model) if p) + folds, where)


def run_and_print(cfg: DictConfig) -> ExperimentResult:
    """Run (or skip) the experiment and print what happened: a header line, the progress
    bar, a short summary; the full config goes to ``<run folder>/config.yaml``."""
    cfg, verbose = _without_console_keys(cfg)
    quiet_logging(verbose)
    _header(cfg)
    result = run_experiment(cfg)
    if result.skipped:
        print(f"rlbench cv: already completed, skipped: {result.folder}")
    else:
        save_config(cfg, result.folder, verbose)
        _print_summary(result.folder, result.summary, verbose)
    return result


def run(cfg: DictConfig) -> Path:
    """Run (or skip) one experiment, printing its summary; returns its folder."""
    return run_and_print(cfg).folder


def _print_summary(folder: Path, summary: dict[str, Any], verbose: bool = False) -> None:
    """Three lines: where, the features, the test metrics (mean ± std over the outer folds,
    last epoch); the hyper-parameters selected per fold with ``verbose`` (they are in
    ``selected_params.json``)."""
    metrics = [(name, s) for name, s in summary["test"].items() if name != "loss"]
    n_folds = max((len(s["folds"]) for _, s in metrics), default=0)
    lines = [f"rlbench cv: done in {summary['wall_time_s']:.0f} s -> {folder}",
             f"  features: {summary.get('extractor') or 'unknown extractor (no record)'}",
             "  test " + ", ".join(f"{name}: {s['mean']:.4f} ± {s['std']:.4f}" for name, s in metrics)
             + f" (last epoch, {n_folds} outer folds)"]
    if verbose:
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
        run_and_print(cfg)
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
