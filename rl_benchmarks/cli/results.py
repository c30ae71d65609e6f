"""``rlbench results``: the results CSV (one row per completed cross-validation experiment,
docs/protocol.md#results-table) and the benchmark table (rows: tasks; columns: model ·
extractor; cells: mean ± sd over outer folds, docs/results.md), its figure, the missing and
incomplete experiments, and with ``compare=a,b`` a paired comparison. Honours
``logs_root_dir``.

The rows are built by :func:`rl_benchmarks.val_schemes.results.collect_results` and the
benchmark by :func:`rl_benchmarks.reports.benchmark_table.write_benchmark`; this module holds
the command only: the keys, the printed summary and the exit codes (0 ok, also with missing
or incomplete experiments, which are listed; 2 bad input)."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rl_benchmarks.metrics.paired import INTERVALS
from rl_benchmarks.reports.benchmark_table import write_benchmark
from rl_benchmarks.utils.io import write_csv
from rl_benchmarks.utils.overrides import hydra_quote
from rl_benchmarks.val_schemes.experiment import CV_SUBDIR, UnsafePickleError, logs_root
from rl_benchmarks.val_schemes.predictions import PredictionsError
from rl_benchmarks.val_schemes.results import collect_results

_SHOWN = 10  # missing/incomplete experiments printed before "... and N more"


def preprocess_overrides(overrides: list[str]) -> list[str]:
    """``compare=a,b`` as one value (Hydra would read the comma as a sweep)."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.lstrip("+") == "compare" and "," in value and value[:1] not in "[\"'":
            names = [v.strip() for v in value.split(",")]
            item = f"{key}=[{','.join(hydra_quote(n) for n in names)}]"
        out.append(item)
    return out


def _compare_names(value: object) -> list[str] | None:
    if value is None:
        return None
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        names = [str(v) for v in value]
    else:
        names = str(value).split(",")
    names = [n.strip() for n in names]
    if len(names) != 2 or not all(names):
        raise ValueError(f"compare takes two names, compare=<a>,<b>; got {value!r}")
    return names


def _listing(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    shown = [f"    {i}" for i in items[:_SHOWN]]
    more = [f"    ... and {len(items) - _SHOWN} more (see the .md file)"] if len(items) > _SHOWN else []
    return [f"  {title} ({len(items)}):", *shown, *more]


def main(cfg: DictConfig) -> int:
    """Entry point of ``rlbench results``."""
    try:
        root = logs_root(cfg.get("logs_root_dir"))
        names = _compare_names(cfg.get("compare"))
        if str(cfg.get("interval")) not in INTERVALS:
            raise ValueError(f"interval must be one of {', '.join(INTERVALS)}, got {cfg.get('interval')!r}")
    except ValueError as err:
        print(f"rlbench results: error: {err}", file=sys.stderr)
        return 2
    if not (root / CV_SUBDIR).is_dir():
        print(f"rlbench results: error: {root / CV_SUBDIR} does not exist "
              "(no cross-validation run there)", file=sys.stderr)
        return 2
    try:
        frame = collect_results(root)
        bench = write_benchmark(root, out_dir=cfg.get("out_dir"), compare_names=names,
                                interval=str(cfg.get("interval")), figure=bool(cfg.get("figure", True)))
    except (UnsafePickleError, PredictionsError, ValueError, FileNotFoundError) as err:
        print(f"rlbench results: error: {err}", file=sys.stderr)
        return 2
    out = Path(cfg.get("output") or root / CV_SUBDIR / "nested_cross_validation_results.csv")
    write_csv(out, frame, index=False)
    lines = [f"rlbench results: {len(frame)} completed experiment(s) -> {out}",
             f"  benchmark table: {bench.n_filled} filled cell(s), {len(bench.table)} task(s) -> "
             f"{bench.files['table_md'].parent}"]
    lines += _listing("missing", bench.missing)
    lines += _listing("incomplete", [f"{n}: {why}" for n, why in bench.incomplete])
    print("\n".join(lines))
    if len(bench.table):
        print(bench.table.to_string(index=False))
    if bench.comparison is not None:
        c = bench.comparison
        print(f"\npaired comparison ({c.interval} {c.confidence:.0%} interval; "
              f"'not significant' when it includes 0):")
        print(c.rows.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(c.summary_line())
    return 0
