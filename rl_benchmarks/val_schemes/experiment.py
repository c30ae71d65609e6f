"""The cross-validation run folder: its layout, writers, readers, identity and lock.

One module owns ``<logs_root_dir>/cross_validation/<name>/`` so that every writer
(``rlbench cv``, the train/test evaluation) and every reader (``rlbench results``,
``rlbench report``, heatmaps, the demo, the resume step) agree on it, and so that no
reader runs code from a data file:

* new runs are written in JSON, CSV and ``torch.save`` state dicts (read back with
  ``weights_only=True``); non-finite numbers are written as JSON ``null`` and read back as
  ``nan``;
* the reference's pickles (``params.pkl``, ``status.pkl``, ``*_metrics.pkl``) are still
  read, through :class:`RestrictedUnpickler`, which builds plain data only (builtins
  containers and scalars, numpy arrays and scalars, OmegaConf nodes) and refuses any
  other global with an error naming the file and the global.

The experiment name hashes the configuration (:func:`params2experiment_name`) together
with the identity of the features (each slide's extraction record, or name + size + mtime
of a features file without one) and of the cohort (sha256 of its CSV or label files), so a
rerun on other features or labels never reuses stale results. A lock file keeps two runs
of the same experiment from writing the same folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rl_benchmarks.utils.io import atomic_open, sha256_file, write_csv, write_json
from rl_benchmarks.utils.safe_names import safe_name
from rl_benchmarks.utils.safe_pickle import RestrictedUnpickler, UnsafePickleError, load_legacy_pickle
from rl_benchmarks.val_schemes.predictions import load_predictions, predictions_frame

logger = logging.getLogger("rl_benchmarks.cv")

# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------
CV_SUBDIR = "cross_validation"
PARAMS = "params.json"
STATUS = "status.json"
TRAIN_METRICS = "train_metrics.json"
TEST_METRICS = "test_metrics.json"
SELECTED_PARAMS = "selected_params.json"
SUMMARY = "summary.json"
PREDICTIONS_DIR = "predictions"
MODELS_DIR = "models"
TEST_PREDICTIONS = "test_predictions.csv"
LOCK = ".lock"
_KEEP_ON_RESET = (LOCK, ".locks.guard")  # the lock and the guard file of its takeover
# the reference's (and this package's earlier) pickled files, read-only
LEGACY = {
    PARAMS: "params.pkl",
    STATUS: "status.pkl",
    TRAIN_METRICS: "train_metrics.pkl",
    TEST_METRICS: "test_metrics.pkl",
}
FEATURES_RECORD = "features.json"  # written beside features.npy by ``rlbench extract-slides``

CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")


class ExperimentLockedError(RuntimeError):
    """Another live process holds the experiment's lock file."""


class NonFiniteMetricsError(ValueError):
    """Some outer-fold test metric is NaN or infinite: the run is not marked completed."""


# --------------------------------------------------------------------------------------
# JSON with non-finite numbers
# --------------------------------------------------------------------------------------
def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON data: numpy scalars/arrays to Python, tuples to lists, and every
    non-finite float to ``None`` (JSON ``null``; :func:`metrics_from_json` reads it as nan)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a bad one raises ValueError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def metrics_from_json(obj: Any, source: str) -> dict[str, dict[str, list[float]]]:
    """``{metric: {fold: [one value per epoch]}}`` with ``null`` read back as nan."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected {{metric: {{fold: [values]}}}}, got "
                         f"{type(obj).__name__}")
    out: dict[str, dict[str, list[float]]] = {}
    for metric, folds in obj.items():
        if not isinstance(folds, Mapping):
            raise ValueError(f"{source}: metric {metric!r} is not a {{fold: [values]}} mapping")
        out[str(metric)] = {}
        for fold, values in folds.items():
            seq = values if isinstance(values, (list, tuple, np.ndarray)) else [values]
            out[str(metric)][str(fold)] = [
                float("nan") if v is None else float(v) for v in seq
            ]
    return out


def plain_container(obj: Any) -> Any:
    """A DictConfig/ListConfig (from a reference pickle) as a resolved plain container."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(obj, resolve=True)
        except Exception:  # noqa: BLE001 - e.g. ${hydra:...}: keep the interpolation text
            return OmegaConf.to_container(obj, resolve=False)
    return obj


# --------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExperimentFolder:
    """``<logs_root_dir>/cross_validation/<name>/``: paths, writers and readers."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def find(self, name: str) -> Path | None:
        """The file ``name`` (e.g. ``PARAMS``), else its reference-format pickle, else None."""
        for candidate in (name, LEGACY.get(name)):
            if candidate and (self.path / candidate).is_file():
                return self.path / candidate
        return None

    def _read(self, name: str) -> Any:
        path = self.find(name)
        if path is None:
            raise FileNotFoundError(f"{self.path / name}: not found (nor {LEGACY.get(name)})")
        if path.suffix == ".pkl":
            return plain_container(load_legacy_pickle(path))
        return read_json(path)

    def _write(self, name: str, obj: Any) -> None:
        write_json(self.path / name, json_safe(obj))

    # -- params, status ----------------------------------------------------------------
    def write_params(self, config: Mapping[str, Any], identity: Mapping[str, Any] | None) -> None:
        """``params.json``: the resolved configuration, plus ``identity`` (features, cohort)."""
        params = dict(config)
        if identity is not None:
            params["identity"] = dict(identity)
        self._write(PARAMS, params)

    def read_params(self) -> dict[str, Any]:
        """The configuration as a plain dict (``params.json``, or a reference ``params.pkl``)."""
        params = self._read(PARAMS)
        if not isinstance(params, Mapping):
            raise ValueError(f"{self.find(PARAMS)}: expected a configuration mapping, got "
                             f"{type(params).__name__}")
        return dict(params)

    def write_status(self, completed: bool) -> None:
        self._write(STATUS, {"completed": bool(completed)})

    def read_status(self) -> dict[str, Any]:
        """``{"completed": bool}``; an absent status reads as not completed."""
        if self.find(STATUS) is None:
            return {"completed": False}
        status = self._read(STATUS)
        if not isinstance(status, Mapping):
            raise ValueError(f"{self.find(STATUS)}: expected {{'completed': bool}}")
        return dict(status)

    def is_completed(self) -> bool:
        return bool(self.read_status().get("completed"))

    # -- metrics, selected parameters, summary -----------------------------------------
    def write_metrics(self, which: str, metrics: Mapping[str, Mapping[str, Sequence[float]]],
                      ) -> None:
        """``train_metrics.json`` / ``test_metrics.json`` (``which`` = "train" or "test")."""
        self._write(_metrics_name(which), metrics)

    def read_metrics(self, which: str) -> dict[str, dict[str, list[float]]]:
        name = _metrics_name(which)
        return metrics_from_json(self._read(name), str(self.find(name)))

    def write_selected_params(self, selected: Mapping[str, Any]) -> None:
        self._write(SELECTED_PARAMS, selected)

    def read_selected_params(self) -> dict[str, Any]:
        """Per outer fold, the selected hyper-parameters ({} when the file is absent)."""
        path = self.path / SELECTED_PARAMS
        return dict(read_json(path)) if path.is_file() else {}

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        self._write(SUMMARY, summary)

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` ({} when absent: reference runs have none)."""
        path = self.path / SUMMARY
        return dict(read_json(path)) if path.is_file() else {}

    def log_path(self) -> Path | None:
        logs = sorted(self.path.glob("*.log"))
        return logs[0] if logs else None

    # -- predictions -------------------------------------------------------------------
    def write_predictions(self, fold: str, frame: pd.DataFrame) -> Path:
        path = self.path / PREDICTIONS_DIR / f"{fold}.csv"
        write_csv(path, frame, index=False)
        return path

    def prediction_files(self) -> list[Path]:
        return sorted((self.path / PREDICTIONS_DIR).glob("*.csv"))

    def read_predictions(self) -> pd.DataFrame:
        """Every outer fold's predictions in one validated frame (:func:`load_predictions`)."""
        return load_predictions(self.path / PREDICTIONS_DIR)

    def write_test_predictions(self, frame: pd.DataFrame) -> Path:
        path = self.path / TEST_PREDICTIONS
        write_csv(path, frame, index=False)
        return path

    # -- fold models -------------------------------------------------------------------
    def model_path(self, fold: str) -> Path:
        return self.path / MODELS_DIR / f"{fold}.pt"

    def save_fold_model(self, fold: str, state: Mapping[str, Any]) -> Path:
        import torch

        path = self.model_path(fold)
        with atomic_open(path, "wb") as f:
            torch.save(dict(state), f)
        return path

    def fold_model_paths(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted((self.path / MODELS_DIR).glob("*.pt"))}

    def load_fold_model(self, fold: str) -> dict[str, Any]:
        """A fold's state dict, loaded with ``weights_only=True`` (no code runs)."""
        import torch

        path = self.model_path(fold)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no model saved for fold {fold}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unreadable or not plain tensors
            raise ValueError(f"{path}: not a state dict ({type(err).__name__}: {err})") from None

    # -- lifecycle ---------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the folder (a partial run), keeping the lock, and mark it not completed."""
        self.path.mkdir(parents=True, exist_ok=True)
        for child in self.path.iterdir():
            if child.name in _KEEP_ON_RESET:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        self.write_status(False)

    def lock(self) -> ExperimentLock:
        return ExperimentLock(self.path / LOCK)


def _metrics_name(which: str) -> str:
    if which not in ("train", "test"):
        raise ValueError(f"metrics are 'train' or 'test', got {which!r}")
    return TRAIN_METRICS if which == "train" else TEST_METRICS


@dataclass
class RunRecord:
    """What the readers of a completed run need."""

    folder: Path
    params: dict[str, Any]
    test_metrics: dict[str, dict[str, list[float]]]
    selected_params: dict[str, Any]
    summary: dict[str, Any]
    log_path: Path | None


def load_run(folder: str | os.PathLike) -> RunRecord | None:
    """The record of a completed experiment folder; None when it is not completed."""
    exp = ExperimentFolder(Path(folder))
    if not exp.is_completed():
        return None
    return RunRecord(folder=exp.path, params=exp.read_params(),
                     test_metrics=exp.read_metrics("test"),
                     selected_params=exp.read_selected_params(), summary=exp.read_summary(),
                     log_path=exp.log_path())


def last_epoch_values(folds: Mapping[str, Sequence[float]]) -> np.ndarray:
    """The outer-fold test metric: the last epoch's value of each fold (nan when empty)."""
    return np.array([v[-1] if len(v) else np.nan for v in folds.values()], dtype=float)


def summarise_metrics(metrics: Mapping[str, Mapping[str, Sequence[float]]],
                      ) -> dict[str, dict[str, Any]]:
    """Per metric, the mean and std over outer folds of the last epoch's value (nan when no
    fold is finite) and the folds' values: ``summary.json``'s ``test`` and the results
    table's ``mean_*``/``std_*``."""
    out = {}
    for name, folds in metrics.items():
        last = last_epoch_values(folds)
        finite = np.isfinite(last).any()
        out[name] = {"mean": float(np.nanmean(last)) if finite else float("nan"),
                     "std": float(np.nanstd(last)) if finite else float("nan"),
                     "folds": last.tolist()}
    return out


def check_finite_test_metrics(test_metrics: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
    """Raise :class:`NonFiniteMetricsError` naming the outer folds whose last-epoch test
    metric is NaN or infinite (the run then stays "not completed")."""
    bad: dict[str, list[str]] = {}
    for metric, folds in test_metrics.items():
        for fold, value in zip(folds, last_epoch_values(folds)):
            if not math.isfinite(value):
                bad.setdefault(str(fold), []).append(f"{metric}={value}")
    if bad:
        detail = ", ".join(f"{fold} ({', '.join(v)})" for fold, v in sorted(bad.items()))
        raise NonFiniteMetricsError(
            f"non-finite test metrics in outer fold(s) {detail}: the run is not marked "
            "completed (look for NaN/inf in the features, or a diverging learning rate)"
        )


# --------------------------------------------------------------------------------------
# Lock
# --------------------------------------------------------------------------------------
@dataclass
class ExperimentLock:
    """The lock file ``<experiment>/.lock`` (pid, host, start time), taken with
    :func:`rl_benchmarks.extraction.locks.try_lock`: created atomically, and a lock whose
    pid is dead on this host (a killed run) is stale and taken over.

    A lock held by a live process makes :meth:`acquire` raise
    :class:`ExperimentLockedError` naming its pid and host: the second run exits rather
    than waits (a CV run takes hours, and once the first one completes, calling again
    skips to its result).
    """

    path: Path
    held: bool = False

    def acquire(self) -> ExperimentLock:
        from rl_benchmarks.extraction import locks

        owner = locks.try_lock(self.path)
        if owner is not None:
            who = (f"pid {owner.pid} on host {owner.host}" if owner.pid > 0
                   else "an unknown process (the lock file is unreadable)")
            raise ExperimentLockedError(
                f"{self.path.parent}: another rlbench cv of this experiment is running "
                f"({who}); wait for it, or delete {self.path} if that run is dead"
            )
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            from rl_benchmarks.extraction import locks

            locks.release(self.path)
            self.held = False

    def __enter__(self) -> ExperimentLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------------------
# Configuration -> dataset (shared by the cv command and the train/test evaluation)
# --------------------------------------------------------------------------------------
def is_csv(value: Any) -> bool:
    """Whether a ``cohort``/``task`` value is a cohort CSV path."""
    return isinstance(value, str) and value.lower().endswith(CSV_SUFFIXES)


def features_root(cfg: Any) -> str | None:
    """Reference cohorts: ``<features_root_dir or data_dir/preprocessed>/slides_classification/
    features/<extractor>``; CSV cohorts: ``features_root_dir`` as given."""
    if is_csv(cfg.task.data.train.get("cohort")):
        return cfg.get("features_root_dir")
    extractor = cfg.task.data.get("feature_extractor", "iBOTViTBasePANCAN")
    if cfg.get("features_root_dir"):
        root = Path(cfg.features_root_dir)
    else:
        from rl_benchmarks.constants import preprocessed_dir

        root = Path(preprocessed_dir(cfg.get("data_dir")))
    return str(root / "slides_classification" / "features" / safe_name(str(extractor)))


def build_dataset(cfg: Any, data_cfg: Any | None = None) -> Any:
    """Instantiate ``task.data.train`` (or ``data_cfg``) with the features root (n_tiles
    reaches the dataset through the task's interpolation)."""
    from hydra.utils import instantiate

    kwargs: dict[str, Any] = {"features_root_dir": features_root(cfg)}
    if cfg.get("data_dir"):
        kwargs["data_dir"] = cfg.data_dir
    data_cfg = cfg.task.data.train if data_cfg is None else data_cfg
    return instantiate(data_cfg, **kwargs)


def logs_root(override: str | os.PathLike | None) -> Path:
    """The logs root of the cv/results commands; the error names their key ``logs_root_dir``."""
    from rl_benchmarks.paths import logs_dir

    try:
        return logs_dir(override)
    except ValueError:
        raise ValueError(
            "no logs folder: pass logs_root_dir=<path> on the command line, set $RLB_LOGS_DIR, "
            "or write logs_save_dir: <path> in conf.yaml"
        ) from None


# --------------------------------------------------------------------------------------
# Experiment identity: features and cohort
# --------------------------------------------------------------------------------------
# keys of an extraction record that decide the features, for records without "settings"
# (paths, versions, worker counts and the full configuration left out)
_RECORD_SETTINGS = ("extractor", "tile_size", "mpp", "n_tiles_requested", "random_sampling",
                    "seed", "precision", "float16")
_EXTRACTOR_IGNORED = ("weights",)  # a path: weights_sha256 says which weights


def features_record_path(features_path: str | os.PathLike) -> Path | None:
    """``features.json`` beside a ``features.npy`` or ``features.h5`` written by
    ``extract-slides`` (None for other file names, e.g. TRIDENT's ``<slide>.h5``)."""
    p = Path(features_path)
    return p.parent / FEATURES_RECORD if p.name in ("features.npy", "features.h5") else None


def _record_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that made a slide's features: the record's ``settings`` (what
    ``rlbench extract-slides`` matches before skipping a slide), else the same facts
    picked from an older record."""
    if isinstance(record.get("settings"), Mapping):
        return dict(record["settings"])
    settings = {k: record.get(k) for k in _RECORD_SETTINGS if k in record}
    if isinstance(settings.get("extractor"), Mapping):
        settings["extractor"] = {k: v for k, v in settings["extractor"].items()
                                 if k not in _EXTRACTOR_IGNORED}
    return settings


def _extractor_name(settings: Mapping[str, Any] | None) -> str | None:
    extractor = (settings or {}).get("extractor")
    if isinstance(extractor, Mapping):
        extractor = extractor.get("name")
    return None if extractor is None else str(extractor)


def _digest(obj: Any) -> str:
    text = json.dumps(json_safe(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def features_identity(features: Sequence[Any], slide_ids: Sequence[str]) -> dict[str, Any]:
    """Identity of a cohort's features, cheap to compute (stat + small JSON reads).

    Per slide: its extraction record's settings (extractor and weights sha256, tile size,
    mpp, n_tiles, sampling, seed, precision) plus the record's tile count and the file size;
    for a file without a record (the reference's downloaded features), its name, size and
    mtime. Slides whose records differ in their settings, or a mix of slides with and
    without records, are an error naming two such slides. Returns ``digest``, ``extractor``
    (from the records, else None), ``settings`` (the common record settings, else None),
    ``n_slides`` and ``n_records``.
    """
    entries: list[Any] = []
    with_record: dict[str, tuple[Path, dict[str, Any]]] = {}
    without_record: list[str] = []
    for sid, f in zip(slide_ids, features):
        sid = str(sid)
        if isinstance(f, np.ndarray):
            entries.append([sid, "array", hashlib.sha256(np.ascontiguousarray(f).tobytes())
                            .hexdigest()])
            without_record.append(sid)
            continue
        path = Path(f)
        st = path.stat()
        rec_path = features_record_path(path)
        if rec_path is not None and rec_path.is_file():
            record = read_json(rec_path)
            if not isinstance(record, Mapping):
                raise ValueError(f"{rec_path}: an extraction record must be a JSON object")
            settings = _record_settings(record)
            with_record[sid] = (rec_path, settings)
            entries.append([sid, "record", settings, record.get("n_tiles"), record.get("shape"),
                            record.get("dtype"), st.st_size])
        else:
            without_record.append(sid)
            entries.append([sid, "file", path.name, st.st_size, st.st_mtime_ns])
    settings = None
    if with_record:
        first_sid, (first_path, settings) = next(iter(with_record.items()))
        for sid, (rec_path, other) in with_record.items():
            if other != settings:
                keys = sorted(k for k in set(settings) | set(other)
                              if settings.get(k) != other.get(k))
                raise ValueError(
                    f"features of slide {first_sid} ({first_path}) and slide {sid} ({rec_path}) "
                    f"come from different extractions (they differ in {', '.join(keys)}): "
                    "extract the whole cohort with one extractor and one set of settings"
                )
        if without_record:
            raise ValueError(
                f"slide {first_sid} has an extraction record ({first_path}) but slide "
                f"{without_record[0]} has none: the cohort mixes features of different origins"
            )
    return {"digest": _digest(entries), "extractor": _extractor_name(settings),
            "settings": settings,
            "n_slides": len(entries), "n_records": len(with_record)}


#: ``task.data.feature_extractor`` of the task skeleton a CSV cohort runs with: it chooses
#: the features folder of the reference cohorts and says nothing about a CSV cohort's features
TEMPLATE_FEATURE_EXTRACTOR = "iBOTViTBasePANCAN"


def run_extractor(cfg: Any, identity: Mapping[str, Any]) -> str | None:
    """The extractor a run records (``summary.json``, ``rlbench results``, ``rlbench report``).

    It is the one named in the features' extraction records (``identity["features"]``).
    ``task.data.feature_extractor`` overrides it on a CSV cohort when set to another value
    than the task skeleton's default; on a reference cohort it chose the features folder
    (``features/<name>``) and names the features only when they carry no record. None when
    neither says anything (a CSV cohort of features without records).
    """
    configured = cfg.task.data.get("feature_extractor")
    configured = None if configured in (None, "") else str(configured)
    recorded = (identity.get("features") or {}).get("extractor")
    if is_csv(cfg.task.data.train.get("cohort")):
        if configured is not None and configured != TEMPLATE_FEATURE_EXTRACTOR:
            return configured
        return recorded
    if recorded and configured and recorded != configured:
        logger.warning("task.data.feature_extractor=%s, but the features' records name the "
                       "extractor %s: the run records %s", configured, recorded, recorded)
    return recorded or configured


def recorded_extractor(params: Mapping[str, Any], summary: Mapping[str, Any] | None = None,
                       ) -> str | None:
    """The extractor of a finished run, for its readers: ``summary.json``'s ``extractor``,
    else the features' records (``params.json`` ``identity``), else the configuration's
    ``task.data.feature_extractor`` (reference runs, which record nothing else)."""
    if summary and summary.get("extractor"):
        return str(summary["extractor"])
    identity = params.get("identity") if isinstance(params, Mapping) else None
    features = identity.get("features") if isinstance(identity, Mapping) else None
    if isinstance(features, Mapping) and features.get("extractor"):
        return str(features["extractor"])
    task = params.get("task") if isinstance(params, Mapping) else None
    data = task.get("data") if isinstance(task, Mapping) else None
    value = data.get("feature_extractor") if isinstance(data, Mapping) else None
    return None if value in (None, "") else str(value)


def cohort_files(cohort: str, label: str | None, data_dir: str | os.PathLike | None = None,
                 ) -> list[Path]:
    """The files a cohort's table is read from: the CSV of a CSV cohort; the clinical/label
    files the reference loaders read for the built-in cohorts."""
    if is_csv(cohort):
        return [Path(cohort)]
    from rl_benchmarks import constants

    name = str(cohort).strip().upper()
    if name.startswith("CAMELYON16_"):
        labels = constants.camelyon16_paths(data_dir)["LABELS"]
        part = name.split("_", 1)[1]
        return [labels[p] for p in (["TRAIN", "TEST"] if part == "FULL" else [part])
                if p in labels]
    if name.startswith("TCGA_"):
        paths = constants.tcga_paths(data_dir)
        files: list[Path] = []
        for sub in constants.TCGA_UNIONS.get(name, [name]):
            if label in ("OS", "CANCER_SUBTYPE"):
                files.append(paths["LABELS"]["OS"](sub))
            elif label in ("MSI", "HRD"):
                files.append(paths["LABELS"][label](sub))
            elif label in ("MOLECULAR_SUBTYPE", "HISTOLOGICAL_SUBTYPE"):
                files.extend(paths["SUBTYPES_CANDIDATES"](sub))
        return [Path(f) for f in files]
    return []


def cohort_identity(cohort: str, label: str | None, data_dir: str | os.PathLike | None = None,
                    ) -> dict[str, Any]:
    """sha256 over the cohort's files (:func:`cohort_files`; an absent one counts as absent)."""
    files = cohort_files(cohort, label, data_dir)
    entries = [[f.name, sha256_file(f) if f.is_file() else None] for f in files]
    return {"digest": _digest([str(cohort).rsplit("/", 1)[-1], label, entries]),
            "files": [str(f) for f in files if f.is_file()]}


def experiment_identity(cfg: Any, dataset: Any) -> dict[str, Any]:
    """``{"features": features_identity, "cohort": cohort_identity}`` of a run's dataset."""
    train = cfg.task.data.train
    features = list(getattr(dataset, "features", []))
    slide_ids = list(getattr(dataset, "slide_id", range(len(features))))
    return {
        "features": features_identity(features, slide_ids),
        "cohort": cohort_identity(str(train.get("cohort")), train.get("label"),
                                  cfg.get("data_dir")),
    }


def identity_digests(identity: Mapping[str, Any]) -> dict[str, str]:
    """The part of an identity that enters the experiment name."""
    return {key: str(value["digest"]) for key, value in identity.items()}


# --------------------------------------------------------------------------------------
# Names people use: task · model · extractor
# --------------------------------------------------------------------------------------
TASK_NAME_KEY = "task_name"  # the optional cv key that names the task (not in the hash)


def _node(params: Any, path: str) -> Any:
    node = params
    for key in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _csv_stem(path: str) -> str:
    name = Path(str(path)).name
    for suffix in sorted(CSV_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


@functools.lru_cache(maxsize=1)
def reference_task_names() -> dict[tuple[str, str], str]:
    """``{(COHORT, LABEL): task name}`` of the built-in tasks (``task/<name>.yaml`` of
    ``rlbench cv``), so that a reference run is named as it was chosen
    (``tcga_crc_msi_prediction``); the test tasks (``test_*``) only where nothing else has
    their cohort and label."""
    from omegaconf import OmegaConf

    from rl_benchmarks.paths import CONF_ROOT

    out: dict[tuple[str, str], str] = {}
    folder = CONF_ROOT / "slide_level_task" / "cross_validation" / "task"
    files = sorted(folder.glob("*.yaml"), key=lambda p: (p.stem.startswith("test_"), p.stem))
    for path in files:
        try:
            train = OmegaConf.load(path).data.train
            key = (str(train.cohort).upper(), str(train.label).upper())
        except Exception:  # noqa: BLE001 - a task file without data.train: not a reference task
            continue
        out.setdefault(key, path.stem)
    return out


def task_name(params: Mapping[str, Any]) -> str:
    """The task of a run as people name it: ``task_name`` when the run set it, else the
    cohort CSV's stem (``cohort_classification``), else the built-in task's name
    (``tcga_crc_msi_prediction``), else ``<cohort> <label>``. Never a path."""
    given = params.get(TASK_NAME_KEY) if isinstance(params, Mapping) else None
    if given not in (None, ""):
        return str(given)
    cohort = _node(params, "task.data.train.cohort")
    label = _node(params, "task.data.train.label")
    if cohort is None:
        return "task"
    if is_csv(cohort):
        return _csv_stem(str(cohort))
    known = reference_task_names().get((str(cohort).upper(), str(label).upper()))
    return known or " ".join(str(v) for v in (cohort, label) if v not in (None, ""))


def task_key(params: Mapping[str, Any]) -> str:
    """What makes two runs the same task: the cohort as given (an absolute CSV path; it is
    hashed into a suffix when two tasks share a name, never shown) and the label."""
    return json.dumps([str(_node(params, "task.data.train.cohort")),
                       str(_node(params, "task.data.train.label"))])


def model_name(params: Mapping[str, Any]) -> str:
    """The MIL model's class name (``ABMIL``) of a run's configuration ("" when absent)."""
    target = _node(params, "task.validation_scheme.trainer_cfg.model._target_")
    return str(target or "").rsplit(".", 1)[-1]


def experiment_label(params: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> str:
    """``task · model · extractor`` (:func:`task_name`, :func:`model_name`,
    :func:`recorded_extractor`), the name a run is shown and plotted by; empty parts are left
    out."""
    parts = [task_name(params), model_name(params), recorded_extractor(params, summary) or ""]
    return " · ".join(p.strip() for p in parts if p and p.strip())


def experiment_labels(runs: Mapping[Any, tuple[Mapping[str, Any], Mapping[str, Any] | None]],
                      ) -> dict[Any, str]:
    """``{key: "task · model · extractor"}`` for several runs (``{key: (params, summary)}``),
    unique among them: two tasks that share a name (``cohort.csv`` in two folders) get a
    short hash of their cohort (``cohort [3fa2c1]``), and two runs that still share a label
    a short hash of their key (e.g. the experiment folder)."""
    from rl_benchmarks.utils.safe_names import unique_labels

    tasks = unique_labels({task_key(p): task_name(p) for p, _ in runs.values()})
    labels = {}
    for key, (params, summary) in runs.items():
        parts = [tasks[task_key(params)], model_name(params), recorded_extractor(params, summary) or ""]
        labels[key] = " · ".join(p.strip() for p in parts if p and p.strip())
    return unique_labels(labels, {key: str(key) for key in runs})


def experiment_folder(root: str | os.PathLike, name: str) -> ExperimentFolder:
    """``<root>/cross_validation/<name>``."""
    return ExperimentFolder(Path(root) / CV_SUBDIR / name)


def iter_experiments(root: str | os.PathLike) -> Iterator[ExperimentFolder]:
    """Every experiment folder under ``<root>/cross_validation``."""
    for folder in sorted((Path(root) / CV_SUBDIR).glob("*/")):
        yield ExperimentFolder(folder)


__all__ = [
    "ExperimentFolder", "ExperimentLock", "ExperimentLockedError", "NonFiniteMetricsError",
    "RestrictedUnpickler", "RunRecord", "UnsafePickleError", "build_dataset",
    "check_finite_test_metrics", "cohort_identity", "experiment_identity", "experiment_label", "experiment_labels",
    "features_identity", "features_root", "load_legacy_pickle", "load_run", "model_name",
    "predictions_frame", "recorded_extractor", "run_extractor", "summarise_metrics", "task_key",
    "task_name",
]
