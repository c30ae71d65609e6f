"""Open a whole-slide image (OpenSlide, or another backend of
:mod:`rl_benchmarks.slides.backends`) and find its pixel size (mpp).

Why: every later stage needs the level-0 mpp to pick the DeepZoom level of a target
magnification; a slide without it must fail clearly unless the user gives
``default_mpp``. Errors are :class:`SlideError` subclasses whose message names the file
and the cause, so a batch run can write one line per failed slide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rl_benchmarks.slides.errors import (  # re-exported: callers import them from here
    MissingMPPError,
    MPPToleranceError,
    NotASlideError,
    SlideError,
    SlideNotFoundError,
    SlideReadError,
)

MPP_RANGE = (0.01, 100.0)
"""Plausible µm per pixel; values outside are treated as missing."""

SLIDE_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
    ".dcm", ".czi",
)
"""Extensions collected when a folder of slides is given."""


__all__ = [
    "MPP_RANGE", "SLIDE_EXTENSIONS", "MPPToleranceError", "MissingMPPError", "NotASlideError",
    "SlideError", "SlideInfo", "SlideNotFoundError", "SlideReadError", "mpp_from_properties",
    "open_slide",
]


@dataclass
class SlideInfo:
    """An open slide with its mpp; close it (or use ``with``) when done."""

    path: Path
    slide: object = field(repr=False)
    mpp: float
    mpp_source: str
    """``openslide.mpp-x``, ``tiff-resolution`` or ``default_mpp``."""
    vendor: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    backend: str = "openslide"
    """The reader backend that opened it (rl_benchmarks.slides.backends)."""

    @property
    def level_mpps(self) -> tuple[float, ...]:
        """mpp of each OpenSlide pyramid level."""
        return tuple(self.mpp * d for d in self.level_downsamples)

    def close(self) -> None:
        self.slide.close()  # type: ignore[attr-defined]

    def __enter__(self) -> SlideInfo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_float(value: object) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if MPP_RANGE[0] <= x <= MPP_RANGE[1] else None


def mpp_from_properties(props: dict) -> tuple[float | None, str]:
    """Level-0 mpp from OpenSlide properties: ``openslide.mpp-x``, else TIFF resolution tags."""
    mpp = _as_float(props.get("openslide.mpp-x"))
    if mpp is not None:
        return mpp, "openslide.mpp-x"
    res = props.get("tiff.XResolution")
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    per_unit_um = {"centimeter": 1e4, "cm": 1e4, "3": 1e4, "inch": 25400.0, "2": 25400.0}
    if res is not None and unit in per_unit_um:
        try:
            r = float(res)
        except ValueError:
            r = 0.0
        if r > 0:
            mpp = _as_float(per_unit_um[unit] / r)
            if mpp is not None:
                return mpp, "tiff-resolution"
    return None, ""


def open_slide(
    path: str | os.PathLike, default_mpp: float | None = None, reader: str | None = "auto"
) -> SlideInfo:
    """Open ``path`` (a slide file, or a folder holding one DICOM-WSI series) and return a
    :class:`SlideInfo`.

    ``reader`` picks the backend (``auto``: chosen by file, see
    :mod:`rl_benchmarks.slides.backends`). ``default_mpp`` is used only when the slide
    carries no mpp. Raises SlideNotFoundError, NotASlideError or MissingMPPError with a
    one-line message.
    """
    from rl_benchmarks.slides.backends import open_handle

    path = Path(path)
    if default_mpp is not None and _as_float(default_mpp) is None:
        raise ValueError(
            f"default_mpp={default_mpp!r}: expected a number of µm per pixel in {MPP_RANGE}"
        )
    opened = open_handle(path, reader)
    slide = opened.handle
    try:
        props = dict(slide.properties)  # type: ignore[attr-defined]
        mpp, source = mpp_from_properties(props)
        if mpp is None:
            if default_mpp is None:
                raise MissingMPPError(
                    path,
                    "no pixel size (no openslide.mpp-x, no TIFF resolution); "
                    "pass default_mpp=<µm per pixel> to tile it anyway",
                )
            mpp, source = float(default_mpp), "default_mpp"
        return SlideInfo(
            path=path,
            slide=slide,
            mpp=mpp,
            mpp_source=source,
            vendor=str(props.get("openslide.vendor", "unknown")),
            dimensions=tuple(slide.dimensions),  # type: ignore[attr-defined]
            level_dimensions=tuple(tuple(d) for d in slide.level_dimensions),  # type: ignore[attr-defined]
            level_downsamples=tuple(float(d) for d in slide.level_downsamples),  # type: ignore[attr-defined]
            backend=opened.backend,
        )
    except BaseException:
        slide.close()  # type: ignore[attr-defined]
        raise
