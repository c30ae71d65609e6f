"""Fold splitting and grid expansion for the validation schemes.

``split_cv`` keeps every patient (or center) in one fold and stratifies on
``dataset.stratified``; it returns ``(train_indices, test_indices)`` numpy arrays of
positions in the dataset it was given, as the reference does. Unlike the reference it
raises a clear error *before any training* when a fold would miss a class or when there
are fewer patients than folds.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
)
from torch.utils.data import Subset

SPLIT_MODES = ("patient_split", "center_split", "random_split")


def root_dataset(dataset: Any) -> tuple[Any, np.ndarray]:
    """Return the underlying dataset of (nested) ``Subset`` s and the absolute indices."""
    if isinstance(dataset, Subset):
        parent, parent_idx = root_dataset(dataset.dataset)
        return parent, parent_idx[np.asarray(dataset.indices, dtype=np.int64)]
    return dataset, np.arange(len(dataset), dtype=np.int64)


def _attribute(root: Any, name: str, idx: np.ndarray) -> np.ndarray | None:
    values = getattr(root, name, None)
    if values is None:
        return None
    values = np.asarray(values)
    if values.ndim == 0 or len(values) == 0:
        return None
    return values[idx]


def split_cv(
    dataset: Any,
    n_splits: int = 5,
    stratified: bool = True,
    split_mode: str = "patient_split",
    shuffle: bool = True,
    random_state: int = 42,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split ``dataset`` into ``n_splits`` folds of ``(train_indices, test_indices)``.

    ``dataset`` is any indexable object with ``stratified`` (the vector to stratify on,
    or None), ``patient_id`` and ``center_id`` attributes, or a (nested) ``Subset`` of
    one, whose attributes are read through its indices. The indices are int64 positions
    in ``dataset`` itself (the reference's return type): for a ``Subset``, positions in
    the subset, i.e. ``Subset(dataset, train_indices)`` is the train part; map them to
    the root with ``root_dataset(dataset)[1][train_indices]``. ``split_mode`` is
    ``patient_split`` (groups = patients), ``center_split`` (groups = centers) or
    ``random_split`` (no groups).
    """
    if split_mode not in SPLIT_MODES:
        raise ValueError(f"split_mode={split_mode!r} is unknown; expected one of {SPLIT_MODES}")
    if int(n_splits) < 2:
        raise ValueError(f"n_splits={n_splits} must be at least 2")
    n_splits = int(n_splits)
    root, idx = root_dataset(dataset)
    n = len(idx)
    y = _attribute(root, "stratified", idx)
    groups = None
    if split_mode != "random_split":
        key = "patient_id" if split_mode == "patient_split" else "center_id"
        groups = _attribute(root, key, idx)
        if groups is None:
            raise ValueError(f"split_mode={split_mode!r} needs dataset.{key}, which is missing")
        n_groups = len(np.unique(groups))
        if n_groups < n_splits:
            what = "patients" if key == "patient_id" else "centers"
            raise ValueError(
                f"{split_mode}: only {n_groups} distinct {what} for n_splits={n_splits} folds; "
                f"lower n_splits or add {what}"
            )
    elif n < n_splits:
        raise ValueError(f"random_split: only {n} samples for n_splits={n_splits} folds")

    if y is not None:
        unit = "samples" if groups is None else (
            "patients" if split_mode == "patient_split" else "centers")
        _check_class_counts(y, groups, n_splits, unit)
    rs = random_state if shuffle else None
    x_dummy = np.zeros((n, 1))
    if stratified and y is not None:
        if groups is not None:
            splitter = StratifiedGroupKFold(n_splits, shuffle=shuffle, random_state=rs)
        else:
            splitter = StratifiedKFold(n_splits, shuffle=shuffle, random_state=rs)
        folds = list(splitter.split(x_dummy, y, groups))
    elif groups is not None:
        folds = list(GroupKFold(n_splits, shuffle=shuffle, random_state=rs).split(x_dummy, None, groups))
    else:
        folds = list(KFold(n_splits, shuffle=shuffle, random_state=rs).split(x_dummy))

    if y is not None:
        classes = np.unique(y)
        for k, (tr, te) in enumerate(folds):
            for part, name in ((tr, "train"), (te, "test")):
                missing = np.setdiff1d(classes, np.unique(y[part]))
                if len(missing):
                    raise ValueError(
                        f"{split_mode} fold {k + 1}/{n_splits}: class {_py(missing[0])!r} of the "
                        f"stratification labels has no sample in the {name} part "
                        f"({len(part)} samples); lower n_splits or add samples of that class"
                    )
    return [(np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64)) for tr, te in folds]


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _check_class_counts(
    y: np.ndarray, groups: np.ndarray | None, n_splits: int, unit: str
) -> None:
    """Raise when a class has fewer samples (patients, centers) than folds."""
    for c in np.unique(y):
        sel = y == c
        count = len(np.unique(groups[sel])) if groups is not None else int(sel.sum())
        if count < n_splits:
            raise ValueError(
                f"class {_py(c)!r} of the stratification labels has only {count} {unit}, fewer "
                f"than n_splits={n_splits}: some fold would miss it; lower n_splits"
            )


def _options(value: Any) -> list[Any]:
    if isinstance(value, (Mapping, DictConfig)):
        return generate_permutations(value)
    if isinstance(value, (ListConfig,)):
        return list(OmegaConf.to_container(value, resolve=True))
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return [value]


def generate_permutations(
    grid_search_params: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """Expand a grid: lists are expanded (itertools product, first key slowest), scalars
    are copied, nested dicts are expanded recursively. ``None`` or ``{}`` gives ``[{}]``.
    ``grid_search_params`` is the reference's keyword (positional use works too)."""
    params = grid_search_params
    if params is None:
        return [{}]
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    keys = list(params.keys())
    values = [_options(params[k]) for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def update_trainer_cfg(trainer_cfg: DictConfig | dict, params: Mapping[str, Any]) -> DictConfig:
    """A copy of ``trainer_cfg`` with ``params`` merged in (nested dicts merged key by key)."""
    cfg = copy.deepcopy(trainer_cfg) if isinstance(trainer_cfg, DictConfig) else OmegaConf.create(
        trainer_cfg
    )
    with open_dict(cfg):
        for key, value in params.items():
            if isinstance(value, Mapping) and isinstance(cfg.get(key), DictConfig):
                cfg[key] = update_trainer_cfg(cfg[key], value)
            else:
                cfg[key] = value
    return cfg
