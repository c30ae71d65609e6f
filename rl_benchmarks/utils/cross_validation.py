"""Experiment bookkeeping of the cross-validation command (reference §7.6).

An experiment is named by a hash of its configuration (without the paths and the device),
so the same configuration always maps to the same folder and a completed one is skipped.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rl_benchmarks.utils.io import load_pickle, save_pickle
from rl_benchmarks.utils.seed import set_seed

__all__ = ["params2experiment_name", "resume_training", "set_seed", "flatten", "NAME_EXCLUDED"]

# keys that do not change the results and so do not enter the experiment name
NAME_EXCLUDED = ("features_root_dir", "logs_root_dir", "data_dir", "device")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``{"a.b.c": value}`` (lists are kept as values)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def params2experiment_name(params: DictConfig | Mapping[str, Any]) -> str:
    """A stable name for a configuration: sha256 of the sorted flattened items (without
    paths and device), base64-encoded with "/" replaced by "0"."""
    container = (
        OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig)
        else dict(params)
    )
    for key in NAME_EXCLUDED:
        container.pop(key, None)
    trainer = (container.get("task") or {}).get("validation_scheme", {}).get("trainer_cfg")
    if isinstance(trainer, dict):
        trainer.pop("device", None)
    items = sorted(flatten(container).items())
    digest = hashlib.sha256(repr(items).encode()).digest()
    return base64.b64encode(digest).decode().replace("/", "0").rstrip("=")


def resume_training(experiment_folder: str | os.PathLike) -> bool:
    """True when the experiment in ``experiment_folder`` is completed (skip it); otherwise
    wipe the folder (a partial run) and recreate it empty, and return False."""
    folder = Path(experiment_folder)
    status = folder / "status.pkl"
    if status.is_file():
        try:
            if load_pickle(status).get("completed"):
                return True
        except Exception:  # noqa: BLE001 - an unreadable status means an unfinished run
            pass
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_pickle(status, {"completed": False})
    return False
