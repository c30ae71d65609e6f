"""A tiny generated CSV cohort with a planted signal, and the small-protocol overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

D = 8


def write_cohort(folder: Path, n_patients: int = 24, survival: bool = False, seed: int = 0) -> Path:
    """Slides with a planted signal: positive (or short-survival) slides have shifted tiles."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        y = p % 2
        time = float(rng.exponential(100.0) * np.exp(-2.0 * y) + 1.0)
        event = int(rng.random() < 0.8)
        for s in range(1 + p % 3 // 2):
            n = int(rng.integers(6, 12))
            x = rng.normal(size=(n, D)).astype(np.float32)
            x[: max(1, n // 2), 0] += 3.0 * y
            coords = np.stack([np.full(n, 12), np.arange(n), np.zeros(n)], 1)
            sid = f"slide_{p:02d}_{s}"
            np.save(folder / f"{sid}.npy", np.concatenate([coords, x], 1).astype(np.float32))
            row = {"slide_id": sid, "features_path": f"{sid}.npy", "patient_id": f"P{p:02d}"}
            if survival:
                row["time"], row["event"] = time, event
            else:
                row["label"] = ["normal", "tumour"][y]
            rows.append(row)
    path = folder / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


SMALL = [
    "task.validation_scheme.n_splits_outer=2",
    "task.validation_scheme.n_splits_inner=2",
    "task.validation_scheme.trainer_cfg.num_epochs=3",
    "task.validation_scheme.trainer_cfg.batch_size=4",
    "device=cpu",
]


def with_feature_folders(folder: Path, record_of) -> Path:
    """The cohort of :func:`write_cohort`, its features moved to ``feats/<slide>/features.npy``
    beside a ``features.json`` record built by ``record_of(index, slide_id, features)`` (the
    layout ``rlbench extract-slides`` writes); returns the cohort CSV, which points at them."""
    import json

    csv = write_cohort(folder)
    frame = pd.read_csv(csv)
    for i, row in frame.iterrows():
        d = folder / "feats" / row["slide_id"]
        d.mkdir(parents=True, exist_ok=True)
        (folder / row["features_path"]).rename(d / "features.npy")
        x = np.load(d / "features.npy")
        (d / "features.json").write_text(json.dumps(record_of(i, row["slide_id"], x)))
        frame.loc[i, "features_path"] = str(d / "features.npy")
    frame.to_csv(csv, index=False)
    return csv


def shifted_binary_cohort(folder: Path, seed: int = 0, n_patients: int = 16, dim: int = 6) -> Path:
    """A binary CSV cohort ``<folder>/cohort.csv`` (one slide of 6 tiles per patient, features
    beside it) whose positive slides have 3 tiles shifted by +3 on the first feature."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        y = p % 2
        x = rng.normal(size=(6, dim)).astype(np.float32)
        x[:3, 0] += 3.0 * y
        coords = np.stack([np.full(6, 12), np.arange(6), np.zeros(6)], 1)
        np.save(folder / f"s{p}.npy", np.concatenate([coords, x], 1).astype(np.float32))
        rows.append({"slide_id": f"s{p}", "features_path": f"s{p}.npy", "patient_id": f"P{p}",
                     "label": ["neg", "pos"][y]})
    path = folder / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path

