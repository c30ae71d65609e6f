"""``report.html``: one static page (no server, relative links) showing a run folder.

Why: a run leaves CSVs and pictures in many sub-folders; the report puts the results
table and every picture on one page that opens from disk and can be copied or zipped
with its folder. It also (re)draws the ROC / Kaplan–Meier figures from the predictions
files it finds, so that ``rlbench report run_dir=...`` works on any CV output.

What is found under ``run_dir`` (recursively, hidden files skipped):

* predictions: ``predictions*.csv`` files, and every CSV in a ``predictions/`` folder (as
  ``rlbench cv`` writes them); the files of one folder are one experiment, named after
  that folder (or, for ``predictions/``, its parent); with a ``params.json`` (or a reference
  ``params.pkl``, read as plain data only) beside it the name is ``task · model ·
  extractor`` (:func:`rl_benchmarks.val_schemes.experiment.experiment_labels`; never a
  path), and its figures get short safe file names, unique within the run;
* the benchmark: every folder holding ``cross_validation/`` (up to two levels down) gets
  its benchmark table and figure (:mod:`rl_benchmarks.reports.benchmark_table`), shown in a
  Benchmark section; localisation scores (``localisation.csv``) a Localisation section;
* the results table: ``results_csv`` if given, else the first of
  ``nested_cross_validation_results.csv`` / ``results.csv`` (shallowest first), else a
  table computed from the predictions;
* pictures: ``*.png``, ``*.jpg``, ``*.jpeg``, ``*.svg``, ``*.gif``, grouped as ROC curves,
  Kaplan–Meier curves, heatmaps, tissue QC and others by their names and folders;
* other files (CSV, JSON, Markdown, text) are listed with links.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from urllib.parse import quote

import pandas as pd

from rl_benchmarks.reports.plots import (
    kaplan_meier,
    results_from_predictions,
    results_table,
    roc_curves,
)
from rl_benchmarks.utils.io import write_csv, write_text
from rl_benchmarks.utils.safe_names import unique_labels, unique_stems
from rl_benchmarks.val_schemes.predictions import PredictionsError, load_predictions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif")
FILE_SUFFIXES = (".csv", ".json", ".md", ".txt", ".log", ".yaml")
RESULTS_NAMES = ("nested_cross_validation_results.csv", "results.csv")
FIGURES_DIR = "figures"
_TEMPLATE = Path(__file__).resolve().parent / "templates" / "report.html"
_SECTIONS = [
    ("roc", "ROC curves", "half"),
    ("km", "Kaplan–Meier curves", "half"),
    ("heatmap", "Tile-score heatmaps", "wide"),
    ("qc", "Tissue detection QC", "small"),
    ("other", "Other pictures", "half"),
]


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    path: Path
    table: pd.DataFrame = field(repr=False)
    table_source: str
    images: list[Path]
    figures: list[Path]
    experiments: list[str]


def _visible_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                out.append(Path(dirpath) / name)
    return out


def find_predictions(run_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """Experiments of a run: ``{name: [predictions files]}``.

    The name is ``task · model · extractor`` for a ``rlbench cv`` run folder
    (:func:`rl_benchmarks.val_schemes.experiment.experiment_label`), else the folder relative
    to the run. Names that two experiments share get a short hash of their folder
    (:func:`rl_benchmarks.utils.safe_names.unique_labels`), so they never carry a path."""
    return {name: files for name, (_, files) in _experiments(run_dir).items()}


def _experiments(run_dir: str | os.PathLike) -> dict[str, tuple[Path, list[Path]]]:
    """``{name: (experiment folder, [predictions files])}`` (:func:`find_predictions`)."""
    root = Path(run_dir)
    by_dir: dict[Path, list[Path]] = {}
    for p in _visible_files(root):
        if p.suffix != ".csv":
            continue
        if p.parent.name == "predictions" and p.parent != root:
            by_dir.setdefault(p.parent.parent, []).append(p)
        elif p.name.startswith("predictions"):
            by_dir.setdefault(p.parent, []).append(p)
    from rl_benchmarks.val_schemes.experiment import experiment_labels

    configs = {d: cfg for d in by_dir if (cfg := _run_config(d)) is not None}
    named = experiment_labels(configs)
    names: dict[Path, str] = {}
    for exp_dir in by_dir:
        rel = exp_dir.relative_to(root).as_posix()
        names[exp_dir] = named.get(exp_dir) or (root.name if rel == "." else rel)
    names = unique_labels(names, {d: d.relative_to(root).as_posix() for d in names})
    return {names[d]: (d, files) for d, files in by_dir.items()}


def _run_config(folder: Path) -> tuple[dict, dict] | None:
    """``(params, summary)`` of a ``rlbench cv`` run folder (``params.json``, or a reference
    ``params.pkl`` read as plain data only: one that asks for anything else raises
    ``UnsafePickleError``); None when the folder has no readable configuration."""
    from rl_benchmarks.val_schemes.experiment import PARAMS, ExperimentFolder, UnsafePickleError

    exp = ExperimentFolder(folder)
    if exp.find(PARAMS) is None:
        return None
    try:
        cfg = exp.read_params()
    except UnsafePickleError:
        raise
    except Exception:  # noqa: BLE001 - a label is a nicety; fall back to the folder name
        return None
    try:
        summary = exp.read_summary()
    except Exception:  # noqa: BLE001 - no readable summary: the records in params.json
        summary = {}
    return cfg, summary


def draw_run_figures(run_dir: str | os.PathLike, figures_dir: str | os.PathLike | None = None,
                     ) -> tuple[list[Path], dict[str, pd.DataFrame]]:
    """Draw ROC (classification) or Kaplan–Meier (survival) curves for every experiment.

    File names are short and safe, made from the experiment's name
    (:func:`rl_benchmarks.utils.safe_names.unique_stems`: ``crc_ABMIL_phikon_roc.png``),
    unique within the run. Returns the figures written and the loaded predictions by
    experiment.
    """
    root = Path(run_dir)
    out_dir = Path(figures_dir) if figures_dir else root / FIGURES_DIR
    found = _experiments(root)
    stems = unique_stems({name: name for name in found},
                         {name: folder.relative_to(root).as_posix() for name, (folder, _) in found.items()})
    figures, loaded = [], {}
    for name, (_, files) in found.items():
        preds = load_predictions(files)
        loaded[name] = preds
        if preds.attrs["task"] == "survival":
            figures.append(kaplan_meier(preds, out_dir / f"{stems[name]}_km.png", title=name).path)
        else:
            figures.append(roc_curves(preds, out_dir / f"{stems[name]}_roc.png", title=name).path)
    return figures, loaded


def _cv_roots(root: Path, depth: int = 2) -> list[Path]:
    """Folders at most ``depth`` levels below ``root`` (``root`` included) that hold a
    ``cross_validation/`` folder of experiments: the logs roots of ``rlbench cv``."""
    from rl_benchmarks.val_schemes.experiment import CV_SUBDIR

    found, level = [], [root]
    for step in range(depth + 1):
        nxt = []
        for folder in level:
            cv = folder / CV_SUBDIR
            if cv.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in cv.iterdir()):
                found.append(folder)
            if step < depth:
                nxt += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                              and p.name != CV_SUBDIR)
        level = nxt
    return found


def benchmark_section(root: Path) -> tuple[str, list[Path]]:
    """The Benchmark section of report.html: for every logs root under ``root``
    (:func:`_cv_roots`), the benchmark table (tasks × model · extractor, mean ± sd over the
    outer folds), the missing and incomplete experiments and the dot-and-whisker figure,
    written by :func:`rl_benchmarks.reports.benchmark_table.write_benchmark` into
    ``<logs root>/benchmark/``. Returns the HTML ("" without experiments) and the figures."""
    from rl_benchmarks.reports.benchmark_table import BENCHMARK_DIR, write_benchmark

    parts, figures = [], []
    for cv_root in _cv_roots(root):
        rel = cv_root.relative_to(root).as_posix()
        where = "" if rel == "." else f" ({html.escape(rel)})"
        try:
            bench = write_benchmark(cv_root, out_dir=cv_root / BENCHMARK_DIR)
        except (OSError, ValueError) as err:  # a report still shows the rest
            parts.append(f'<p class="note">Benchmark table{where} not built: {html.escape(str(err))}</p>')
            continue
        if bench.table.empty:
            continue
        md = bench.files["table_md"]
        parts.append(
            f'<p class="meta">Rows: tasks; columns: model · extractor; cells: mean ± sd of the '
            f'task\'s metric over the outer folds and repeats (n: folds){where} · '
            f'<a href="{_href(md, root)}">{html.escape(md.name)}</a> · '
            f'<a href="{_href(bench.files["table_csv"], root)}">{html.escape(bench.files["table_csv"].name)}</a></p>')
        parts.append(bench.table.to_html(index=False, table_id="benchmark-table", classes="results",
                                         border=0, escape=True, na_rep=""))
        for title, items in (("Missing experiments", bench.missing),
                             ("Incomplete experiments", [f"{n}: {why}" for n, why in bench.incomplete])):
            if items:
                parts.append(f"<p>{title} ({len(items)}):</p><ul>"
                             + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        if "figure" in bench.files:
            figures.append(bench.files["figure"])
            parts.append('<div class="gallery wide">' + _figure(bench.files["figure"], root) + "</div>")
    if not parts:
        return "", figures
    return '<h2 id="benchmark">Benchmark</h2>' + "\n".join(parts), figures


def _localisation_section(root: Path) -> str:
    """The Localisation section (:func:`rl_benchmarks.reports.localisation.localisation_html`:
    tile AUROC of the heatmaps against ground-truth lesions); "" when the run has none."""
    try:
        from rl_benchmarks.reports.localisation import localisation_html
    except ImportError:  # pragma: no cover - the localisation module is optional
        return ""
    return localisation_html(root)


def _find_results_csv(root: Path) -> Path | None:
    candidates = [p for p in _visible_files(root) if p.name in RESULTS_NAMES]
    candidates.sort(key=lambda p: (len(p.relative_to(root).parts), RESULTS_NAMES.index(p.name), str(p)))
    return candidates[0] if candidates else None


def _section_of(rel: str) -> str:
    low = rel.lower()
    name = low.rsplit("/", 1)[-1]
    if name.endswith("_roc.png") or "roc" in name.split("_")[:1] or "/roc" in low:
        return "roc"
    if name.endswith("_km.png") or "kaplan" in low or name.startswith("km"):
        return "km"
    if "heatmap" in low:
        return "heatmap"
    if "qc" in re.split(r"[/_.\-]", low) or "tissue" in low or "thumbnail" in low:
        return "qc"
    return "other"


def _href(path: Path, root: Path) -> str:
    return quote(path.relative_to(root).as_posix())


def _figure(path: Path, root: Path) -> str:
    href = _href(path, root)
    rel = html.escape(path.relative_to(root).as_posix())
    return (f'<figure><a href="{href}"><img src="{href}" alt="{rel}" '
            f'onerror="this.classList.add(\'broken\')"></a><figcaption>{rel}</figcaption></figure>')


def build_report(
    run_dir: str | os.PathLike,
    out_html: str | os.PathLike | None = None,
    title: str | None = None,
    results_csv: str | os.PathLike | None = None,
    draw_figures: bool = True,
    notes: list[str] | None = None,
    max_images: int = 400,
) -> Report:
    """Build ``report.html`` (default ``<run_dir>/report.html``) and return a :class:`Report`.

    With ``draw_figures``, ROC / Kaplan–Meier figures are (re)drawn from the predictions
    into ``<run_dir>/figures/`` first. The displayed results table is also written as
    ``<run_dir>/results_table.csv``. ``notes`` are shown at the top (e.g. "features from a
    randomly initialised ViT"). Links are relative, so the folder can be moved.
    """
    from rl_benchmarks import __version__

    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: run folder not found")
    out = Path(out_html) if out_html else root / "report.html"
    if out.resolve().parent != root.resolve():
        raise ValueError(f"{out}: report.html must be written in the run folder {root} "
                         "(its links are relative to it)")
    figures: list[Path] = []
    if draw_figures:
        figures, loaded = draw_run_figures(root)
    else:
        loaded = {name: load_predictions(files) for name, files in find_predictions(root).items()}

    # The results table.
    table_html, table = "", pd.DataFrame()
    source_csv = Path(results_csv) if results_csv else _find_results_csv(root)
    if source_csv is not None:
        table = results_table(source_csv)
        try:
            table_source = source_csv.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            table_source = str(source_csv)
    elif loaded:
        table = results_table(results_from_predictions(loaded))
        table_source = "computed from the predictions files (mean ± std over outer folds)"
    else:
        table_source = "none (no results CSV and no predictions files found)"
    if not table.empty:
        write_csv(root / "results_table.csv", table, index=False)
        table_html = table.to_html(index=False, table_id="results-table", classes="results",
                                   border=0, escape=True, na_rep="")
    else:
        table_html = '<p id="results-table-missing">No results table in this run folder.</p>'

    # The benchmark grid (tasks × model · extractor) and the heatmaps' localisation scores.
    bench_html, bench_figures = benchmark_section(root)
    localisation = _localisation_section(root)

    # Pictures and other files.
    files = [p for p in _visible_files(root) if p.resolve() != out.resolve()]
    shown_elsewhere = {p.resolve() for p in bench_figures}
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES
              and not p.name.startswith("report_screenshot") and p.resolve() not in shown_elsewhere]
    shown, extra = images[:max_images], images[max_images:]
    by_section: dict[str, list[Path]] = {key: [] for key, _, _ in _SECTIONS}
    for p in shown:
        by_section[_section_of(p.relative_to(root).as_posix())].append(p)
    others = [p for p in files if p.suffix.lower() in FILE_SUFFIXES] + extra

    sections = [
        '<h2 id="results">Results</h2>',
        f'<p class="meta">Source: {html.escape(table_source)}'
        + (' · <a href="results_table.csv">results_table.csv</a>' if not table.empty else "")
        + "</p>",
        table_html,
    ]
    nav = ['<a href="#results">Results</a>']
    if bench_html:
        nav.append('<a href="#benchmark">Benchmark</a>')
        sections.append(bench_html)
    if localisation:
        nav.append('<a href="#localisation">Localisation</a>')
        sections.append(localisation)
    for key, heading, layout in _SECTIONS:
        if not by_section[key]:
            continue
        nav.append(f'<a href="#{key}">{heading} ({len(by_section[key])})</a>')
        sections.append(f'<h2 id="{key}">{heading}</h2>')
        sections.append(f'<div class="gallery {layout}">'
                        + "".join(_figure(p, root) for p in by_section[key]) + "</div>")
    if others:
        nav.append(f'<a href="#files">Files ({len(others)})</a>')
        sections.append('<h2 id="files">Files</h2><ul class="files">' + "".join(
            f'<li><a href="{_href(p, root)}">{html.escape(p.relative_to(root).as_posix())}</a></li>'
            for p in others) + "</ul>")
    notes_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in (notes or []))
    page = Template(_TEMPLATE.read_text()).substitute(
        title=html.escape(title or f"rl-benchmarks run: {root.resolve().name}"),
        version=html.escape(__version__),
        run_dir=html.escape(str(root.resolve())),
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        notes=notes_html,
        nav=" ".join(nav),
        sections="\n".join(sections),
    )
    write_text(out, page)
    return Report(path=out, table=table, table_source=table_source, images=shown, figures=figures,
                  experiments=sorted(loaded))


__all__ = ["PredictionsError", "Report", "build_report", "draw_run_figures", "find_predictions"]
