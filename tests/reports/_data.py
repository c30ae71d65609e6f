"""Small generated prediction tables for the report tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rl_benchmarks.utils.io import write_csv


def binary_predictions(n: int = 60, n_folds: int = 5, seed: int = 0, effect: float = 1.2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = np.tile([0, 1], n // 2 + 1)[:n]
    rng.shuffle(label)
    return pd.DataFrame({
        "slide_id": [f"s{i:03d}" for i in range(n)],
        "patient_id": [f"p{i:03d}" for i in range(n)],
        "fold": np.arange(n) % n_folds,
        "label": label,
        "score": label * effect + rng.normal(0, 1, n),
    })


def survival_predictions(n: int = 40, n_folds: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    time = rng.exponential(30, n) + 0.5
    return pd.DataFrame({
        "slide_id": [f"s{i:03d}" for i in range(n)],
        "patient_id": [f"p{i:03d}" for i in range(n)],
        "fold": np.arange(n) % n_folds,
        "time": np.round(time, 1),
        "event": (rng.uniform(size=n) < 0.7).astype(int),
        "risk": -np.log(time) + rng.normal(0, 0.8, n),
    })


def write_per_fold(frame: pd.DataFrame, folder, repeat: int = 0) -> None:
    """Write ``predictions_<repeat>_<fold>.csv`` files without fold/repeat columns."""
    for k, g in frame.groupby("fold"):
        write_csv(folder / f"predictions_{repeat}_{k}.csv", g.drop(columns="fold"), index=False)
