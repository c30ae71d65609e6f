"""Pre-training data: tiles from image folders, or straight from slides through coords.

Two tile sources, which can be mixed:

* :class:`ImageTiles`: every image under some folders. An image is used whole, or, with
  ``tile_size``, cut into a grid of non-overlapping ``tile_size`` tiles (for large region
  images); tiles with too little tissue can be skipped (``min_tissue``).
* :class:`SlideTiles`: tiles read from whole-slide images at the DeepZoom coordinates of a
  ``coords.npy`` ((N, 3) rows ``[level, col, row]``), the layout the tiling step writes.

:class:`PretrainDataset` turns a tile into the multi-crop views and the masks of the global
crops. Its randomness is derived from (seed, epoch, index), so a run resumed from a
checkpoint sees exactly the crops it would have seen.
"""

from __future__ import annotations

import contextlib
import csv
import random
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rl_benchmarks.pretraining.augment import MultiCropAugmentation
from rl_benchmarks.pretraining.masking import MaskGenerator
from rl_benchmarks.utils.seed import derive_seed

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB image; transparent pixels (RGBA/LA/P) are composited on white, the colour of
    glass on a slide, instead of whatever colour they happen to store."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def tissue_fraction(rgb: np.ndarray, sat_threshold: int = 20, bright_threshold: int = 220) -> float:
    """Fraction of pixels that look like stained tissue: saturated (HSV S > 20/255) and not
    near-white. A cheap filter for background and empty glass."""
    arr = np.asarray(rgb, dtype=np.int16)[..., :3]
    mx, mn = arr.max(-1), arr.min(-1)
    sat = np.where(mx > 0, (mx - mn) * 255 // np.maximum(mx, 1), 0)
    tissue = (sat > sat_threshold) & (arr.mean(-1) < bright_threshold)
    return float(tissue.mean())


def list_images(folders: Sequence[str | Path]) -> list[Path]:
    """Every image file (by extension) below ``folders``, sorted; errors name the folder."""
    paths: list[Path] = []
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"data.image_dirs: {folder} is not a folder")
        found = sorted(p for p in folder.rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise ValueError(f"data.image_dirs: no image ({', '.join(IMAGE_EXTENSIONS)}) "
                             f"under {folder}")
        paths += found
    return paths


class _LRU:
    """A tiny per-process cache (each DataLoader worker gets its own copy)."""

    def __init__(self, size: int):
        self.size, self.items = size, OrderedDict()

    def get(self, key, make):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        self.items[key] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


class ImageTiles:
    """Tiles from image files: whole images, or a ``tile_size`` grid cut from each image
    (images smaller than one tile are used whole).

    Only images that give several tiles are kept decoded (``cache_images`` of them, per
    worker): a single-tile image is read once per epoch anyway, and letting it into the
    cache would evict the large region images whose decoding the cache is there to save.
    """

    def __init__(self, paths: Sequence[str | Path], tile_size: int | None = None,
                 min_tissue: float = 0.0, cache_images: int = 16):
        if tile_size is not None and int(tile_size) <= 0:
            raise ValueError(f"data.tile_size must be positive, got {tile_size}")
        self.paths = [Path(p) for p in paths]
        self.tile_size = None if tile_size is None else int(tile_size)
        self.items: list[tuple[int, tuple[int, int, int, int] | None]] = []
        self._cache = _LRU(max(1, int(cache_images)))  # decoded images, per worker
        for i, path in enumerate(self.paths):
            try:
                with Image.open(path) as im:
                    width, height = im.size
                    rgb = np.asarray(to_rgb(im)) if min_tissue > 0 else None
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: cannot read image ({e})") from e
            if not self.tile_size or width < self.tile_size or height < self.tile_size:
                boxes = [None]
            else:
                t = self.tile_size
                boxes = [(x, y, x + t, y + t) for y in range(0, height - t + 1, t)
                         for x in range(0, width - t + 1, t)]
            for box in boxes:
                if min_tissue > 0:
                    crop = rgb if box is None else rgb[box[1]:box[3], box[0]:box[2]]
                    if tissue_fraction(crop) < min_tissue:
                        continue
                self.items.append((i, box))
        counts = Counter(i for i, _ in self.items)
        self._multi = {i for i, n in counts.items() if n > 1}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Image.Image:
        i, box = self.items[index]
        path = self.paths[i]

        def load() -> Image.Image:
            with Image.open(path) as im:
                return to_rgb(im)

        img = self._cache.get(i, load) if i in self._multi else load()
        return img if box is None else img.crop(box)

    def describe(self) -> str:
        return f"{len(self)} tiles from {len(self.paths)} images"


def read_slides_csv(path: str | Path) -> list[tuple[Path, Path]]:
    """(slide_path, coords_path) pairs from a CSV with those two columns (relative paths
    are taken relative to the CSV's folder)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.slides_csv: {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"slide_path", "coords_path"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected "
                             f"slide_path,coords_path")
        rows = [(r["slide_path"], r["coords_path"]) for r in reader]
    if not rows:
        raise ValueError(f"{path}: no rows")
    return [((path.parent / s).resolve(), (path.parent / c).resolve()) for s, c in rows]


class SlideTiles:
    """Tiles read from slides at the DeepZoom coordinates of their ``coords.npy``, through
    :class:`rl_benchmarks.slides.reader.TileReader` (the pixels of
    ``DeepZoomGenerator(slide, tile_size, 0).get_tile(level, (col, row))``; border tiles
    zero-padded to ``tile_size``, as in feature extraction)."""

    def __init__(self, entries: Sequence[tuple[str | Path, str | Path]], tile_size: int = 224,
                 max_tiles_per_slide: int | None = None):
        from rl_benchmarks.slides.reader import TileReader

        self.slides = [Path(s).expanduser() for s, _ in entries]
        self.tile_size = int(tile_size)
        self.items: list[tuple[int, int, int, int]] = []
        for i, (slide, coords_path) in enumerate(entries):
            coords_path = Path(coords_path).expanduser()
            if not self.slides[i].is_file():
                raise FileNotFoundError(f"{slide}: slide file does not exist")
            if not coords_path.is_file():
                raise FileNotFoundError(f"{coords_path}: coords file does not exist")
            try:
                coords = np.load(coords_path)
            except (OSError, ValueError) as e:
                raise ValueError(f"{coords_path}: cannot read coords ({e})") from e
            if coords.ndim != 2 or coords.shape[1] != 3:
                raise ValueError(f"{coords_path}: expected (N, 3) [level, col, row], got "
                                 f"shape {coords.shape}")
            coords = coords.astype(np.int64)
            if max_tiles_per_slide:
                coords = coords[: int(max_tiles_per_slide)]
            self.items += [(i, int(lv), int(c), int(r)) for lv, c, r in coords]
        self.readers = [TileReader(p, self.tile_size) for p in self.slides]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Image.Image:
        i, level, col, row = self.items[index]
        return Image.fromarray(self.readers[i].read(level, col, row))

    def describe(self) -> str:
        return f"{len(self)} tiles from {len(self.slides)} slides"


class ConcatTiles:
    """Several tile sources seen as one."""

    def __init__(self, sources: Sequence):
        self.sources = [s for s in sources if len(s)]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Image.Image:
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.sources[k][index - int(self.offsets[k])]

    def describe(self) -> str:
        return " + ".join(s.describe() for s in self.sources) or "no tiles"


@contextlib.contextmanager
def seeded(seed: int):
    """Seed Python's and torch's global RNGs inside the block, restoring them after, so
    that augmentations are a function of ``seed`` only."""
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)


@dataclass
class Sample:
    crops: list[torch.Tensor]
    masks: torch.Tensor  # (n_global, h, w) bool


class PretrainDataset(torch.utils.data.Dataset):
    """Indexed by ``(epoch, index)`` (see :class:`EpochSampler`): returns the multi-crop
    views of tile ``index`` and the masks of its two global crops."""

    def __init__(self, tiles, augment: MultiCropAugmentation, masks: MaskGenerator,
                 patch_size: int, seed: int = 0):
        self.tiles, self.augment, self.masks = tiles, augment, masks
        self.patch_size, self.seed = int(patch_size), int(seed)
        g = augment.cfg.global_size
        if g % self.patch_size or augment.cfg.local_size % self.patch_size:
            raise ValueError(f"crop sizes ({g}, {augment.cfg.local_size}) must be multiples "
                             f"of model.patch_size={self.patch_size}")
        self.grid = g // self.patch_size

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, index = key
        s = derive_seed(self.seed, "pretrain-sample", epoch, index)
        img = self.tiles[index]
        with seeded(s):
            crops = self.augment(img)
        rng = np.random.default_rng(s)
        masks = np.stack([self.masks(self.grid, self.grid, rng) for _ in range(2)])
        return Sample(crops, torch.from_numpy(masks))


def collate(samples: list[Sample]) -> dict[str, torch.Tensor]:
    """Stack crop-major: ``global`` (2B, 3, G, G), ``local`` (N*B, 3, L, L), ``masks``
    (2B, h, w), with all images of crop 0 first, then crop 1, ..."""
    n_crops = len(samples[0].crops)
    per_crop = [torch.stack([s.crops[c] for s in samples]) for c in range(n_crops)]
    glob = torch.cat(per_crop[:2])
    local = torch.cat(per_crop[2:]) if n_crops > 2 else glob.new_zeros((0, *glob.shape[1:]))
    masks = torch.cat([torch.stack([s.masks[c] for s in samples]) for c in range(2)])
    return {"global": glob, "local": local, "masks": masks}


class RunSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` pairs for one rank over a whole run, from global step
    ``start_step`` to ``total_steps``: each epoch is a seeded permutation of the dataset
    split across ranks (as DistributedSampler does, dropping the last partial batch), so a
    run resumed at any step reads exactly the batches it would have read."""

    def __init__(self, n: int, batch_size: int, seed: int, total_steps: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.steps_per_epoch = steps_per_epoch(self.n, self.batch_size, self.world_size)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{n} tiles are fewer than one batch of {batch_size} x "
                             f"{world_size} process(es)")
        self.start_step, self.total_steps = int(start_step), int(total_steps)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's tile indices for ``epoch``, in order (whole batches only)."""
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, "pretrain-order", epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        return perm[self.rank :: self.world_size][: self.steps_per_epoch * self.batch_size]

    def __iter__(self):
        step = self.start_step
        while step < self.total_steps:
            epoch, offset = divmod(step, self.steps_per_epoch)
            n_steps = min(self.steps_per_epoch - offset, self.total_steps - step)
            indices = self.epoch_indices(epoch)
            start = offset * self.batch_size
            for i in indices[start : start + n_steps * self.batch_size]:
                yield (epoch, i)
            step += n_steps

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0) * self.batch_size


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Optimiser steps in one epoch (drop-last)."""
    return n // (batch_size * world_size)
