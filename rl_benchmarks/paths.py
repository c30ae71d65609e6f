"""Where data and logs live.

``data_dir`` and ``logs_save_dir`` are looked up, in this order: an explicit
argument (a command-line key), the environment variables ``RLB_DATA_DIR`` and
``RLB_LOGS_DIR``, a ``conf.yaml`` in the current directory, then a ``conf.yaml``
at the repository root (the reference's place). Nothing is read at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

_ENV = {"data_dir": "RLB_DATA_DIR", "logs_save_dir": "RLB_LOGS_DIR"}
REPO_ROOT = Path(__file__).resolve().parent.parent
# the Hydra config folders of every command (package data)
CONF_ROOT = Path(__file__).resolve().parent / "conf"


def _from_conf_yaml(key: str) -> str | None:
    for conf in (Path.cwd() / "conf.yaml", REPO_ROOT / "conf.yaml"):
        if conf.is_file():
            with open(conf) as f:
                values = yaml.safe_load(f) or {}
            value = values.get(key)
            if value:
                return str(value)
    return None


def resolve_root(key: str, override: str | os.PathLike | None = None) -> Path:
    """Return the root for ``key`` ("data_dir" or "logs_save_dir").

    Raises a ValueError that says how to set it when no source gives a value.
    """
    if key not in _ENV:
        raise KeyError(f"unknown root {key!r}; expected one of {sorted(_ENV)}")
    if override not in (None, ""):
        return Path(override).expanduser()
    env = os.environ.get(_ENV[key])
    if env:
        return Path(env).expanduser()
    value = _from_conf_yaml(key)
    if value:
        return Path(value).expanduser()
    raise ValueError(
        f"{key} is not set: pass {key}=<path> on the command line, set ${_ENV[key]}, "
        f"or write it in conf.yaml"
    )


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data root (``raw/``, ``preprocessed/``, ``weights/`` live below it)."""
    return resolve_root("data_dir", override)


def logs_dir(override: str | os.PathLike | None = None) -> Path:
    """The logs root (cross-validation experiments, linear evaluation CSVs)."""
    return resolve_root("logs_save_dir", override)
