"""Read tiles at ``[dz_level, col, row]`` coordinates, for DataLoaders.

Why: feature extraction reads millions of tiles. The pixels must equal
``DeepZoomGenerator(slide, tile_size, 0).get_tile(level, (col, row))`` (docs/protocol.md#deepzoom-coordinates);
border tiles are zero-padded (black) at the bottom/right to ``tile_size`` (docs/protocol.md#tile-reading). Each
worker process opens the slide once and reuses the handle (handles are not pickled;
a forked or spawned worker opens its own on first use).

The slide is opened by the backend ``reader`` names (rl_benchmarks/slides/backends.py;
``auto`` chooses by file), so a DICOM-WSI folder, an OME-TIFF or an SVS give their tiles
through the same ``DeepZoomGenerator`` arithmetic.

Fast path: the same ``read_region`` call as DeepZoom, but an opaque tile of the right
size skips PIL's compositing and goes straight to numpy (bit-identical: compositing an
opaque RGBA tile over the background keeps its RGB). Any other tile (transparent
pixels, rescaling) goes through ``DeepZoomGenerator.get_tile`` itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rl_benchmarks.slides.openslide_io import SlideReadError


class TileReader:
    """Reads DeepZoom tiles of one slide as (tile_size, tile_size, 3) uint8 arrays."""

    def __init__(self, slide_path: str | os.PathLike, tile_size: int = 224, pad: bool = True,
                 reader: str | None = "auto"):
        from rl_benchmarks.slides.backends import check_reader

        if tile_size <= 0:
            raise ValueError(f"tile_size={tile_size}: must be positive")
        self.slide_path = Path(slide_path)
        self.reader = check_reader(reader)
        self.tile_size = int(tile_size)
        self.pad = pad
        self._pid: int | None = None
        self._slide = None
        self._dz = None
        self._backend = ""
        self._source: Path | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_pid=None, _slide=None, _dz=None, _backend="", _source=None)
        return state

    def _open(self) -> None:
        from openslide.deepzoom import DeepZoomGenerator

        from rl_benchmarks.slides.backends import open_handle

        opened = open_handle(self.slide_path, self.reader)
        self._slide, self._backend, self._source = opened.handle, opened.backend, opened.source
        self._dz = DeepZoomGenerator(self._slide, tile_size=self.tile_size, overlap=0)
        self._pid = os.getpid()

    @property
    def deepzoom(self):
        """The process-local ``DeepZoomGenerator`` (opened on first use)."""
        if self._pid != os.getpid():
            self._open()
        return self._dz

    @property
    def backend(self) -> str:
        """The backend that opened the slide (``openslide``, ``tiffslide``, ...)."""
        self.deepzoom  # noqa: B018 - opens the slide in this process if needed
        return self._backend

    @property
    def source(self) -> Path:
        """The file the backend opened (a DICOM series' instance, else ``slide_path``)."""
        self.deepzoom  # noqa: B018 - opens the slide in this process if needed
        assert self._source is not None
        return self._source

    def read(self, level: int, col: int, row: int) -> np.ndarray:
        """Tile ``(level, col, row)`` as uint8 (H, W, 3), zero-padded to tile_size if ``pad``."""
        dz = self.deepzoom
        try:
            info = getattr(dz, "_get_tile_info", None)
            arr = None
            if info is not None:
                args, z_size = info(int(level), (int(col), int(row)))
                if tuple(args[2]) == tuple(z_size):
                    rgba = np.asarray(self._slide.read_region(*args))  # type: ignore[union-attr]
                    if rgba.shape[2] == 4 and rgba[..., 3].min() == 255:
                        arr = rgba[..., :3]
            if arr is None:
                arr = np.asarray(dz.get_tile(int(level), (int(col), int(row))).convert("RGB"))
        except ValueError as err:
            raise ValueError(
                f"{self.slide_path}: invalid tile {(level, col, row)} for tile_size "
                f"{self.tile_size}: {err}"
            ) from None
        except Exception as err:  # openslide errors on corrupt tiles
            raise SlideReadError(self.slide_path, f"reading tile {(level, col, row)}: {err}") from err
        h, w = arr.shape[:2]
        if self.pad and (h, w) != (self.tile_size, self.tile_size):
            out = np.zeros((self.tile_size, self.tile_size, 3), np.uint8)
            out[:h, :w] = arr
            return out
        return np.ascontiguousarray(arr)

    def close(self) -> None:
        if self._slide is not None and self._pid == os.getpid():
            self._slide.close()
        self._slide = self._dz = self._source = None
        self._backend = ""
        self._pid = None


class SlideTileDataset:
    """A torch-style Dataset of one slide's tiles.

    ``coords``: (N, 3) ``[dz_level, col, row]`` (a ``coords.npy``), or (N, 2)
    ``[col, row]`` with ``level`` given. Items are uint8 tensors (3, tile_size,
    tile_size) so a pipeline can normalise whole batches; with ``transform`` the
    (zero-padded) tile is given to it as a PIL image (reference ``TilesMap``
    behaviour) and its result is returned. ``return_coords=True`` returns
    ``(tile, coords_row)``. ``reader`` picks the slide backend (``auto``: by file).
    """

    def __init__(
        self,
        slide_path: str | os.PathLike,
        coords: np.ndarray,
        tile_size: int = 224,
        transform=None,
        level: int | None = None,
        return_coords: bool = False,
        reader: str | None = "auto",
    ):
        coords = np.asarray(coords)
        if coords.ndim != 2 or coords.shape[1] not in (2, 3):
            raise ValueError(
                f"{slide_path}: coords must be (N, 3) [level, col, row] or (N, 2) [col, row], "
                f"got shape {coords.shape}"
            )
        if coords.shape[1] == 2:
            if level is None:
                raise ValueError(f"{slide_path}: (N, 2) coords need level=<DeepZoom level>")
            coords = np.column_stack([np.full(len(coords), level), coords])
        self.coords = coords.astype(np.int64)
        self.reader = TileReader(slide_path, tile_size, reader=reader)
        self.transform = transform
        self.return_coords = return_coords

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, index: int):
        import torch

        lvl, col, row = (int(v) for v in self.coords[index])
        tile = self.reader.read(lvl, col, row)
        if self.transform is not None:
            from PIL import Image

            out = self.transform(Image.fromarray(tile))
        else:
            out = torch.from_numpy(tile).permute(2, 0, 1).contiguous()
        if self.return_coords:
            return out, torch.from_numpy(self.coords[index].copy())
        return out
