"""``rlbench linear-eval``: linear probe (and kNN probe) of tile features.

Reference datasets (docs/protocol.md, "Linear evaluation"):

* ``tile_dataset=nct_crc``: train NCT-CRC-HE-100K-NONORM, evaluate CRC-VAL-HE-7K; BACK
  (label 1) is removed from both and the labels above it shift down (8 classes).
* ``tile_dataset=camelyon17_wilds``: train hospitals {0, 3, 4}; evaluate the validation
  hospital 1 (the reference's CSV) **and** the test hospital 2 (``..._test.csv``).

Features come from ``<features_root_dir or data_dir/preprocessed>/tiles_classification/
features/<feature_extractor>/<NAME>_FULL/{tile_features.npy, tile_ids.npy}``, matched to
the tiles by ``image_id``.

One's own tiles: ``tile_dataset=custom`` with ``custom.features_dir`` and either
``custom.labels_csv`` (id, label and split columns) or ``custom.image_folder`` (a tree
``<root>/<split>/<class>/<image>`` whose features were extracted over ``<root>``).

Output: ``<logs_root_dir or logs_save_dir>/linear_evaluation/<tile_dataset>_<extractor>.csv``
(first evaluation set), ``..._<eval set>.csv`` for the others, and a run record
``<tile_dataset>_<extractor>/run.json``. CSVs are rewritten after every portion.

This module only reads the config, calls :func:`rl_benchmarks.evaluation.linear_eval_run.run`
and prints; the datasets live in :mod:`rl_benchmarks.datasets.tiles_classification.
probe_data`, the probe in :mod:`rl_benchmarks.evaluation.linear_probe`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from rl_benchmarks.cli.console import quiet_logging
from rl_benchmarks.datasets.tiles_classification.probe_data import ProbeData
from rl_benchmarks.evaluation.linear_eval_run import run as run_stage
from rl_benchmarks.evaluation.linear_probe import LinearProbeConfig, effective_workers

PROG = "rlbench linear-eval"


def _print_start(data: ProbeData, config: LinearProbeConfig) -> None:
    """One line: dataset, sizes, feature folder, portions x seeds and workers."""
    print(f"{PROG}: {data.name}, {len(data.class_names)} classes, {len(data.train[1])} "
          "training tiles, "
          + ", ".join(f"{k} {len(v[1])}" for k, v in data.evals.items())
          + f" evaluation tiles; features {data.features_dir} (D={data.train[0].shape[1]}); "
          f"{len(config.portions)} portion(s) x {config.n_ensembling} seeds on "
          f"{effective_workers(config.num_workers, config.n_ensembling)} worker(s)")


def _print_summary(tables: dict[str, pd.DataFrame], csvs: dict[str, Path], elapsed: float) -> None:
    cols = ["portion", "n_train", "auc", "acc", "f1", "bacc", "knn_acc", "knn_bacc"]
    for name, table in tables.items():
        print(f"{PROG}: {name} -> {csvs[name]}")
        print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"{PROG}: done in {elapsed:.1f} s")


def run_linear_evaluation(cfg: DictConfig) -> dict[str, Path]:
    """Run the probe described by ``cfg`` and print its summary; returns the CSV written per
    evaluation set. The full config is in the run record (``run.json``); ``verbose=true``
    prints it too."""
    if cfg.get("verbose", False):
        from omegaconf import OmegaConf

        print(f"--- config ---\n{OmegaConf.to_yaml(cfg).rstrip()}\n---")
    result = run_stage(cfg, on_start=_print_start)
    _print_summary(result.tables, result.csvs, result.seconds)
    return result.csvs


def main(cfg: DictConfig) -> int:
    """``rlbench linear-eval key=value ...``; user errors print one line and exit 2."""
    quiet_logging(bool(cfg.get("verbose", False)))
    try:
        run_linear_evaluation(cfg)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("linear-eval", sys.argv[1:]))
