"""``rlbench results``: one CSV row per completed cross-validation experiment (docs/protocol.md#results-table),
plus the hyper-parameters selected in each outer fold. Honours ``logs_root_dir``.

The rows are built by :func:`rl_benchmarks.val_schemes.results.collect_results` (columns
and their meaning there); this module holds the command only: the logs root, the output
file, the printed table and the exit codes."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from rl_benchmarks.utils.io import write_csv
from rl_benchmarks.val_schemes.experiment import CV_SUBDIR, UnsafePickleError, logs_root
from rl_benchmarks.val_schemes.results import collect_results


def main(cfg: DictConfig) -> int:
    """Entry point of ``rlbench results``."""
    try:
        root = logs_root(cfg.get("logs_root_dir"))
    except ValueError as err:
        print(f"rlbench results: error: {err}", file=sys.stderr)
        return 2
    if not (root / CV_SUBDIR).is_dir():
        print(f"rlbench results: error: {root / CV_SUBDIR} does not exist "
              "(no cross-validation run there)", file=sys.stderr)
        return 2
    try:
        frame = collect_results(root)
    except UnsafePickleError as err:
        print(f"rlbench results: error: {err}", file=sys.stderr)
        return 2
    out = Path(cfg.get("output") or root / CV_SUBDIR / "nested_cross_validation_results.csv")
    write_csv(out, frame, index=False)
    print(f"rlbench results: {len(frame)} completed experiment(s) -> {out}")
    if len(frame):
        show = ["model", "features", "n_tiles", "cohort", "label", "mean_auc", "std_auc",
                "mean_cindex", "std_cindex", "selected_learning_rate", "selected_num_epochs"]
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(frame[show].to_string(index=False))
    return 0
