"""The ``linear-eval`` stage: from its config to the CSVs of the linear (and kNN) probe.

:func:`run` loads the dataset the config names (:mod:`rl_benchmarks.datasets.
tiles_classification.probe_data`), runs :func:`rl_benchmarks.evaluation.linear_probe.
linear_probe` and writes, under ``<logs_root_dir or logs_save_dir>/linear_evaluation/``:

* ``<name>_<extractor>.csv`` for the first evaluation set (the reference's file) and
  ``<name>_<extractor>_<eval set>.csv`` for the others, rewritten after every portion so a
  killed run keeps the finished ones;
* a run record ``<name>_<extractor>/run.json`` (config, sources, sizes, versions,
  ``completed`` and the run time).

It prints nothing: the command (``rlbench linear-eval``) prints the header and summary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rl_benchmarks import paths
from rl_benchmarks.datasets.tiles_classification.probe_data import ProbeData, load_probe_data
from rl_benchmarks.evaluation.linear_probe import LinearProbeConfig, linear_probe
from rl_benchmarks.utils import io
from rl_benchmarks.utils.safe_names import safe_name


@dataclass
class LinearEvalResult:
    """What one ``linear-eval`` run produced."""

    data: ProbeData  # the dataset (names, sizes, feature folder)
    config: LinearProbeConfig
    tables: dict[str, pd.DataFrame]  # evaluation set -> one row per portion
    csvs: dict[str, Path]  # evaluation set -> the CSV holding its table
    record_path: Path  # run.json
    seconds: float  # wall time of the probe (data loading excluded)


def probe_config(cfg: DictConfig) -> LinearProbeConfig:
    """The :class:`LinearProbeConfig` of a ``linear-eval`` config (validated)."""
    portions = cfg.portions
    if not OmegaConf.is_list(portions) and not isinstance(portions, (list, tuple)):
        portions = [portions]
    config = LinearProbeConfig(
        portions=[float(p) for p in portions],
        n_ensembling=int(cfg.n_ensembling),
        n_resamples=int(cfg.n_resamples),
        confidence_level=float(cfg.confidence_level),
        seed=int(cfg.seed),
        num_workers=int(cfg.num_workers),
        stratified_portions=bool(cfg.stratified_portions),
        knn_k=int(cfg.knn_k or 0),
        bootstrap_method=str(cfg.bootstrap_method),
        bootstrap_interval=str(cfg.get("bootstrap_interval", None) or "basic"),
    )
    config.validate()
    return config


def output_paths(out_dir: Path, stem: str, eval_names: Sequence[str]) -> dict[str, Path]:
    """First evaluation set -> ``<stem>.csv`` (the reference's file), others
    ``<stem>_<name>.csv``."""
    return {name: out_dir / (f"{stem}.csv" if i == 0 else f"{stem}_{name}.csv")
            for i, name in enumerate(eval_names)}


def run(
    cfg: DictConfig,
    on_start: Callable[[ProbeData, LinearProbeConfig], None] | None = None,
) -> LinearEvalResult:
    """Run the probe described by the ``linear-eval`` config ``cfg``.

    ``on_start`` is called once the data is loaded, before the (long) probe starts. Bad
    input raises ``ValueError``, ``FileNotFoundError`` or ``KeyError`` with a one-line
    message naming the file or key.
    """
    from rl_benchmarks.utils.seed import set_seed

    config = probe_config(cfg)
    data = load_probe_data(cfg)
    out_dir = paths.logs_dir(cfg.logs_root_dir or None) / "linear_evaluation"
    stem = f"{data.name}_{safe_name(str(cfg.feature_extractor))}"
    csvs = output_paths(out_dir, stem, list(data.evals))
    set_seed(config.seed)
    if on_start is not None:
        on_start(data, config)
    record = {
        "command": "linear-eval",
        "config": OmegaConf.to_container(cfg, resolve=True),
        "features_dir": str(data.features_dir),
        "class_names": data.class_names,
        "n_train": len(data.train[1]),
        "n_eval": {k: len(v[1]) for k, v in data.evals.items()},
        "sources": data.notes,
        "outputs": {k: str(v) for k, v in csvs.items()},
        "versions": versions(),
    }
    record_path = out_dir / stem / "run.json"
    io.write_json(record_path, {**record, "completed": False})

    def write(tables: dict[str, pd.DataFrame]) -> None:
        for name, table in tables.items():
            io.write_csv(csvs[name], table, index=False)

    t0 = time.perf_counter()
    tables = linear_probe(data.train, data.evals, data.class_names, config,
                          on_portion=write, progress=bool(cfg.get("progress", True)))
    write(tables)
    elapsed = time.perf_counter() - t0
    io.write_json(record_path, {**record, "completed": True, "seconds": round(elapsed, 2)})
    return LinearEvalResult(data=data, config=config, tables=tables, csvs=csvs,
                            record_path=record_path, seconds=elapsed)


def versions() -> dict[str, str]:
    """Versions recorded in ``run.json``: the package, scikit-learn, numpy, Python."""
    import sklearn

    import rl_benchmarks

    return {"rl_benchmarks": getattr(rl_benchmarks, "__version__", "unknown"),
            "scikit-learn": sklearn.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0]}
