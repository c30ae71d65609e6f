"""The cross-validation run folder (issue J): JSON layout, reference pickles read as plain data
only, experiment identity (features + cohort), the lock, non-finite test metrics."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from testlib.cohorts import SMALL, with_feature_folders, write_cohort

from rl_benchmarks.cli.cross_validation import preprocess_overrides
from rl_benchmarks.cli.main import main as rlbench
from rl_benchmarks.val_schemes.experiment import (
    ExperimentFolder,
    ExperimentLockedError,
    UnsafePickleError,
    features_identity,
    load_legacy_pickle,
)

FAST = ["task.validation_scheme.trainer_cfg.num_epochs=2",
        "task.validation_scheme.grid_search_params.learning_rate=[1e-3]",
        "task.validation_scheme.grid_search_params.weight_decay=[0.0]"]


def cv(csv: Path, logs: Path, *extra: str) -> int:
    args = preprocess_overrides([f"task={csv}", "model=mean_pool", f"logs_root_dir={logs}",
                                 *SMALL, *FAST, *extra])
    return rlbench(["cv", *args])


def runs(logs: Path) -> list[Path]:
    return sorted((logs / "cross_validation").glob("*/"))


class Marker:
    """Unpickling it would create ``path`` (through a callable the allow-list refuses)."""

    def __init__(self, path: Path, how: str) -> None:
        self.path, self.how = str(path), how

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch {self.path}",)
        return open, (self.path, "w")  # builtins, but not an allowed name


def crafted(path: Path, marker: Path, how: str = "open", wrap: bool = True) -> None:
    payload = {"completed": True, "x": Marker(marker, how)} if wrap else Marker(marker, how)
    path.write_bytes(pickle.dumps(payload))


def legacy_folder(root: Path, name: str = "b2xkcnVu", auc: tuple = (0.8, 0.6)) -> Path:
    """A run folder in the reference's pickle layout (as its tool and our earlier versions
    wrote it): a pickled DictConfig, numpy floats in the metrics."""
    folder = root / "cross_validation" / name
    (folder / "predictions").mkdir(parents=True)
    cfg = OmegaConf.create({
        "task": {"data": {"feature_extractor": "iBOTViTBasePANCAN", "n_tiles": 1000,
                          "train": {"cohort": "TCGA_CRC", "label": "MSI"}},
                 "validation_scheme": {
                     "n_splits_outer": 2, "n_splits_inner": 2, "n_repeats_outer": 1,
                     "n_repeats_inner": 1, "stratified": True, "split_mode": "patient_split",
                     "grid_search_params": {"learning_rate": [1e-3]},
                     "trainer_cfg": {"batch_size": 16, "num_epochs": 2, "learning_rate": 2e-4,
                                     "weight_decay": 0.0,
                                     "model": {"_target_": "rl_benchmarks.models.Chowder",
                                               "n_top": 5}}}},
        "n_tiles_copy": "${task.data.n_tiles}",
    })
    (folder / "params.pkl").write_bytes(pickle.dumps(cfg))
    (folder / "status.pkl").write_bytes(pickle.dumps({"completed": True}))
    metrics = {"auc": {f"repeat_1_split_{k + 1}": [np.float64(0.5), np.float64(a)]
                       for k, a in enumerate(auc)},
               "loss": {f"repeat_1_split_{k + 1}": [np.float32(0.7), np.float32(0.6)]
                        for k in range(2)}}
    (folder / "test_metrics.pkl").write_bytes(pickle.dumps(metrics))
    (folder / "train_metrics.pkl").write_bytes(pickle.dumps(metrics))
    (folder / f"{name}.log").write_text("log\n")
    rng = np.random.default_rng(0)
    for k in range(2):
        y = np.array([0, 1] * 5)
        pd.DataFrame({"fold": f"repeat_1_split_{k + 1}", "slide_id": [f"s{k}{i}" for i in range(10)],
                      "patient_id": [f"p{k}{i}" for i in range(10)], "label": y,
                      "score": y + rng.normal(size=10)}).to_csv(
            folder / "predictions" / f"repeat_1_split_{k + 1}.csv", index=False)
    return folder


# -- JSON layout ------------------------------------------------------------------------
def test_metrics_nan_round_trip_as_json_null(tmp_path):
    exp = ExperimentFolder(tmp_path / "exp")
    metrics = {"auc": {"repeat_1_split_1": [0.5, float("nan")], "repeat_1_split_2": [np.float32(1)]}}
    exp.write_metrics("test", metrics)
    text = (tmp_path / "exp" / "test_metrics.json").read_text()
    assert "NaN" not in text and "null" in text
    json.loads(text)  # strict JSON
    back = exp.read_metrics("test")
    assert back["auc"]["repeat_1_split_1"][0] == 0.5
    assert math.isnan(back["auc"]["repeat_1_split_1"][1])
    assert back["auc"]["repeat_1_split_2"] == [1.0]


# -- reference pickles: plain data only -------------------------------------------------
def test_legacy_pickles_read_as_plain_data(tmp_path):
    folder = legacy_folder(tmp_path)
    exp = ExperimentFolder(folder)
    assert exp.is_completed()
    params = exp.read_params()
    assert isinstance(params, dict) and params["n_tiles_copy"] == 1000  # DictConfig resolved
    assert exp.read_metrics("test")["auc"]["repeat_1_split_2"] == [0.5, 0.6]
    assert isinstance(load_legacy_pickle(folder / "params.pkl"), object)
    # numpy arrays and OrderedDict are data too; protocol 2 as well
    from collections import OrderedDict

    data = OrderedDict(a=np.arange(3, dtype=np.int16), b=np.float64(2.5), c=b"xy")
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(data, protocol=2))
    back = load_legacy_pickle(tmp_path / "p.pkl")
    assert back["a"].tolist() == [0, 1, 2] and back["b"] == 2.5 and back["c"] == b"xy"


@pytest.mark.parametrize("how", ["open", "system"])
def test_restricted_unpickler_refuses_callables(tmp_path, how):
    marker = tmp_path / "marker"
    crafted(tmp_path / "status.pkl", marker, how)
    with pytest.raises(UnsafePickleError, match=r"status\.pkl: refused to unpickle the global"):
        load_legacy_pickle(tmp_path / "status.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("which", ["params.pkl", "status.pkl", "test_metrics.pkl"])
def test_results_refuses_crafted_pickle(tmp_path, capsys, which):
    logs = tmp_path / "logs"
    folder = legacy_folder(logs)
    marker = tmp_path / "marker"
    crafted(folder / which, marker)
    assert rlbench(["results", f"logs_root_dir={logs}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rlbench results: error:")
    assert which in err[-1] and "io.open" in err[-1]
    assert not marker.exists()


def test_report_refuses_crafted_params(tmp_path, capsys):
    folder = legacy_folder(tmp_path)
    marker = tmp_path / "marker"
    crafted(folder / "params.pkl", marker, "system", wrap=False)
    assert rlbench(["report", f"run_dir={tmp_path}", "draw_figures=false"]) == 2
    err = capsys.readouterr().err
    assert "params.pkl: refused to unpickle the global" in err and "system" in err
    assert not marker.exists()


def test_legacy_folder_reads_with_results_and_report(tmp_path, capsys):
    logs = tmp_path / "logs"
    legacy_folder(logs)
    assert rlbench(["results", f"logs_root_dir={logs}"]) == 0
    table = pd.read_csv(logs / "cross_validation" / "nested_cross_validation_results.csv")
    assert len(table) == 1
    row = table.iloc[0]
    assert row["model"] == "Chowder" and row["cohort"] == "TCGA_CRC" and row["n_splits"] == "2x2"
    assert row["mean_auc"] == pytest.approx(0.7) and row["std_auc"] == pytest.approx(0.1)
    assert row["log_path"].endswith("b2xkcnVu.log")
    capsys.readouterr()
    assert rlbench(["report", f"run_dir={logs}", "draw_figures=false"]) == 0
    assert "experiments: 1" in capsys.readouterr().out
    from rl_benchmarks.reports.report import build_report

    rep = build_report(logs, draw_figures=False)
    assert rep.experiments == ["tcga_crc_msi_prediction · Chowder · iBOTViTBasePANCAN"]


# -- cv end to end: resume, identity, lock, non-finite metrics ---------------------------
def test_cv_resume_refuses_crafted_status(tmp_path, capsys):
    csv = write_cohort(tmp_path)
    logs = tmp_path / "logs"
    assert cv(csv, logs) == 0
    (run,) = runs(logs)
    (run / "status.json").unlink()
    marker = tmp_path / "marker"
    crafted(run / "status.pkl", marker)
    capsys.readouterr()
    assert cv(csv, logs) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("rlbench cv: error:") and "status.pkl" in err and "io.open" in err
    assert not marker.exists()
    assert not (run / ".lock").exists()  # released on the error


def test_identity_other_features_make_a_new_experiment(tmp_path, capsys):
    csv = write_cohort(tmp_path)
    logs = tmp_path / "logs"
    assert cv(csv, logs) == 0
    (first,) = runs(logs)
    capsys.readouterr()
    assert cv(csv, logs) == 0  # same features: skipped
    assert "already completed, skipped" in capsys.readouterr().out
    # other features under the same names (a re-extraction): not a skip
    path = tmp_path / "slide_00_0.npy"
    x = np.load(path)
    x[:, 3:] += 1.0
    np.save(path, x)
    os.utime(path, ns=(0, 10**18))  # another mtime even on coarse clocks
    assert cv(csv, logs) == 0
    out = capsys.readouterr().out
    assert "already completed" not in out
    assert len(runs(logs)) == 2
    # the identity is recorded in params.json and summary.json
    second = next(r for r in runs(logs) if r != first)
    params = json.loads((second / "params.json").read_text())
    summary = json.loads((second / "summary.json").read_text())
    assert params["identity"] == summary["identity"]
    assert params["identity"]["features"]["digest"] != json.loads(
        (first / "params.json").read_text())["identity"]["features"]["digest"]
    assert params["identity"]["cohort"]["files"] == [str(csv)]
    assert summary["extractor"] is None  # no records, no override: unknown, not the task default
    # other labels (the cohort CSV's content): a new experiment too
    frame = pd.read_csv(csv)
    frame.loc[0, "label"] = "tumour" if frame.loc[0, "label"] == "normal" else "normal"
    frame.to_csv(csv, index=False)
    assert cv(csv, logs) == 0
    assert len(runs(logs)) == 3


def _features_dirs(tmp_path: Path, sha: dict[str, str] | None = None,
                   settings: bool = False) -> Path:
    """A CSV cohort whose features sit in <slide>/features.npy with extraction records
    (with ``settings``: the record's own ``settings`` block, as extract-slides now writes)."""
    def record_of(i, slide_id, x):
        record = {"extractor": {"name": "TinyViT", "weights": f"/somewhere/{i}.pth",
                                "weights_sha256": (sha or {}).get(slide_id, "ab" * 32)},
                  "tile_size": 224, "mpp": 0.5, "n_tiles_requested": 1000, "seed": 0,
                  "random_sampling": False, "precision": "fp32", "package_version": f"0.{i}",
                  "config": {"output_dir": f"/out/{i}"}, "n_tiles": len(x),
                  "shape": list(x.shape), "dtype": "float32"}
        if settings:
            record["settings"] = {"extractor": "TinyViT", "weights_sha256": record["extractor"][
                "weights_sha256"], "tile_size": 224, "mpp": 0.5, "n_tiles": 1000, "seed": 0}
        return record

    return with_feature_folders(tmp_path, record_of)


@pytest.mark.parametrize("settings", [False, True], ids=["older-record", "settings-block"])
def test_identity_from_extraction_records(tmp_path, capsys, settings):
    csv = _features_dirs(tmp_path, settings=settings)
    logs = tmp_path / "logs"
    assert cv(csv, logs) == 0
    (run,) = runs(logs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["extractor"] == "TinyViT"  # read from the records
    assert summary["identity"]["features"]["n_records"] == len(pd.read_csv(csv))
    # the records' paths, versions and timestamps do not matter: touching files is a skip
    for f in (tmp_path / "feats").glob("*/features.npy"):
        os.utime(f, ns=(0, 10**18))
    capsys.readouterr()
    assert cv(csv, logs) == 0
    assert "already completed" in capsys.readouterr().out
    # other weights for every slide: a new experiment
    for rec in (tmp_path / "feats").glob("*/features.json"):
        data = json.loads(rec.read_text())
        data["extractor"]["weights_sha256"] = "cd" * 32
        if settings:
            data["settings"]["weights_sha256"] = "cd" * 32
        rec.write_text(json.dumps(data))
    assert cv(csv, logs) == 0
    assert len(runs(logs)) == 2


def test_cohort_mixing_extractions_is_an_error(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    csv = _features_dirs(tmp_path / "a", sha={"slide_03_0": "ef" * 32})
    assert cv(csv, tmp_path / "logs") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("rlbench cv: error: features of slide ")
    assert "slide_03_0" in err and "different extractions" in err and "extractor" in err
    # a slide without a record among slides with records: an error too
    frame = pd.read_csv(csv)
    odd = frame.features_path[frame.slide_id == "slide_03_0"].item()
    Path(odd).with_name("features.json").unlink()
    feats = [Path(p) for p in frame.features_path]
    with pytest.raises(ValueError, match="has an extraction record .* but slide slide_03_0 has none"):
        features_identity(feats, list(frame.slide_id))


def test_lock_held_by_live_pid_then_stale_lock_taken_over(tmp_path, capsys):
    csv = write_cohort(tmp_path)
    logs = tmp_path / "logs"
    assert cv(csv, logs) == 0
    (run,) = runs(logs)
    exp = ExperimentFolder(run)
    exp.write_status(False)  # as if the first run were still going
    import socket

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                               "started": "2024-01-01T00:00:00"}))
        capsys.readouterr()
        assert cv(csv, logs) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err
        assert not exp.is_completed() and (run / ".lock").exists()
        with pytest.raises(ExperimentLockedError):
            exp.lock().acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and taken over
    assert cv(csv, logs) == 0
    assert exp.is_completed() and not (run / ".lock").exists()


def test_non_finite_test_metric_fails_the_run(tmp_path, capsys, monkeypatch):
    from rl_benchmarks.val_schemes.nested_cross_validation import NestedCrossValidation

    original = NestedCrossValidation.run

    def nan_fold(self, dataset):
        train, test = original(self, dataset)
        test["auc"]["repeat_1_split_2"][-1] = float("nan")
        return train, test

    monkeypatch.setattr(NestedCrossValidation, "run", nan_fold)
    csv = write_cohort(tmp_path)
    logs = tmp_path / "logs"
    assert cv(csv, logs) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("rlbench cv: error: non-finite test metrics")
    assert "repeat_1_split_2 (auc=nan)" in err[-1] and "repeat_1_split_1" not in err[-1]
    (run,) = runs(logs)
    exp = ExperimentFolder(run)
    assert not exp.is_completed() and not (run / "summary.json").exists()
    assert math.isnan(exp.read_metrics("test")["auc"]["repeat_1_split_2"][-1])
    # not skipped on the next call: it runs again (and now succeeds)
    monkeypatch.setattr(NestedCrossValidation, "run", original)
    assert cv(csv, logs) == 0
    assert "already completed" not in capsys.readouterr().out and exp.is_completed()


def test_missing_logs_root_names_the_accepted_key(tmp_path, monkeypatch, capsys):
    import rl_benchmarks.paths as paths

    monkeypatch.delenv("RLB_LOGS_DIR", raising=False)
    monkeypatch.setattr(paths, "_from_conf_yaml", lambda key: None)
    csv = write_cohort(tmp_path)
    args = preprocess_overrides([f"task={csv}", *SMALL])
    assert rlbench(["cv", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "logs_root_dir=<path>" in err and "logs_save_dir=" not in err
    assert rlbench(["results"]) == 2
    assert "logs_root_dir=<path>" in capsys.readouterr().err
