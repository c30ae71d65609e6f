"""Heatmap localisation: do a model's tile scores point at the annotated lesions?

Why: pathologists ask of a MIL heatmap whether it highlights the tumour. Where a slide has a
ground truth (the demo's planted islands, Camelyon16's ASAP XML annotations, any GeoJSON;
:mod:`rl_benchmarks.slides.annotations`), each tile gets a label and the tile scores are
scored against those labels:

* **tile label**: 1 when at least ``threshold`` (default :data:`LESION_THRESHOLD` = 0.25) of
  the tile's level-0 box lies inside a lesion, else 0;
* **per slide**: the tile-level AUROC of the tile scores (scikit-learn's ``roc_auc_score``).
  It is undefined (NaN, with the reason in ``note``) when the slide has tiles of one label
  only, e.g. a negative slide;
* **per model and fold**: the mean (and count) over the positive slides, i.e. those whose
  AUROC is defined.

The tile scores are the oriented ones of :func:`rl_benchmarks.reports.heatmap.oriented_tile_scores`
(attention for ABMIL/TransMIL/HIPT-MIL; Chowder's and DSMIL's tile logits signed so that
higher means "towards the class drawn"), each slide scored by the model of the outer fold in
which it was a test slide.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rl_benchmarks.slides.annotations import LesionTruth

#: Default tile label threshold: share of the tile inside a lesion for the tile to count as lesion.
LESION_THRESHOLD = 0.25
#: File names the localisation scores are written under (one row per slide, then the summary).
LOCALISATION_CSV = "localisation.csv"
LOCALISATION_SUMMARY_CSV = "localisation_summary.csv"
SLIDE_COLUMNS = ["experiment", "model", "fold", "slide_id", "n_tiles", "n_lesion_tiles",
                 "auroc", "note", "truth"]

__all__ = [
    "LESION_THRESHOLD",
    "LOCALISATION_CSV",
    "LOCALISATION_SUMMARY_CSV",
    "localisation_auroc",
    "localisation_from_cv",
    "localisation_html",
    "localisation_table",
    "slide_localisation",
    "summarise_localisation",
    "tile_labels",
]


def tile_labels(fraction: np.ndarray, threshold: float = LESION_THRESHOLD) -> np.ndarray:
    """Tile labels (N,) int: 1 where the lesion covers at least ``threshold`` of the tile."""
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold={threshold}: must be in (0, 1]")
    return (np.asarray(fraction, np.float64) >= float(threshold)).astype(np.int64)


def localisation_auroc(scores: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """(tile-level AUROC of ``scores`` against 0/1 ``labels``, note). Tiles with a NaN score
    are left out; one label only gives (NaN, the reason)."""
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} tile scores but {len(labels)} tile labels")
    keep = np.isfinite(scores)
    scores, labels = scores[keep], labels[keep]
    n_pos = int((labels == 1).sum())
    if n_pos == 0:
        return math.nan, "no lesion tile (AUROC undefined)"
    if n_pos == len(labels):
        return math.nan, "every tile is lesion (AUROC undefined)"
    return float(roc_auc_score(labels, scores)), ""


def slide_localisation(scores: np.ndarray, coords: np.ndarray, truth: LesionTruth, tile_size: int,
                       slide_dims: tuple[int, int], threshold: float = LESION_THRESHOLD) -> dict[str, Any]:
    """One slide's localisation row: tile counts, AUROC, note and truth source; the tile
    lesion fractions are under ``"fraction"``."""
    frac = truth.tile_fraction(coords, tile_size, int(slide_dims[0]), int(slide_dims[1]))
    labels = tile_labels(frac, threshold)
    auroc, note = localisation_auroc(scores, labels)
    return {"n_tiles": int(len(labels)), "n_lesion_tiles": int(labels.sum()), "auroc": auroc,
            "note": note, "truth": truth.source, "fraction": frac}


def summarise_localisation(slides: pd.DataFrame) -> pd.DataFrame:
    """Mean tile AUROC over the positive slides (defined AUROC) per model and fold, then per
    model over all folds (``fold`` = "all"); ``n_slides`` counts them, ``n_undefined`` the
    slides left out (one tile label only)."""
    cols = ["experiment", "model", "fold", "n_slides", "mean_auroc", "min_auroc", "max_auroc",
            "n_undefined"]
    if slides.empty:
        return pd.DataFrame(columns=cols)
    rows = []

    def row(exp: str, model: str, fold: str, part: pd.DataFrame) -> dict[str, Any]:
        ok = part["auroc"].dropna()
        return {"experiment": exp, "model": model, "fold": fold, "n_slides": int(len(ok)),
                "mean_auroc": float(ok.mean()) if len(ok) else math.nan,
                "min_auroc": float(ok.min()) if len(ok) else math.nan,
                "max_auroc": float(ok.max()) if len(ok) else math.nan,
                "n_undefined": int(part["auroc"].isna().sum())}

    for (exp, model), part in slides.groupby(["experiment", "model"], sort=False):
        for fold, sub in part.groupby("fold", sort=True):
            rows.append(row(exp, model, str(fold), sub))
        rows.append(row(exp, model, "all", part))
    return pd.DataFrame(rows, columns=cols)


def localisation_from_cv(
    experiment_dir: str | os.PathLike,
    slides: Mapping[str, tuple[str | os.PathLike, str | os.PathLike]],
    truths: Mapping[str, LesionTruth],
    model: str,
    model_kwargs: dict[str, Any] | None = None,
    use_reference_kwargs: bool = True,
    tile_size: int = 224,
    class_index: int = 0,
    threshold: float = LESION_THRESHOLD,
    experiment: str | None = None,
    out_features: int | None = None,
) -> pd.DataFrame:
    """Per-slide localisation of a ``rlbench cv`` run: every test slide that has a truth in
    ``truths`` is scored by the model of its own outer fold (oriented tile scores).

    ``slides`` maps slide_id -> (slide path, features file: ``features.npy`` or an h5). Returns one row per
    (fold, slide) with :data:`SLIDE_COLUMNS`. Negative slides (no lesion tile) get a NaN
    AUROC and a note.
    """
    from rl_benchmarks.reports.heatmap import (
        HeatmapError,
        load_features,
        load_slide_model,
        oriented_tile_scores,
        slide_dimensions,
    )
    from rl_benchmarks.val_schemes.experiment import ExperimentFolder
    from rl_benchmarks.val_schemes.predictions import load_predictions

    run = ExperimentFolder(Path(experiment_dir))
    files = run.prediction_files()
    if not files:
        raise HeatmapError(f"{run.path}: no predictions/<fold>.csv (not a rlbench cv run folder?)")
    preds = load_predictions(files)
    preds = preds[preds["slide_id"].astype(str).isin(set(slides) & set(truths))]
    rows, models = [], {}
    for rec in preds.drop_duplicates(["fold_name", "slide_id"]).itertuples():
        sid, key = str(rec.slide_id), str(rec.fold_name)
        slide_path, features_path = slides[sid]
        dims = slide_dimensions(slide_path)
        features = load_features(features_path, dims)
        if key not in models:
            models[key] = load_slide_model(model, run.model_path(key), features.shape[1] - 3,
                                           out_features, model_kwargs, use_reference_kwargs)
        scored = oriented_tile_scores(models[key], features, class_index=class_index)
        one = slide_localisation(scored.scores, features[:, :3], truths[sid], tile_size, dims, threshold)
        one.pop("fraction")
        rows.append({"experiment": experiment or run.path.name, "model": model, "fold": key,
                     "slide_id": sid, **one})
    return pd.DataFrame(rows, columns=SLIDE_COLUMNS)


def localisation_table(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """The report's Localisation table: per experiment/model, the mean tile AUROC over the
    positive slides, per fold and over all folds.

    ``source`` is a run folder (its ``localisation.csv`` files, found recursively, are read),
    a ``localisation.csv`` path, or a per-slide DataFrame. Empty when there is none.
    """
    if isinstance(source, pd.DataFrame):
        slides = source
    else:
        path = Path(source)
        files = sorted(path.rglob(LOCALISATION_CSV)) if path.is_dir() else [path]
        frames = [pd.read_csv(f, dtype={"fold": str, "slide_id": str}) for f in files if f.is_file()]
        slides = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SLIDE_COLUMNS)
    summary = summarise_localisation(slides)
    if summary.empty:
        return summary
    table = summary.copy()
    for col in ("mean_auroc", "min_auroc", "max_auroc"):
        table[col] = table[col].map(lambda v: "" if not np.isfinite(v) else f"{v:.3f}")
    return table.rename(columns={
        "experiment": "experiment", "model": "model", "fold": "outer fold",
        "n_slides": "positive slides", "mean_auroc": "mean tile AUROC", "min_auroc": "min",
        "max_auroc": "max", "n_undefined": "slides without both tile labels"})


def localisation_html(source: str | os.PathLike | pd.DataFrame, threshold: float = LESION_THRESHOLD) -> str:
    """The Localisation section of report.html (heading, what it measures, the table); ""
    when the run has no localisation scores."""
    table = localisation_table(source)
    if table.empty:
        return ""
    intro = (f"Tile-level AUROC of each model's (oriented) tile scores against the ground-truth "
             f"lesions: a tile counts as lesion when at least {threshold:.0%} of it lies inside one. "
             "Mean over the positive test slides, each scored by the model of its own outer fold; "
             "0.5 is chance, 1.0 perfect.")
    return ('<h2 id="localisation">Localisation</h2>'
            f'<p class="meta">{html.escape(intro)}</p>'
            + table.to_html(index=False, table_id="localisation-table", classes="results",
                            border=0, escape=True, na_rep=""))
