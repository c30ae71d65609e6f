"""Torch datasets over per-slide feature matrices (``features.npy``, (N, 3+D), or a
TRIDENT/CLAM ``.h5`` read through :func:`rl_benchmarks.utils.features.read_feature_matrix`).

Features are memory-mapped and read per item, never preloaded: the RAM held by a dataset
is its slide table plus the item being read. Every read checks the rows it read for NaN
or inf (one vectorised ``isfinite``) and names the slide and its file when it finds one.
Each item samples ``n_tiles`` rows of its slide under seed control (see
:meth:`SlideFeaturesDataset.sample_indices`). For
trainers that want the whole cohort in one tensor, :meth:`SlideFeaturesDataset.as_tensor`
materialises it padded, in float32 or float16, with a memory check up front.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from rl_benchmarks.datasets.validation import (
    CohortError,
    check_classes,
    check_features_file,
    check_finite,
    warn_missing_features,
)
from rl_benchmarks.utils.seed import derive_seed

METADATA_COLS = 3  # [dz_level, col, row] before the D features


class SlideTensors(NamedTuple):
    """A padded cohort: ``features`` (S, n, C), ``mask`` (S, n, 1) bool with True on
    padding (the MIL models' convention), ``labels`` (S, 1) float32."""

    features: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor


def _take(array: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
    """Rows ``idx`` of a (memory-mapped) array, read in file order for locality."""
    if idx is None:
        return np.array(array)
    if len(idx) == array.shape[0]:
        return np.asarray(array)[idx]
    order = np.argsort(idx, kind="stable")
    rows = np.asarray(array[idx[order]])
    out = np.empty_like(rows)
    out[order] = rows
    return out


class SlideFeaturesDataset(Dataset):
    """Items ``(float32 tensor (n_i, 3+D), float32 tensor (1,))`` over per-slide features.

    Args:
        features: per slide, a ``features.npy`` path (memory-mapped at each read), an
            ``.h5`` path (TRIDENT/CLAM layout, read whole at each read) or an array.
        labels: one number per slide (NaN when unlabelled).
        n_tiles: tiles per item; a slide with fewer keeps all of its tiles. None = all.
        shuffle: draw a random subset in random order (the reference shuffles); False
            takes the first ``n_tiles`` rows in file order.
        seed: base seed. The j-th read of slide s in epoch e uses
            ``derive_seed(seed, e, s, j)``: reproducible, independent of the order in
            which slides are read. Call :meth:`set_epoch` to restart the count (needed
            for identical draws across DataLoader worker processes).
        slide_ids: names used in seeds (default: the index).
    """

    def __init__(
        self,
        features: Sequence[str | os.PathLike | np.ndarray],
        labels: Sequence[float] | np.ndarray,
        n_tiles: int | None = 1000,
        shuffle: bool = True,
        seed: int = 0,
        slide_ids: Sequence[str] | None = None,
    ) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature matrices but {len(labels)} labels")
        self.features = [f if isinstance(f, np.ndarray) else str(f) for f in features]
        self.labels = np.asarray(labels, dtype=np.float64)
        self.n_tiles = None if n_tiles is None or int(n_tiles) <= 0 else int(n_tiles)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        ids = slide_ids if slide_ids is not None else [str(i) for i in range(len(features))]
        self.slide_id = np.asarray(list(ids), dtype=object)
        self._draws = np.zeros(len(self.features), dtype=np.int64)
        shapes = [self._shape(i) for i in range(len(self.features))]
        self.n_tiles_per_slide = np.array([s[0] for s in shapes], dtype=np.int64)
        widths = {s[1] for s in shapes}
        if len(widths) > 1:
            first = {w: i for i, (_, w) in reversed(list(enumerate(shapes)))}
            detail = ", ".join(f"{w} ({self._name(first[w])})" for w in sorted(widths))
            raise CohortError(f"features have different widths: {detail}")
        self.width = widths.pop() if widths else 0
        self.n_features = self.width - METADATA_COLS if self.width else 0

    # -- reading -------------------------------------------------------------------
    def _name(self, i: int) -> str:
        f = self.features[i]
        return f if isinstance(f, str) else f"array #{i}"

    def _source(self, i: int) -> str:
        """``slide <id> (<file>)``: how errors name a slide."""
        return f"slide {self.slide_id[i]} ({self._name(i)})"

    def _shape(self, i: int) -> tuple[int, int]:
        f = self.features[i]
        if isinstance(f, str):
            return check_features_file(f)
        if f.ndim != 2 or f.shape[1] <= METADATA_COLS or f.shape[0] == 0:
            raise CohortError(f"features #{i}: expected (n_tiles > 0, 3 + D), got {f.shape}")
        return int(f.shape[0]), int(f.shape[1])

    def open(self, i: int) -> np.ndarray:
        """The feature matrix of slide ``i``, memory-mapped (nothing read yet)."""
        f = self.features[i]
        if not isinstance(f, str):
            return f
        from rl_benchmarks.datasets.h5_features import H5FeaturesError
        from rl_benchmarks.utils.features import read_feature_matrix

        try:
            return read_feature_matrix(f)
        except H5FeaturesError as exc:
            raise CohortError(f"slide {self.slide_id[i]}: {exc}") from None

    def read(self, i: int, idx: np.ndarray | None) -> np.ndarray:
        """Rows ``idx`` (None = all) of slide ``i``, checked for NaN/inf (an error naming
        the slide and its file: a NaN would silently turn every metric into NaN)."""
        rows = _take(self.open(i), idx)
        check_finite(rows, self._source(i), idx)
        return rows

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: draws are keyed by (seed, epoch, slide, draw count)."""
        self.epoch = int(epoch)
        self._draws[:] = 0

    def sample_indices(self, i: int, n_tiles: int | None = None, key: object = None) -> np.ndarray | None:
        """Row indices of slide ``i`` for one item (None = all rows in file order).

        ``key`` None draws the next sample of this slide (the draw count advances);
        any other key gives a fixed draw ``derive_seed(seed, key, slide)``.
        """
        n_rows = int(self.n_tiles_per_slide[i])
        n_tiles = self.n_tiles if n_tiles is None else (None if n_tiles <= 0 else int(n_tiles))
        n = n_rows if n_tiles is None else min(n_tiles, n_rows)
        if not self.shuffle:
            return None if n == n_rows else np.arange(n)
        if key is None:
            seed = derive_seed(self.seed, self.epoch, self.slide_id[i], int(self._draws[i]))
            self._draws[i] += 1
        else:
            seed = derive_seed(self.seed, key, self.slide_id[i])
        rng = np.random.default_rng(seed)
        return rng.permutation(n_rows)[:n] if n == n_rows else rng.choice(n_rows, n, replace=False)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.read(i, self.sample_indices(i))
        x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        return x, torch.tensor([self.labels[i]], dtype=torch.float32)

    # -- fast path -----------------------------------------------------------------
    def tensor_nbytes(
        self, n_tiles: int | None = None, dtype: torch.dtype = torch.float32,
        indices: Sequence[int] | None = None, drop_metadata: bool = False,
    ) -> int:
        """Bytes of the features tensor :meth:`as_tensor` would allocate."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        n = self._padded_len(n_tiles, idx)
        width = self.n_features if drop_metadata else self.width
        return int(len(idx) * n * width * torch.empty((), dtype=dtype).element_size())

    def _padded_len(self, n_tiles: int | None, idx: np.ndarray) -> int:
        n_tiles = self.n_tiles if n_tiles is None else (None if n_tiles <= 0 else int(n_tiles))
        longest = int(self.n_tiles_per_slide[idx].max()) if len(idx) else 0
        return longest if n_tiles is None else min(n_tiles, longest)

    def as_tensor(
        self,
        n_tiles: int | None = None,
        dtype: torch.dtype = torch.float32,
        indices: Sequence[int] | None = None,
        drop_metadata: bool = False,
        key: object = "as_tensor",
        max_bytes: int | None = None,
        progress: bool = False,
    ) -> SlideTensors:
        """Materialise slides ``indices`` (default all) as one padded tensor.

        Each slide gets the fixed draw of ``sample_indices(i, n_tiles, key)`` (first rows
        when ``shuffle=False``), zero padding and mask True beyond its tiles. The result
        is (S, n, 3+D) (or (S, n, D) with ``drop_metadata``) in ``dtype``: S·n·C·4 bytes
        in float32 (1,000 slides × 1,000 tiles × 771 = 3.1 GB), half in float16. It is
        filled slide by slide from the memory maps, so the peak is the tensor plus one
        slide. Raises MemoryError before allocating when it would not fit ``max_bytes``
        (default: 90% of the available RAM).
        """
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        n = self._padded_len(n_tiles, idx)
        need = self.tensor_nbytes(n_tiles, dtype, idx, drop_metadata)
        if max_bytes is None:
            import psutil

            max_bytes = int(0.9 * psutil.virtual_memory().available)
        if need > max_bytes:
            raise MemoryError(
                f"as_tensor needs {need / 2**30:.2f} GiB for {len(idx)} slides x {n} tiles "
                f"but {max_bytes / 2**30:.2f} GiB is allowed; use dtype=torch.float16, fewer "
                "tiles, or the per-item dataset"
            )
        start = METADATA_COLS if drop_metadata else 0
        width = self.width - start
        feats = torch.empty((len(idx), n, width), dtype=dtype)
        mask = torch.ones((len(idx), n, 1), dtype=torch.bool)
        low_precision = torch.finfo(dtype).max < torch.finfo(torch.float32).max
        items = enumerate(idx)
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(items, total=len(idx), desc="loading features", unit="slide")
        for row, i in items:
            rows = self.read(int(i), self.sample_indices(int(i), n, key))
            k = len(rows)
            feats[row, :k].copy_(torch.from_numpy(rows[:, start:]))  # one cast-and-copy
            if low_precision and not bool(torch.isfinite(feats[row, :k]).all()):
                raise CohortError(
                    f"{self._source(int(i))}: feature values overflow {dtype} (|x| > "
                    f"{torch.finfo(dtype).max:g}); use dtype=torch.float32"
                )
            feats[row, k:] = 0
            mask[row, :k] = False
        labels = torch.as_tensor(self.labels[idx], dtype=torch.float32).reshape(-1, 1)
        return SlideTensors(feats, mask, labels)

    def as_padded_tensor(self, **kwargs: object) -> SlideTensors:
        """Alias of :meth:`as_tensor` (the name the ensemble trainer looks for)."""
        return self.as_tensor(**kwargs)


class SlideClassificationDataset(SlideFeaturesDataset):
    """The slides of a cohort with their labels, as the MIL trainers consume them.

    Args:
        features_root_dir: folder of the extractor's features (holding
            ``CAMELYON16_FULL/`` or ``TCGA/<cohort>/``); for a CSV cohort, the folder
            searched when the CSV has no ``features_path`` column (may be None then).
        cohort: a reference slide cohort (``TCGA_CRC``, ``CAMELYON16_TRAIN``, ...) or
            the path of a cohort CSV.
        label: the task label (``MSI``, ``OS``, ...; a CSV label column) or None.
        n_tiles: tiles sampled per item (``task.data.n_tiles``); None = all.
        tile_size: selects ``coords_<tile_size>`` (coords are optional for training).
        seed, shuffle: see :class:`SlideFeaturesDataset`.
        data_dir: data root override (reference cohorts).
        classes: class order for a CSV label column (other values are errors).

    Attributes: ``slide_id``, ``patient_id``, ``center_id``, ``labels``, ``n_slides``,
    ``n_patients``, ``n_features``, ``n_labels``, ``stratified`` (the vector used for
    stratified splits: the event indicator for survival, the class otherwise; None
    without label), ``task`` ("binary", "multiclass", "survival" or None), ``classes``,
    ``time``/``event`` (survival), ``table`` (the slide table), ``missing_features``
    (ids of slides left out because they have no features).

    Raises :class:`CohortError` before any training when the labelled slides hold a
    single class (or, for survival, no event), and on the first read of a slide whose
    rows hold NaN or inf (naming the slide and its file).
    """

    def __init__(
        self,
        features_root_dir: str | os.PathLike | None,
        cohort: str,
        label: str | None = None,
        n_tiles: int | None = 1000,
        tile_size: int = 224,
        *,
        seed: int = 0,
        shuffle: bool = True,
        data_dir: str | os.PathLike | None = None,
        classes: Sequence[object] | None = None,
    ) -> None:
        from rl_benchmarks.datasets.loading import load_slide_table, normalise_cohort
        from rl_benchmarks.datasets.slides_classification.csv_cohort import (
            is_csv_cohort,
            load_csv_cohort,
        )

        cohort = normalise_cohort(cohort)
        if not is_csv_cohort(cohort) and not cohort.startswith(_SLIDE_PREFIXES):
            raise ValueError(f"{cohort} is a tile cohort; SlideClassificationDataset needs slides")
        if not is_csv_cohort(cohort) and features_root_dir is None:
            raise ValueError(f"{cohort}: features_root_dir is required")
        if is_csv_cohort(cohort):
            table = load_csv_cohort(cohort, features_root_dir, label=label, classes=classes)
        else:
            table = load_slide_table(cohort, features_root_dir, label, tile_size, False, data_dir)
        attrs = dict(table.attrs)
        self.cohort, self.label = cohort, label
        self.task = attrs.get("task")
        self.classes = attrs.get("classes")
        labelled = self.task is not None
        table = table[table["slide_id"].notna()]
        if labelled:
            table = table[table["label"].notna()]
        no_feat = table["features_path"].isna()
        self.missing_features = table.loc[no_feat, "slide_id"].astype(str).tolist()
        warn_missing_features(self.missing_features, cohort, len(table))
        table = table[~no_feat].sort_values("slide_id", kind="stable").reset_index(drop=True)
        if table.empty:
            where = (
                features_root_dir if is_csv_cohort(cohort)
                else Path(features_root_dir) / ("TCGA" if cohort.startswith("TCGA_") else "")
            )
            raise CohortError(
                f"{cohort}{'/' + label if label else ''}: no slide has features "
                f"(looked for <slide>/features.npy, <slide>/features.h5 or <slide>.h5 under {where})"
            )
        table.attrs.update(attrs)
        self.table = table
        labels = pd.to_numeric(table["label"], errors="coerce").to_numpy(dtype=np.float64)
        # a single class (or, for survival, no event) cannot be trained on: say so now
        # rather than after training with an AUC / C-index of NaN
        check_classes(labels, self.task, f"{cohort}{'/' + label if label else ''}", self.classes)
        super().__init__(
            list(table["features_path"]), labels, n_tiles=n_tiles, shuffle=shuffle, seed=seed,
            slide_ids=list(table["slide_id"].astype(str)),
        )
        self.patient_id = table["patient_id"].astype(str).to_numpy(dtype=object)
        self.center_id = table["center_id"].to_numpy(dtype=object)
        self.n_slides = len(table)
        self.n_patients = int(pd.unique(self.patient_id).size)
        if self.task == "survival":
            self.time = np.abs(self.labels)
            self.event = (self.labels > 0).astype(np.int64)
            self.stratified = self.event.copy()
            self.n_labels = 1
        elif labelled:
            self.stratified = self.labels.astype(np.int64)
            n_classes = len(self.classes) if self.classes else int(np.unique(self.labels).size)
            self.n_labels = 1 if n_classes <= 2 else n_classes
        else:
            self.stratified = None
            self.n_labels = 1

    def summary(self) -> str:
        """One line: cohort, label, slides, patients, features and class counts."""
        head = (
            f"{self.cohort}{'/' + self.label if self.label else ''}: {self.n_slides} slides, "
            f"{self.n_patients} patients, {self.n_features} features"
        )
        if self.task == "survival":
            return f"{head}, {int(self.event.sum())} events"
        if self.task is not None:
            codes, counts = np.unique(self.stratified, return_counts=True)
            names = self.classes or [str(c) for c in codes]
            dist = ", ".join(f"{names[int(c)] if int(c) < len(names) else c}: {n}"
                             for c, n in zip(codes, counts))
            return f"{head}, {self.task} ({dist})"
        return head

    def __repr__(self) -> str:
        return f"SlideClassificationDataset({self.summary()})"


_SLIDE_PREFIXES = ("TCGA_", "CAMELYON16_")
