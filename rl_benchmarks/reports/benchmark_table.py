"""The benchmark table of many cross-validation experiments, with statistics (docs/results.md).

Why: the paper's result is a grid, tasks × MIL models × feature extractors, each cell a
nested CV. :func:`write_benchmark` reads every experiment folder under
``<root>/cross_validation`` and writes, into ``<root>/benchmark/`` by default:

* ``benchmark_table.csv`` / ``.md``: rows are tasks, columns ``model · extractor``, each
  cell ``mean ± sd (n=folds)`` of the task's metric (AUC, or c-index for survival) over
  every outer fold and repeat (population sd, as ``rlbench results``); ``missing`` where an
  expected cell has no experiment folder, ``unfinished``/``running`` where its folder has
  no completed run;
* ``benchmark_cells.csv`` (the numbers) and ``benchmark_folds.csv`` (one row per fold);
* ``benchmark.png``: one dot-and-whisker panel per task (dot: mean; whisker: ± sd; small
  dots: the folds);
* with ``compare=(a, b)`` (two extractors, or two models), ``benchmark_compare.csv``: per
  task (and per model, or per extractor) the mean paired difference ``a - b`` over the same
  outer folds with a 95 % interval (:mod:`rl_benchmarks.metrics.paired`), flagged "not
  significant" when it includes 0, and a Wilcoxon signed-rank test over all paired folds.
  Folds are paired only when both runs recorded the same test slides in each fold (their
  ``predictions/``); otherwise :class:`SplitMismatchError`.

Experiments are named ``task · model · extractor``
(:func:`rl_benchmarks.val_schemes.experiment.experiment_label`); two tasks that share a
name (two cohorts ``cohort.csv`` in different folders) get a short hash suffix. No path
enters a table or a file name.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rl_benchmarks.metrics.paired import INTERVALS, paired_interval, wilcoxon_pairs
from rl_benchmarks.utils.io import write_csv, write_text
from rl_benchmarks.utils.safe_names import unique_labels
from rl_benchmarks.val_schemes.experiment import CV_SUBDIR, is_csv
from rl_benchmarks.val_schemes.results import ExperimentFolds, collect_folds

BENCHMARK_DIR = "benchmark"
TABLE_CSV = "benchmark_table.csv"
TABLE_MD = "benchmark_table.md"
CELLS_CSV = "benchmark_cells.csv"
FOLDS_CSV = "benchmark_folds.csv"
COMPARE_CSV = "benchmark_compare.csv"
FIGURE = "benchmark.png"
SEP = " · "
NOT_SIGNIFICANT = "not significant"


class SplitMismatchError(ValueError):
    """Two experiments to be paired did not use the same outer folds."""


@dataclass
class Comparison:
    """A paired comparison of ``a`` and ``b`` (two extractors or two models: ``dimension``).

    ``rows``: one per task and value of the other dimension, with ``n_folds``, the means of
    ``a`` and ``b``, ``mean_diff`` (a - b), ``ci_low``/``ci_high`` and ``flag``.
    ``pairs``: every paired fold (task, other, fold, a, b). The Wilcoxon test is over all
    of ``pairs``."""

    a: str
    b: str
    dimension: str
    interval: str
    confidence: float
    rows: pd.DataFrame
    pairs: pd.DataFrame
    wilcoxon_statistic: float
    wilcoxon_p: float
    unpaired: list[str] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    def summary_line(self) -> str:
        """One line: the overall test and how many task rows are significant."""
        n_sig = int((self.rows["flag"] == "significant").sum()) if len(self.rows) else 0
        p = "n/a" if math.isnan(self.wilcoxon_p) else f"{self.wilcoxon_p:.3g}"
        return (f"{self.a} vs {self.b} ({self.dimension}s): Wilcoxon signed-rank over "
                f"{self.n_pairs} paired folds p = {p}; {n_sig} of {len(self.rows)} rows "
                f"significant ({self.interval} {self.confidence:.0%} interval excludes 0)")


@dataclass
class BenchmarkTable:
    """What :func:`benchmark_table` found (and :func:`write_benchmark` wrote: ``files``)."""

    runs: list[ExperimentFolds] = field(repr=False)
    cells: pd.DataFrame
    folds: pd.DataFrame = field(repr=False)
    table: pd.DataFrame
    missing: list[str]
    incomplete: list[tuple[str, str]]
    superseded: list[str] = field(default_factory=list)
    comparison: Comparison | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def n_filled(self) -> int:
        """Cells with at least one fold value."""
        return int((self.cells["n_folds"] > 0).sum()) if len(self.cells) else 0


def _norm(name: object) -> str:
    """Case- and punctuation-blind form of a model/extractor/task name
    (``mean_pool`` = ``MeanPool``, ``abmil`` = ``ABMIL``)."""
    return re.sub(r"[^a-z0-9]+", "", str(name).lower())


def _natural(text: str) -> list:
    """Sort key that puts ``task2`` before ``task10``."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in re.split(r"(\d+)", str(text)) if p]


def _match_task(task: str, runs: Sequence[ExperimentFolds]) -> str:
    """The table's name of an expected task: a cohort CSV is matched by its path (the runs
    record it resolved), else by its stem; a name by itself (case-blind)."""
    if is_csv(task):
        path = str(Path(task).expanduser().resolve())
        for r in runs:
            if r.cohort in (task, path):
                return r.task
        task = Path(task).name
        for suffix in (".csv.gz", ".tsv.gz", ".csv", ".tsv"):
            if task.lower().endswith(suffix):
                task = task[: -len(suffix)]
                break
    for r in runs:
        if _norm(r.task) == _norm(task):
            return r.task
    return task


def benchmark_table(root: str | os.PathLike,
                    expected: Iterable[Mapping[str, str]] | None = None) -> BenchmarkTable:
    """The benchmark table of the experiments under ``<root>/cross_validation``.

    ``expected``: cells that should exist, as mappings with ``task`` (a task name or a cohort
    CSV, matched by its stem), ``model`` (class or config name: ``abmil`` matches ``ABMIL``)
    and ``extractor``; those with no experiment are listed as missing, and rows and columns
    for them are added. Without it, every task × column combination of the table is expected.
    When two completed experiments fill one cell, the most recent is shown and the other is
    listed in ``superseded``.
    """
    root = Path(root)
    if not (root / CV_SUBDIR).is_dir():
        raise FileNotFoundError(f"{root / CV_SUBDIR}: no such folder (no cross-validation run there)")
    runs = collect_folds(root)
    named = [r for r in runs if r.task_key]
    tasks = unique_labels({r.task_key: r.task for r in named})
    for r in named:
        r.task = tasks[r.task_key]
        r.label = SEP.join(p for p in (r.task, r.model, r.extractor) if p)

    # one run per cell: completed first, then the most recent
    def rank(r: ExperimentFolds) -> tuple[int, float]:
        order = {"completed": 3, "incomplete": 2, "running": 1, "unfinished": 1}.get(r.status, 0)
        try:
            mtime = max(p.stat().st_mtime for p in r.folder.iterdir())
        except (OSError, ValueError):
            mtime = 0.0
        return order, mtime

    by_cell: dict[tuple[str, str, str], list[ExperimentFolds]] = {}
    for r in named:
        by_cell.setdefault((r.task, r.model, r.extractor), []).append(r)
    chosen: dict[tuple[str, str, str], ExperimentFolds] = {}
    superseded: list[str] = []
    for key, group in by_cell.items():
        group.sort(key=rank, reverse=True)
        chosen[key] = group[0]
        superseded += [f"{r.label} ({r.experiment})" for r in group[1:] if r.status == "completed"]

    task_order = sorted({k[0] for k in chosen}, key=_natural)
    col_order = sorted({(k[1], k[2]) for k in chosen}, key=lambda c: (_natural(c[0]), _natural(c[1])))
    missing: list[str] = []
    if expected is not None:
        for item in expected:
            task = _match_task(str(item["task"]), named)
            key = (task, str(item["model"]), str(item["extractor"]))
            found = [k for k in chosen
                     if k[0] == task and _norm(k[1]) == _norm(key[1]) and _norm(k[2]) == _norm(key[2])]
            if not found:
                missing.append(SEP.join(key))
                task_order += [task] if task not in task_order else []
                col_order += [key[1:]] if key[1:] not in col_order else []
    else:
        for t in task_order:
            for m, e in col_order:
                if (t, m, e) not in chosen:
                    missing.append(SEP.join((t, m, e)))

    cell_rows, fold_rows, incomplete = [], [], []
    for (t, m, e), r in chosen.items():
        values = np.array([v for v in r.folds.values() if np.isfinite(v)], dtype=float)
        cell_rows.append({
            "task": t, "model": m, "extractor": e, "metric": r.metric or "", "status": r.status,
            "mean": float(values.mean()) if len(values) else float("nan"),
            "sd": float(values.std()) if len(values) else float("nan"),
            "n_folds": len(values), "experiment": r.experiment,
        })
        fold_rows += [{"task": t, "model": m, "extractor": e, "metric": r.metric, "fold": f,
                       "value": v, "experiment": r.experiment} for f, v in r.folds.items()]
        if r.status != "completed":
            incomplete.append((r.label, r.reason or r.status))
    for r in runs:
        if not r.task_key:  # no readable configuration: cannot be placed in the table
            incomplete.append((r.experiment, r.reason or r.status))
    cells = pd.DataFrame(cell_rows, columns=["task", "model", "extractor", "metric", "status", "mean",
                                             "sd", "n_folds", "experiment"])
    folds = pd.DataFrame(fold_rows, columns=["task", "model", "extractor", "metric", "fold", "value",
                                             "experiment"])
    table = _wide_table(cells, task_order, col_order, set(missing))
    return BenchmarkTable(runs=runs, cells=cells, folds=folds, table=table, missing=sorted(missing),
                          incomplete=sorted(incomplete), superseded=sorted(superseded))


def _cell_text(row: Mapping[str, Any], digits: int = 3) -> str:
    if row["n_folds"] == 0:
        return str(row["status"])
    return f"{row['mean']:.{digits}f} ± {row['sd']:.{digits}f} (n={int(row['n_folds'])})"


def _wide_table(cells: pd.DataFrame, tasks: Sequence[str], columns: Sequence[tuple[str, str]],
                missing: set[str]) -> pd.DataFrame:
    index = {(r["task"], r["model"], r["extractor"]): r for r in cells.to_dict("records")}
    rows = []
    for t in tasks:
        metrics = [r["metric"] for k, r in index.items() if k[0] == t and r["metric"]]
        row = {"task": t, "metric": max(set(metrics), key=metrics.count) if metrics else ""}
        for m, e in columns:
            r = index.get((t, m, e))
            if r is None:  # "missing" where expected, else not part of the grid
                row[f"{m}{SEP}{e}"] = "missing" if SEP.join((t, m, e)) in missing else ""
            else:
                row[f"{m}{SEP}{e}"] = _cell_text(r)
        rows.append(row)
    return pd.DataFrame(rows, columns=["task", "metric", *[f"{m}{SEP}{e}" for m, e in columns]])


# ------------------------------------------------------------------------------------------
# Paired comparison


def _dimension(bench: BenchmarkTable, a: str, b: str) -> tuple[str, str, str]:
    """(dimension, a, b) with a and b spelled as in the table."""
    names = {"extractor": sorted(set(bench.cells["extractor"])),
             "model": sorted(set(bench.cells["model"]))}
    for dim, known in names.items():
        found = {_norm(k): k for k in known}
        if _norm(a) in found and _norm(b) in found:
            return dim, found[_norm(a)], found[_norm(b)]
    raise ValueError(
        f"compare={a},{b}: both must be extractors ({', '.join(names['extractor']) or 'none'}) "
        f"or both models ({', '.join(names['model']) or 'none'}) of the table")


def _check_same_splits(ra: ExperimentFolds, rb: ExperimentFolds) -> list[str]:
    """The fold keys the two runs share, after checking they hold the same test slides."""
    for r in (ra, rb):
        if r.splits is None:
            raise SplitMismatchError(
                f"{r.folder}: no predictions/ recorded, so its outer folds cannot be checked "
                f"against {(rb if r is ra else ra).folder}: refusing to pair them")
    shared = sorted(set(ra.folds) & set(rb.folds))
    if not shared:
        raise SplitMismatchError(f"{ra.folder} and {rb.folder} share no outer fold: refusing to pair them")
    for key in shared:
        for r in (ra, rb):
            if key not in r.splits:
                raise SplitMismatchError(f"{r.folder}: predictions/ records no test slides for fold {key}: "
                                         "refusing to pair its folds")
        if ra.splits[key] != rb.splits[key]:
            only_a = sorted((ra.splits.get(key) or frozenset()) - (rb.splits.get(key) or frozenset()))
            raise SplitMismatchError(
                f"{ra.label} and {rb.label} used different splits (fold {key} holds "
                f"{len(ra.splits.get(key) or ())} vs {len(rb.splits.get(key) or ())} test slides"
                + (f", e.g. {only_a[0]} only in the first" if only_a else "")
                + f"; {ra.folder.name} vs {rb.folder.name}): refusing to pair their folds")
    if ra.n_splits_outer != rb.n_splits_outer:
        raise SplitMismatchError(f"{ra.label} and {rb.label} have {ra.n_splits_outer} vs "
                                 f"{rb.n_splits_outer} outer folds: refusing to pair them")
    return shared


def compare(bench: BenchmarkTable, a: str, b: str, interval: str = "corrected_t",
            confidence: float = 0.95) -> Comparison:
    """Paired comparison of two extractors (or two models) of ``bench`` (module docstring).

    Cells are paired within a task and the same value of the other dimension; their folds
    by name (``repeat_<r>_split_<s>``), after :func:`_check_same_splits`.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(INTERVALS)}, got {interval!r}")
    dim, a, b = _dimension(bench, a, b)
    other = "model" if dim == "extractor" else "extractor"
    by_folder = {r.experiment: r for r in bench.runs}
    chosen = {(c["task"], c["model"], c["extractor"]): by_folder[c["experiment"]]
              for c in bench.cells.to_dict("records")}
    rows, pairs, unpaired = [], [], []
    keys = sorted({(t, m if dim == "extractor" else e) for t, m, e in chosen})
    for task, value in keys:
        def cell(x: str, task: str = task, value: str = value) -> ExperimentFolds | None:
            key = (task, value, x) if dim == "extractor" else (task, x, value)
            r = chosen.get(key)
            return r if r is not None and r.folds else None

        ra, rb = cell(a), cell(b)
        if ra is None or rb is None:
            if ra is not None or rb is not None:
                unpaired.append(f"{task}{SEP}{value}: no {b if ra is not None else a} run")
            continue
        shared = _check_same_splits(ra, rb) if ra is not rb else sorted(ra.folds)
        va = np.array([ra.folds[k] for k in shared], dtype=float)
        vb = np.array([rb.folds[k] for k in shared], dtype=float)
        ok = np.isfinite(va) & np.isfinite(vb)
        va, vb = va[ok], vb[ok]
        shared = [k for k, keep in zip(shared, ok) if keep]
        k = ra.n_splits_outer
        ratio = 1.0 / (k - 1) if k and k > 1 else None
        res = paired_interval(va, vb, interval=interval, confidence=confidence,
                              test_train_ratio=ratio if interval == "corrected_t" else None)
        rows.append({"task": task, other: value, "metric": ra.metric, "n_folds": res.n,
                     f"mean_{_col(a)}": float(va.mean()), f"mean_{_col(b)}": float(vb.mean()),
                     "mean_diff": res.mean, "ci_low": res.low, "ci_high": res.high,
                     "interval": f"{interval} {confidence:.0%}",
                     "flag": "significant" if res.significant else NOT_SIGNIFICANT})
        pairs += [{"task": task, other: value, "fold": f, "a": x, "b": y}
                  for f, x, y in zip(shared, va, vb)]
    if not rows:
        raise ValueError(f"compare={a},{b}: no task has runs of both {a} and {b} to pair")
    pairs_frame = pd.DataFrame(pairs)
    stat, p = wilcoxon_pairs(pairs_frame["a"].to_numpy(), pairs_frame["b"].to_numpy())
    return Comparison(a=a, b=b, dimension=dim, interval=interval, confidence=confidence,
                      rows=pd.DataFrame(rows), pairs=pairs_frame, wilcoxon_statistic=stat,
                      wilcoxon_p=p, unpaired=unpaired)


def _col(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "x"


# ------------------------------------------------------------------------------------------
# Outputs


def _markdown_table(frame: pd.DataFrame) -> str:
    def esc(v: object) -> str:
        if isinstance(v, float):
            v = "" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(esc(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def benchmark_markdown(bench: BenchmarkTable) -> str:
    """``benchmark_table.md``: the table, the missing and incomplete experiments, and the
    comparison when there is one."""
    lines = ["# Benchmark", "",
             "Cells: mean ± sd (population) of the task's metric over every outer fold and repeat, "
             "n = folds.", "", _markdown_table(bench.table), ""]
    if bench.missing:
        lines += ["## Missing experiments", "", *[f"- {m}" for m in bench.missing], ""]
    if bench.incomplete:
        lines += ["## Incomplete experiments", "", *[f"- {n}: {why}" for n, why in bench.incomplete], ""]
    if bench.superseded:
        lines += ["## Superseded runs (an other completed run fills their cell)", "",
                  *[f"- {s}" for s in bench.superseded], ""]
    c = bench.comparison
    if c is not None:
        kind = "corrected resampled t (Nadeau & Bengio)" if c.interval == "corrected_t" else "t"
        lines += [f"## Paired comparison: {c.a} − {c.b}", "",
                  f"Per row: mean of the per-fold differences over the same outer folds, with a "
                  f"{c.confidence:.0%} {kind} interval; \"{NOT_SIGNIFICANT}\" when it includes 0.", "",
                  _markdown_table(c.rows), "", c.summary_line() + ".", ""]
        if c.unpaired:
            lines += ["Not paired: " + "; ".join(c.unpaired) + ".", ""]
    return "\n".join(lines)


def benchmark_figure(bench: BenchmarkTable, out_png: str | os.PathLike) -> Path | None:
    """``benchmark.png``: one dot-and-whisker panel per task (None when no cell has a value)."""
    from rl_benchmarks.reports.plots import _pyplot, save_figure

    cells = bench.cells[bench.cells["n_folds"] > 0]
    if cells.empty:
        return None
    plt = _pyplot()
    tasks = list(dict.fromkeys(bench.table["task"]))
    tasks = [t for t in tasks if t in set(cells["task"])]
    extractors = sorted(set(cells["extractor"]))
    colours = {e: plt.get_cmap("tab10")(i % 10) for i, e in enumerate(extractors)}
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    n_cols_max = max(len(cells[cells["task"] == t]) for t in tasks)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 0.9 + (0.42 * n_cols_max + 0.8) * nrows),
                             squeeze=False)
    for ax, task in zip(axes.ravel(), tasks):
        sub = cells[cells["task"] == task]
        sub = sub.iloc[sorted(range(len(sub)), key=lambda i: (_natural(sub["model"].iloc[i]),
                                                               _natural(sub["extractor"].iloc[i])))]
        for y, r in enumerate(sub.to_dict("records")):
            vals = bench.folds[(bench.folds["experiment"] == r["experiment"])]["value"].to_numpy(float)
            ax.scatter(vals, np.full(len(vals), y) + 0.18, s=9, color="grey", alpha=0.6, zorder=2)
            ax.errorbar(r["mean"], y, xerr=r["sd"], fmt="o", color=colours[r["extractor"]], capsize=3,
                        ms=6, zorder=3)
        ax.set_yticks(range(len(sub)))
        ax.set_yticklabels([f"{m}{SEP}{e}" for m, e in zip(sub["model"], sub["extractor"])], fontsize=8)
        ax.set_ylim(-0.6, len(sub) - 0.4)
        ax.invert_yaxis()
        metric = sub["metric"].iloc[0] or "metric"
        ax.set_xlabel(f"{metric} (mean ± sd over folds; grey: folds)", fontsize=8)
        ax.set_title(task, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.ravel()[len(tasks):]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, out_png)


def write_benchmark(root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                    compare_names: Sequence[str] | None = None, interval: str = "corrected_t",
                    expected: Iterable[Mapping[str, str]] | None = None,
                    figure: bool = True) -> BenchmarkTable:
    """The one entry point: :func:`benchmark_table` of ``root``, the paired comparison of
    ``compare_names = (a, b)`` if given, then every output file written (atomically) into
    ``out_dir`` (default ``<root>/benchmark``). Raises FileNotFoundError (no runs),
    ValueError (bad ``compare_names``/``interval``) and :class:`SplitMismatchError`, each
    with a one-line message, before writing anything."""
    bench = benchmark_table(root, expected=expected)
    if compare_names is not None:
        names = [str(n).strip() for n in compare_names]
        if len(names) != 2 or not all(names):
            raise ValueError(f"compare takes two names, a,b; got {','.join(names)!r}")
        bench.comparison = compare(bench, names[0], names[1], interval=interval)
    out = Path(out_dir) if out_dir is not None else Path(root) / BENCHMARK_DIR
    files = {"table_csv": out / TABLE_CSV, "cells_csv": out / CELLS_CSV, "folds_csv": out / FOLDS_CSV}
    write_csv(files["table_csv"], bench.table, index=False)
    write_csv(files["cells_csv"], bench.cells, index=False)
    write_csv(files["folds_csv"], bench.folds, index=False)
    if bench.comparison is not None:
        write_csv(out / COMPARE_CSV, bench.comparison.rows, index=False)
        files["compare_csv"] = out / COMPARE_CSV
    write_text(out / TABLE_MD, benchmark_markdown(bench))
    files["table_md"] = out / TABLE_MD
    if figure:
        png = benchmark_figure(bench, out / FIGURE)
        if png is not None:
            files["figure"] = png
    bench.files = {k: Path(v) for k, v in files.items()}
    return bench


__all__ = ["BENCHMARK_DIR", "FIGURE", "NOT_SIGNIFICANT", "TABLE_CSV", "TABLE_MD", "BenchmarkTable",
           "Comparison", "SplitMismatchError", "benchmark_figure", "benchmark_markdown",
           "benchmark_table", "compare", "write_benchmark"]
