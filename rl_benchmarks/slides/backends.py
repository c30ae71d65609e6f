"""Reader backends: which library opens a slide, behind one OpenSlide-like interface.

Why: OpenSlide reads most formats (SVS, generic tiled TIFF, NDPI, MRXS, SCN, conformant
DICOM-WSI) but refuses OME-TIFF pyramids (it sees their first page only, without pixel
size) and some pyramidal TIFFs (e.g. compressions it lacks). Those go through
``tiffslide`` (tifffile + zarr). Every backend hands back an object with OpenSlide's slide
API (``dimensions``, ``level_*``, ``properties`` with ``openslide.mpp-x`` and
``openslide.vendor``, ``read_region`` giving RGBA with alpha 0 outside the slide,
``get_thumbnail``), so ``openslide.deepzoom.DeepZoomGenerator`` gives the same
``[dz_level, col, row]`` convention (rl_benchmarks/slides/geometry.py) and the same pixels
for the same image whichever backend read it.

Choice (``reader="auto"``, the default): a DICOM folder or instance file is checked and
grouped (:mod:`rl_benchmarks.slides.dicom`) and opened by OpenSlide; an OME-TIFF goes to
tiffslide; anything else to OpenSlide, and a *tiled* TIFF OpenSlide refuses to tiffslide.
``reader="openslide"`` or ``reader="tiffslide"`` forces one backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rl_benchmarks.slides.errors import NotASlideError, SlideNotFoundError

TIFF_SUFFIXES = (".tif", ".tiff")
OPENSLIDE_REFUSED = "not a whole-slide image OpenSlide can read (unsupported or not pyramidal/tiled)"


@dataclass(frozen=True)
class OpenedSlide:
    """An open slide handle (OpenSlide API), the backend that opened it and the file it read."""

    handle: object
    backend: str
    source: Path
    """The file given to the backend (a DICOM series' VOLUME instance for a DICOM folder)."""


# ------------------------------------------------------------------------------ tiffslide


def _ome_mpp(description: str) -> float | None:
    """µm per pixel from an OME-XML ``PhysicalSizeX`` (unit µm by default), else None."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(description)
    except ET.ParseError:
        return None
    to_um = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
    for el in root.iter():
        if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
            unit = el.get("PhysicalSizeXUnit", "µm")
            try:
                return float(el.get("PhysicalSizeX")) * to_um[unit]
            except (KeyError, ValueError):
                return None
    return None


def _tiffslide_class():
    import openslide

    class TiffSlideHandle(openslide.AbstractSlide):
        """A ``tiffslide.TiffSlide`` behind OpenSlide's slide API: RGBA regions (alpha 0
        outside the level), OpenSlide's level downsamples and level choice, and the
        ``openslide.*`` properties the rest of the toolkit reads."""

        def __init__(self, path: str | os.PathLike):
            import tiffslide

            super().__init__()
            self._ts = tiffslide.TiffSlide(str(path))
            dims = tuple(tuple(int(v) for v in d) for d in self._ts.level_dimensions)
            self._dims = dims
            w0, h0 = dims[0]
            self._ds = tuple((w0 / w + h0 / h) / 2.0 for w, h in dims)  # OpenSlide's formula
            props = {k: str(v) for k, v in self._ts.properties.items() if v is not None}
            desc = props.get("tiff.ImageDescription", "")
            ome = "<OME" in desc[:2000]
            mpp = props.get("tiffslide.mpp-x")
            if mpp is None and ome:
                mpp = _ome_mpp(desc)
            if mpp is not None:
                props["openslide.mpp-x"] = str(mpp)
                props["openslide.mpp-y"] = str(props.get("tiffslide.mpp-y", mpp))
            props["openslide.vendor"] = "ome-tiff" if ome else (
                props.get("tiffslide.vendor") or "generic-tiff")
            if "tiffslide.background-color" in props:
                props["openslide.background-color"] = props["tiffslide.background-color"]
            props["openslide.level-count"] = str(len(dims))
            self._props = props

        @classmethod
        def detect_format(cls, filename) -> str | None:
            return None

        def close(self) -> None:
            self._ts.close()

        @property
        def level_count(self) -> int:
            return len(self._dims)

        @property
        def level_dimensions(self) -> tuple[tuple[int, int], ...]:
            return self._dims  # type: ignore[return-value]

        @property
        def level_downsamples(self) -> tuple[float, ...]:
            return self._ds

        @property
        def properties(self) -> Mapping[str, str]:
            return self._props

        @property
        def associated_images(self) -> Mapping[str, object]:
            return {}

        def get_best_level_for_downsample(self, downsample: float) -> int:
            """OpenSlide's rule: the last level whose downsample is not above ``downsample``."""
            for level in range(1, len(self._ds)):
                if downsample < self._ds[level]:
                    return level - 1
            return len(self._ds) - 1

        def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
            from PIL import Image

            w, h = int(size[0]), int(size[1])
            arr = np.asarray(self._ts.read_region(location, level, (w, h), as_array=True))
            if arr.ndim == 2:
                arr = arr[..., None]
            if arr.dtype != np.uint8:
                raise ValueError(f"{arr.dtype} pixels: only 8-bit RGB slides are supported")
            rgb = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]
            # tiffslide pads outside the level with black: make it transparent, as OpenSlide
            lw, lh = self._dims[level]
            x0 = int(int(location[0]) / self._ts.level_downsamples[level])
            y0 = int(int(location[1]) / self._ts.level_downsamples[level])
            xs, ys = np.arange(x0, x0 + w), np.arange(y0, y0 + h)
            inside = ((ys >= 0) & (ys < lh))[:, None] & ((xs >= 0) & (xs < lw))[None, :]
            alpha = np.where(inside, 255, 0).astype(np.uint8)
            rgba = np.concatenate([rgb * inside[..., None].astype(np.uint8), alpha[..., None]], 2)
            return Image.fromarray(np.ascontiguousarray(rgba), "RGBA")

    return TiffSlideHandle


def _open_tiffslide(path: Path) -> object:
    try:
        return _tiffslide_class()(path)
    except Exception as err:  # tifffile/zarr raise many types for files they cannot read
        raise NotASlideError(path, f"tiffslide cannot open it: {err}") from None


# ------------------------------------------------------------------------------ OpenSlide


def _open_openslide(path: Path) -> object:
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise NotASlideError(path, OPENSLIDE_REFUSED) from None
    except openslide.OpenSlideError as err:
        raise NotASlideError(path, f"OpenSlide cannot open it: {err}") from None
    except OSError as err:
        raise NotASlideError(path, f"cannot be read: {err}") from None


BACKENDS: dict[str, Callable[[Path], object]] = {
    "openslide": _open_openslide,
    "tiffslide": _open_tiffslide,
}
"""Backend name -> opener (path -> OpenSlide-like handle); register new backends here."""

READERS = ("auto", *BACKENDS)
"""Values of the ``reader`` key: ``auto`` (chosen by file) or a backend name."""


def check_reader(reader: str | None) -> str:
    """``reader`` (None: ``auto``), or a one-line ValueError listing the choices."""
    reader = "auto" if reader is None else str(reader)
    if reader not in READERS:
        raise ValueError(f"reader={reader!r}: expected one of {', '.join(READERS)}")
    return reader


def is_ome_tiff(path: Path) -> bool:
    """An OME-TIFF: named ``*.ome.tif(f)``, or a TIFF whose first description is OME-XML."""
    name = path.name.lower()
    if name.endswith((".ome.tif", ".ome.tiff")):
        return True
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_ome)
    except Exception:  # not a TIFF tifffile reads: let OpenSlide say why
        return False


def _is_tiled_tiff(path: Path) -> bool:
    """A TIFF whose first page is tiled (a whole-slide layout; plain strip TIFFs are not)."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return bool(tif.pages[0].is_tiled)
    except Exception:
        return False


def is_dicom_input(path: Path) -> bool:
    """A DICOM instance file, or a folder holding DICOM files."""
    from rl_benchmarks.slides.dicom import dicom_files, is_dicom_file

    if path.is_dir():
        return bool(dicom_files(path))
    return is_dicom_file(path)


def open_handle(path: str | os.PathLike, reader: str | None = "auto") -> OpenedSlide:
    """Open ``path`` with the backend ``reader`` names (``auto``: chosen by file, see the
    module docstring). Raises SlideNotFoundError or NotASlideError with a one-line message
    naming the file (or the DICOM folder) and the cause."""
    reader = check_reader(reader)
    path = Path(path)
    if not path.exists():
        raise SlideNotFoundError(path, "file not found")
    if is_dicom_input(path):
        from rl_benchmarks.slides import dicom

        if reader not in ("auto", "openslide"):
            raise NotASlideError(path, f"reader={reader} cannot read DICOM-WSI; use reader=openslide")
        series, volume = dicom.resolve(path)
        try:
            handle = _open_openslide(volume.path)
        except NotASlideError as err:
            raise NotASlideError(path, f"DICOM series {series.uid}: {err.cause}") from None
        return OpenedSlide(handle, "openslide", volume.path)
    if not path.is_file() and path.suffix.lower() != ".mrxs":
        raise SlideNotFoundError(path, "not a file (a folder is a slide only when it holds the "
                                       "DICOM instances of one series)")
    if reader == "auto":
        if is_ome_tiff(path):
            return OpenedSlide(_open_tiffslide(path), "tiffslide", path)
        try:
            return OpenedSlide(_open_openslide(path), "openslide", path)
        except NotASlideError:
            if not _is_tiled_tiff(path):
                raise
        return OpenedSlide(_open_tiffslide(path), "tiffslide", path)
    return OpenedSlide(BACKENDS[reader](path), reader, path)
