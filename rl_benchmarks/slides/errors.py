"""The errors of slide opening and reading: one line naming the file and the cause.

Why a module of its own: the backends (rl_benchmarks/slides/backends.py, dicom.py) and
:mod:`rl_benchmarks.slides.openslide_io` (which re-exports these names) all raise them.
"""

from __future__ import annotations

import os


class SlideError(Exception):
    """A slide cannot be used; ``str(err)`` is one line naming the file and the cause."""

    def __init__(self, path: str | os.PathLike, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class SlideNotFoundError(SlideError):
    """The path does not exist or is not a file."""


class NotASlideError(SlideError):
    """No backend can open the file (not a whole-slide image, unsupported format, or a
    DICOM series that cannot be tiled)."""


class MissingMPPError(SlideError):
    """The slide has no usable mpp and no ``default_mpp`` was given."""


class SlideReadError(SlideError):
    """Reading pixels failed (corrupt tile, truncated file)."""


class MPPToleranceError(SlideError):
    """No DeepZoom level is within ``mpp_tolerance`` of the target mpp."""
