"""``rlbench linear-eval``: linear probe (and kNN probe) of tile features.

Reference datasets (reference-system.md §9):

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
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rl_benchmarks import paths
from rl_benchmarks.utils import io
from rl_benchmarks.utils.linear_evaluation import build_datasets, remove_labels

logger = logging.getLogger(__name__)

PROG = "rlbench linear-eval"


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
    """``<features_root_dir or data_dir/preprocessed>/tiles_classification/features/<ext>/<folder>``."""
    root = cfg.features_root_dir
    if root in (None, ""):
        root = paths.data_dir(cfg.get("data_dir")) / "preprocessed"
    return Path(root) / "tiles_classification" / "features" / str(cfg.feature_extractor) / cohort_folder


def load_tile_features(folder: Path, trust: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``tile_features.npy`` (memory-mapped) and ``tile_ids.npy`` of ``folder``, neither
    unpickled (an object-array ``tile_ids.npy`` of older versions only with ``trust``)."""
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
        ids = read_tile_ids(ids_path, trust=trust)
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
    try:
        from rl_benchmarks.datasets import load_dataset
    except ImportError:  # package without the re-export
        from rl_benchmarks.datasets.loading import load_dataset

    spec = REFERENCE_DATASETS[cfg.tile_dataset]
    folder = features_dir_for(cfg, f"{spec.cohort}_FULL")
    feats, ids = load_tile_features(folder, trust=bool(cfg.get("trust", False)))
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


def _class_codes(labels: pd.Series, classes: Sequence[str] | None, source: str) -> tuple[np.ndarray, list[str]]:
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
    feats, tile_ids = load_tile_features(folder, trust=bool(cfg.get("trust", False)))
    classes = list(c.classes) if c.classes else None

    if c.labels_csv and c.image_folder:
        raise ValueError("give custom.labels_csv or custom.image_folder, not both")
    if c.labels_csv:
        source = str(c.labels_csv)
        if not Path(source).is_file():
            raise FileNotFoundError(f"custom.labels_csv not found: {source}")
        frame = pd.read_csv(source)
        missing = [col for col in (c.id_column, c.label_column, c.split_column)
                   if col not in frame.columns]
        if missing:
            raise ValueError(f"{source}: missing column(s) {missing}; found {list(frame.columns)} "
                             "(set custom.id_column / label_column / split_column)")
        ids = frame[c.id_column]
        labels, class_names = _class_codes(frame[c.label_column], classes, f"{source}: column {c.label_column!r}")
        splits = frame[c.split_column].astype(str)
    elif c.image_folder:
        ids, labels, class_names, splits, source = _image_folder_table(Path(c.image_folder), classes)
    else:
        raise ValueError("tile_dataset=custom needs custom.labels_csv or custom.image_folder")

    ids = match_ids(pd.Series(ids).reset_index(drop=True), tile_ids, source)
    splits = pd.Series(splits).reset_index(drop=True)
    train_split = str(c.train_split)
    if train_split not in set(splits):
        raise ValueError(f"{source}: no row has split {train_split!r}; splits: {sorted(set(splits))}")
    eval_splits = [str(s) for s in c.eval_splits] if c.eval_splits else sorted(set(splits) - {train_split})
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


def _image_folder_table(root: Path, classes: list[str] | None):
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
# entry point
# --------------------------------------------------------------------------------------
def probe_config(cfg: DictConfig):
    from rl_benchmarks.evaluation.linear_probe import LinearProbeConfig

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
    )
    config.validate()
    return config


def output_paths(out_dir: Path, stem: str, eval_names: Sequence[str]) -> dict[str, Path]:
    """First evaluation set -> ``<stem>.csv`` (the reference's file), others ``<stem>_<name>.csv``."""
    return {name: out_dir / (f"{stem}.csv" if i == 0 else f"{stem}_{name}.csv")
            for i, name in enumerate(eval_names)}


def run_linear_evaluation(cfg: DictConfig) -> dict[str, Path]:
    """Run the probe described by ``cfg``; returns the CSV written per evaluation set."""
    from rl_benchmarks.evaluation.linear_probe import effective_workers, linear_probe
    from rl_benchmarks.utils.seed import set_seed

    config = probe_config(cfg)
    dataset = str(cfg.tile_dataset)
    if dataset in REFERENCE_DATASETS:
        data = load_reference_data(cfg)
    elif dataset == "custom":
        data = load_custom_data(cfg)
    else:
        raise ValueError(f"unknown tile_dataset {dataset!r}: expected one of "
                         f"{sorted(REFERENCE_DATASETS) + ['custom']}")
    out_dir = paths.logs_dir(cfg.logs_root_dir or None) / "linear_evaluation"
    stem = f"{data.name}_{cfg.feature_extractor}"
    csvs = output_paths(out_dir, stem, list(data.evals))
    set_seed(config.seed)

    n_train = len(data.train[1])
    print(f"{PROG}: {data.name}, {len(data.class_names)} classes, {n_train} training tiles, "
          + ", ".join(f"{k} {len(v[1])}" for k, v in data.evals.items())
          + f" evaluation tiles; features {data.features_dir} (D={data.train[0].shape[1]}); "
          f"{len(config.portions)} portion(s) x {config.n_ensembling} seeds on "
          f"{effective_workers(config.num_workers, config.n_ensembling)} worker(s)")
    record = {
        "command": "linear-eval",
        "config": OmegaConf.to_container(cfg, resolve=True),
        "features_dir": str(data.features_dir),
        "class_names": data.class_names,
        "n_train": n_train,
        "n_eval": {k: len(v[1]) for k, v in data.evals.items()},
        "sources": data.notes,
        "outputs": {k: str(v) for k, v in csvs.items()},
        "versions": _versions(),
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
    _print_summary(tables, csvs, elapsed)
    return csvs


def _print_summary(tables: dict[str, pd.DataFrame], csvs: dict[str, Path], elapsed: float) -> None:
    cols = ["portion", "n_train", "auc", "acc", "f1", "bacc", "knn_acc", "knn_bacc"]
    for name, table in tables.items():
        print(f"{PROG}: {name} -> {csvs[name]}")
        print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"{PROG}: done in {elapsed:.1f} s")


def _versions() -> dict[str, str]:
    import sklearn

    import rl_benchmarks

    return {"rl_benchmarks": getattr(rl_benchmarks, "__version__", "unknown"),
            "scikit-learn": sklearn.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0]}


def main(cfg: DictConfig) -> int:
    """``rlbench linear-eval key=value ...``; user errors print one line and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_linear_evaluation(cfg)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("linear-eval", sys.argv[1:]))
