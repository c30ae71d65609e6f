"""The tile datasets of the linear probe: feature files, reference splits, one's own tiles.

Reference datasets (docs/protocol.md, "Linear evaluation"):

* ``nct_crc``: train NCT-CRC-HE-100K-NONORM, evaluate CRC-VAL-HE-7K; BACK (label 1) is
  removed from both and the labels above it shift down (8 classes).
* ``camelyon17_wilds``: train hospitals {0, 3, 4}; evaluate the validation hospital 1 (the
  reference's CSV) **and** the test hospital 2.

Features come from ``<features_root_dir or data_dir/preprocessed>/tiles_classification/
features/<feature_extractor>/<NAME>_FULL/{tile_features.npy, tile_ids.npy}``, matched to
the tiles by ``image_id``. One's own tiles (``tile_dataset=custom``): ``custom.features_dir``
and either ``custom.labels_csv`` (id, label and split columns) or ``custom.image_folder``
(a tree ``<root>/<split>/<class>/<image>`` whose features were extracted over ``<root>``).

:func:`load_probe_data` turns the ``linear-eval`` config into a :class:`ProbeData`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from rl_benchmarks import paths
from rl_benchmarks.datasets.validation import check_label_spellings, read_table
from rl_benchmarks.utils.safe_names import safe_name


@dataclass(frozen=True)
class ReferenceDataset:
    """A tile dataset of the reference: cohort prefix, classes after removal, evaluation
    splits (name -> cohort suffix) and the labels removed before training."""

    cohort: str
    classes: tuple[str, ...]
    evals: dict[str, str]
    removed_labels: tuple[int, ...] = ()


REFERENCE_DATASETS: dict[str, ReferenceDataset] = {
    "nct_crc": ReferenceDataset(
        "NCT-CRC", ("ADI", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"),
        {"valid": "VALID"}, removed_labels=(1,),
    ),
    "camelyon17_wilds": ReferenceDataset(
        "CAMELYON17-WILDS", ("Normal", "Tumor"), {"valid": "VALID", "test": "TEST"},
    ),
}


@dataclass
class ProbeData:
    """Everything the probe needs, whatever the source."""

    name: str
    class_names: list[str]
    train: tuple[np.ndarray, np.ndarray]
    evals: dict[str, tuple[np.ndarray, np.ndarray]]
    features_dir: Path
    notes: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------
def features_dir_for(cfg: DictConfig, cohort_folder: str) -> Path:
    """``<features_root_dir or data_dir/preprocessed>/tiles_classification/features/
    <feature_extractor>/<cohort_folder>``."""
    root = cfg.features_root_dir
    if root in (None, ""):
        root = paths.data_dir(cfg.get("data_dir")) / "preprocessed"
    extractor = str(cfg.feature_extractor)
    return Path(root) / "tiles_classification" / "features" / safe_name(extractor) / cohort_folder


def load_tile_features(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """``tile_features.npy`` (memory-mapped) and ``tile_ids.npy`` of ``folder``, neither
    unpickled (an object-array ``tile_ids.npy`` of older versions is read as plain data)."""
    from rl_benchmarks.extraction.tiles import read_tile_ids

    feats_path, ids_path = folder / "tile_features.npy", folder / "tile_ids.npy"
    for p in (feats_path, ids_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found: extract the tile features first (rlbench extract-tiles) or "
                "set features_root_dir / custom.features_dir"
            )
    try:
        feats = np.load(feats_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot read {feats_path}: {exc}") from exc
    try:
        ids = read_tile_ids(ids_path)
    except OSError as exc:
        raise ValueError(f"cannot read {ids_path}: {exc}") from exc
    if feats.ndim != 2:
        raise ValueError(f"{feats_path}: expected a (N, D) matrix, got shape {feats.shape}")
    if ids.ndim != 1 or len(ids) != len(feats):
        raise ValueError(
            f"{ids_path}: expected {len(feats)} tile ids (one per row of tile_features.npy), "
            f"got shape {ids.shape}"
        )
    return feats, ids.astype(str)


# --------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------
def load_reference_data(cfg: DictConfig) -> ProbeData:
    """NCT-CRC or Camelyon17-WILDS through ``load_dataset``."""
    from rl_benchmarks.datasets.loading import load_dataset

    spec = REFERENCE_DATASETS[cfg.tile_dataset]
    folder = features_dir_for(cfg, f"{spec.cohort}_FULL")
    feats, ids = load_tile_features(folder)
    data_dir = cfg.get("data_dir") or None
    frames = [load_dataset(f"{spec.cohort}_TRAIN", data_dir=data_dir)]
    frames += [load_dataset(f"{spec.cohort}_{suffix}", data_dir=data_dir)
               for suffix in spec.evals.values()]
    sets = build_datasets(feats, ids, frames, source=str(folder / "tile_ids.npy"))
    if spec.removed_labels:
        sets = [remove_labels(X, y, list(spec.removed_labels)) for X, y in sets]
    (X_train, y_train), *eval_sets = sets
    return ProbeData(
        name=str(cfg.tile_dataset),
        class_names=list(spec.classes),
        train=(X_train, y_train),
        evals=dict(zip(spec.evals, eval_sets)),
        features_dir=folder,
        notes={"train": f"{spec.cohort}_TRAIN",
               **{k: f"{spec.cohort}_{v}" for k, v in spec.evals.items()}},
    )


def _id_variants(ids: pd.Series) -> list[tuple[str, pd.Series]]:
    """Ways a user's tile id may be written relative to ``tile_ids.npy``."""
    s = ids.astype(str).str.replace("\\", "/", regex=False)
    no_suffix = s.str.replace(r"\.[A-Za-z0-9]+$", "", regex=True)
    name = s.str.rsplit("/", n=1).str[-1]
    return [
        ("as given", s),
        ("without extension", no_suffix),
        ("file name up to the first '.'", name.str.split(".", n=1).str[0]),
    ]


def match_ids(ids: pd.Series, tile_ids: np.ndarray, source: str) -> pd.Series:
    """The first spelling of ``ids`` under which every id is in ``tile_ids``."""
    known = pd.Index(tile_ids)
    best = None
    for how, variant in _id_variants(ids):
        found = variant.isin(known)
        if found.all():
            return variant
        if best is None or found.sum() > best[1].sum():
            best = (how, found, variant)
    how, found, variant = best
    missing = variant[~found.to_numpy()].tolist()
    raise ValueError(
        f"{source}: {len(missing)} of {len(ids)} tiles have no features "
        f"(ids matched {how}), e.g. {missing[:3]}; "
        f"tile_ids.npy holds e.g. {list(tile_ids[:3])}"
    )


def _class_codes(
    labels: pd.Series, classes: Sequence[str] | None, source: str
) -> tuple[np.ndarray, list[str]]:
    """Integer codes 0..K-1 and class names for labels given as names or numbers."""
    if labels.isna().any():
        raise ValueError(f"{source}: {int(labels.isna().sum())} row(s) have no label")
    values = labels.astype(str)
    if classes is None:
        uniq = labels.unique()
        numeric = pd.to_numeric(pd.Series(uniq), errors="coerce")
        if numeric.notna().all():
            order = np.argsort(numeric.to_numpy(), kind="stable")
            classes = [str(uniq[i]) for i in order]
        else:
            classes = sorted(map(str, uniq))
    classes = [str(c) for c in classes]
    unknown = sorted(set(values) - set(classes))
    if unknown:
        raise ValueError(f"{source}: label(s) {unknown} are not in classes={classes}")
    code = {c: i for i, c in enumerate(classes)}
    return values.map(code).to_numpy(np.int64), classes


def load_custom_data(cfg: DictConfig) -> ProbeData:
    """One's own tiles: features + a labels CSV with a split column, or an ImageFolder tree."""
    c = cfg.custom
    if c.features_dir:
        folder = Path(c.features_dir)
    elif c.name:
        folder = features_dir_for(cfg, str(c.name))
    else:
        raise ValueError("tile_dataset=custom needs custom.features_dir (or custom.name)")
    name = str(c.name or folder.name)
    feats, tile_ids = load_tile_features(folder)
    classes = list(c.classes) if c.classes else None

    if c.labels_csv and c.image_folder:
        raise ValueError("give custom.labels_csv or custom.image_folder, not both")
    if c.labels_csv:
        source = str(c.labels_csv)
        if not Path(source).is_file():
            raise FileNotFoundError(f"custom.labels_csv not found: {source}")
        frame = read_table(source, "custom.labels_csv")
        missing = [col for col in (c.id_column, c.label_column, c.split_column)
                   if col not in frame.columns]
        if missing:
            raise ValueError(f"{source}: missing column(s) {missing}; found {list(frame.columns)} "
                             "(set custom.id_column / label_column / split_column)")
        check_label_spellings(frame[c.label_column], source, c.label_column)
        ids = frame[c.id_column]
        labels, class_names = _class_codes(frame[c.label_column], classes,
                                           f"{source}: column {c.label_column!r}")
        splits = frame[c.split_column].astype(str)
    elif c.image_folder:
        ids, labels, class_names, splits, source = _image_folder_table(Path(c.image_folder),
                                                                       classes)
    else:
        raise ValueError("tile_dataset=custom needs custom.labels_csv or custom.image_folder")

    ids = match_ids(pd.Series(ids).reset_index(drop=True), tile_ids, source)
    splits = pd.Series(splits).reset_index(drop=True)
    train_split = str(c.train_split)
    if train_split not in set(splits):
        raise ValueError(f"{source}: no row has split {train_split!r}; "
                         f"splits: {sorted(set(splits))}")
    if c.eval_splits:
        eval_splits = [str(s) for s in c.eval_splits]
    else:
        eval_splits = sorted(set(splits) - {train_split})
    if not eval_splits:
        raise ValueError(f"{source}: only the training split {train_split!r} is present; "
                         "add an evaluation split (e.g. test)")
    for s in eval_splits:
        if s not in set(splits):
            raise ValueError(f"{source}: no row has split {s!r}; splits: {sorted(set(splits))}")
    table = pd.DataFrame({"image_id": ids.to_numpy(), "label": labels})
    frames = [table[(splits == s).to_numpy()] for s in [train_split, *eval_splits]]
    sets = build_datasets(feats, tile_ids, frames, source=str(folder / "tile_ids.npy"))
    return ProbeData(name=name, class_names=class_names, train=sets[0],
                     evals=dict(zip(eval_splits, sets[1:])), features_dir=folder,
                     notes={"labels": source, "train_split": train_split})


def _image_folder_table(
    root: Path, classes: list[str] | None
) -> tuple[pd.Series, np.ndarray, list[str], list[str], str]:
    """Rows of a ``<root>/<split>/<class>/<image>`` tree; ids ``<split>/<class>/<stem>``."""
    from rl_benchmarks.datasets.tiles_classification.image_folder import load_image_folder

    if not root.is_dir():
        raise FileNotFoundError(f"custom.image_folder is not a folder: {root}")
    split_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not split_dirs:
        raise ValueError(f"{root}: expected split folders <root>/<split>/<class>/<image>")
    if classes is None:
        classes = sorted({c.name for d in split_dirs for c in d.iterdir()
                          if c.is_dir() and not c.name.startswith(".")})
    ids, labels, splits = [], [], []
    for d in split_dirs:
        frame = load_image_folder(d, classes=classes)
        ids += [f"{d.name}/{i}" for i in frame["image_id"]]
        labels += frame["label"].astype(int).tolist()
        splits += [d.name] * len(frame)
    return pd.Series(ids), np.asarray(labels, dtype=np.int64), list(classes), splits, str(root)


# --------------------------------------------------------------------------------------
# the config's dataset
# --------------------------------------------------------------------------------------
def load_probe_data(cfg: DictConfig) -> ProbeData:
    """The dataset named by ``cfg.tile_dataset``: a reference one or ``custom``."""
    dataset = str(cfg.tile_dataset)
    if dataset in REFERENCE_DATASETS:
        return load_reference_data(cfg)
    if dataset == "custom":
        return load_custom_data(cfg)
    raise ValueError(f"unknown tile_dataset {dataset!r}: expected one of "
                     f"{sorted(REFERENCE_DATASETS) + ['custom']}")


# --------------------------------------------------------------------------------------
# features -> (X, y) tables (the reference's helpers)
# --------------------------------------------------------------------------------------
def remove_labels(
    features: np.ndarray, labels: np.ndarray, labels_to_remove: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Drop the rows whose label is in ``labels_to_remove`` and relabel the others so the
    labels stay contiguous (each label drops by the number of removed labels below it).

    NCT-CRC: removing BACK (1) maps ADI 0, DEB 2..TUM 8 to 0, 1..7.
    """
    labels = np.asarray(labels)
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    removed = np.atleast_1d(np.asarray(labels_to_remove, dtype=np.int64))
    keep = ~np.isin(labels, removed)
    kept = labels[keep].astype(np.int64)
    shift = (kept[:, None] > np.sort(removed)[None, :]).sum(axis=1)
    return features[keep], kept - shift


def build_datasets(
    features: np.ndarray,
    tile_ids: np.ndarray,
    frames: Sequence[pd.DataFrame],
    source: str = "tile_ids.npy",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Look the rows of each frame (``image_id`` and ``label`` columns, or image_id as
    index) up in the feature matrix by tile id; returns ``(X, y)`` per frame, in frame order.

    Every image_id must have features: missing ids raise an error naming ``source``.
    """
    tile_ids = np.asarray(tile_ids)
    if len(tile_ids) != len(features):
        raise ValueError(
            f"{source}: {len(tile_ids)} tile ids for {len(features)} feature rows"
        )
    lookup = pd.Index(tile_ids.astype(str))
    if not lookup.is_unique:
        dup = lookup[lookup.duplicated()][:3].tolist()
        raise ValueError(f"{source}: duplicate tile ids, e.g. {dup}")
    out = []
    for frame in frames:
        ids = _frame_ids(frame)
        if "label" not in frame.columns:
            raise ValueError(
                f"dataset frame has no 'label' column (columns: {list(frame.columns)})"
            )
        rows = lookup.get_indexer(ids)
        missing = rows < 0
        if missing.any():
            raise ValueError(
                f"{source}: {int(missing.sum())} of {len(ids)} tiles have no features, "
                f"e.g. {list(ids[missing][:3])}; re-run the feature extraction"
            )
        labels = pd.to_numeric(frame["label"], errors="coerce").to_numpy()
        if np.isnan(labels.astype(np.float64)).any():
            raise ValueError("dataset frame has missing or non-numeric labels")
        out.append((features[rows], labels.astype(np.int64)))
    return out


def _frame_ids(frame: pd.DataFrame) -> np.ndarray:
    if "image_id" in frame.columns:
        return frame["image_id"].astype(str).to_numpy()
    if frame.index.name == "image_id":
        return frame.index.astype(str).to_numpy()
    raise ValueError(f"dataset frame has no 'image_id' column (columns: {list(frame.columns)})")
