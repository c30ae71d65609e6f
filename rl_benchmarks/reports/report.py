"""``report.html``: one static page (no server, relative links) showing a run folder.

Why: a run leaves CSVs and pictures in many sub-folders; the report puts the results
table and every picture on one page that opens from disk and can be copied or zipped
with its folder. It also (re)draws the ROC / Kaplan–Meier figures from the predictions
files it finds, so that ``rlbench report run_dir=...`` works on any CV output.

What is found under ``run_dir`` (recursively, hidden files skipped):

* predictions: ``predictions*.csv`` files, and every CSV in a ``predictions/`` folder (as
  ``rlbench cv`` writes them); the files of one folder are one experiment, named after
  that folder (or, for ``predictions/``, its parent; with a ``params.json`` (or a reference
  ``params.pkl``, read as plain data only) beside it the model, the extractor that made the
  features (``summary.json``, else the features' records), cohort and label make the name);
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
    """Experiments of a run: ``{name: [predictions files]}``; name = folder relative to the run."""
    root = Path(run_dir)
    by_dir: dict[Path, list[Path]] = {}
    for p in _visible_files(root):
        if p.suffix != ".csv":
            continue
        if p.parent.name == "predictions" and p.parent != root:
            by_dir.setdefault(p.parent.parent, []).append(p)
        elif p.name.startswith("predictions"):
            by_dir.setdefault(p.parent, []).append(p)
    names: dict[Path, str] = {}
    for exp_dir in by_dir:
        rel = exp_dir.relative_to(root).as_posix()
        names[exp_dir] = _experiment_label(exp_dir) or (root.name if rel == "." else rel)
    counts = pd.Series(list(names.values())).value_counts()
    found = {}
    for exp_dir, files in by_dir.items():
        name = names[exp_dir]
        if counts[name] > 1:  # two runs with the same label: add the folder
            name = f"{name} ({exp_dir.relative_to(root).as_posix()})"
        found[name] = files
    return found


def _experiment_label(folder: Path) -> str | None:
    """"ABMIL · iBOTViTBasePANCAN · TCGA_CRC MSI" from the configuration of a ``rlbench cv``
    run (``params.json``, or a reference ``params.pkl`` read as plain data only: one that
    asks for anything else raises ``UnsafePickleError``)."""
    from rl_benchmarks.val_schemes.experiment import (
        PARAMS,
        ExperimentFolder,
        UnsafePickleError,
        recorded_extractor,
    )

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

    def get(path: str) -> object:
        node: object = cfg
        for key in path.split("."):
            if not isinstance(node, dict):
                return None
            node = node.get(key)
        return node

    parts = [
        str(get("task.validation_scheme.trainer_cfg.model._target_") or "").rsplit(".", 1)[-1],
        str(recorded_extractor(cfg, summary) or ""),
        " ".join(str(get(f"task.data.train.{k}") or "") for k in ("cohort", "label")),
    ]
    label = " · ".join(p.strip() for p in parts if p and p.strip())
    return label or None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__")).strip("_") or "run"


def draw_run_figures(run_dir: str | os.PathLike, figures_dir: str | os.PathLike | None = None,
                     ) -> tuple[list[Path], dict[str, pd.DataFrame]]:
    """Draw ROC (classification) or Kaplan–Meier (survival) curves for every experiment.

    Returns the figures written and the loaded predictions by experiment.
    """
    root = Path(run_dir)
    out_dir = Path(figures_dir) if figures_dir else root / FIGURES_DIR
    figures, loaded = [], {}
    for name, files in find_predictions(root).items():
        preds = load_predictions(files)
        loaded[name] = preds
        if preds.attrs["task"] == "survival":
            figures.append(kaplan_meier(preds, out_dir / f"{_slug(name)}_km.png", title=name).path)
        else:
            figures.append(roc_curves(preds, out_dir / f"{_slug(name)}_roc.png", title=name).path)
    return figures, loaded


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

    # Pictures and other files.
    files = [p for p in _visible_files(root) if p.resolve() != out.resolve()]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES
              and not p.name.startswith("report_screenshot")]
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
