"""Experiment bookkeeping of the cross-validation command (docs/protocol.md#run-folder).

An experiment is named by a hash of its configuration (without the paths and the device)
and, in ``rlbench cv``, of the identity of its features and cohort: the same run always
maps to the same folder and a completed one is skipped, while a run on other features or
labels gets a folder of its own. The folder's files are read and written by
:mod:`rl_benchmarks.val_schemes.experiment`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rl_benchmarks.utils.seed import set_seed

__all__ = ["params2experiment_name", "resume_training", "set_seed", "flatten", "NAME_EXCLUDED"]

# keys that do not change the results and so do not enter the experiment name (task_name and
# verbose only change what is shown: naming a task does not re-run it)
NAME_EXCLUDED = ("features_root_dir", "logs_root_dir", "data_dir", "device", "task_name", "verbose")


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


def params2experiment_name(
    params: DictConfig | Mapping[str, Any], identity: Mapping[str, str] | None = None
) -> str:
    """A stable name for a configuration: sha256 of the sorted flattened items (without
    paths and device), base64-encoded with "/" replaced by "0".

    ``identity`` (``{"features": <digest>, "cohort": <digest>}``) enters the hash too, so
    the same configuration on other features or labels gets another name; without it the
    name is the reference's.
    """
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
    if identity:
        items += sorted((f"identity.{k}", str(v)) for k, v in identity.items())
    digest = hashlib.sha256(repr(items).encode()).digest()
    return base64.b64encode(digest).decode().replace("/", "0").rstrip("=")


def resume_training(experiment_folder: str | os.PathLike) -> bool:
    """True when the experiment in ``experiment_folder`` is completed (skip it); otherwise
    empty the folder (a partial run; its lock file is kept), mark it not completed and
    return False. A reference-format ``status.pkl`` is read through the restricted
    unpickler: one that asks for anything but plain data raises ``UnsafePickleError``."""
    from rl_benchmarks.val_schemes.experiment import ExperimentFolder, UnsafePickleError

    exp = ExperimentFolder(Path(experiment_folder))
    try:
        if exp.is_completed():
            return True
    except UnsafePickleError:
        raise
    except (OSError, ValueError):  # an unreadable status means an unfinished run
        pass
    exp.reset()
    return False
