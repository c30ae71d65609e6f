"""Raw slides to tissue tile coordinates: open a slide, detect tissue, tile, read tiles.

Public API (imports are lazy so that ``import rl_benchmarks.slides`` stays cheap)::

    open_slide, SlideInfo, SlideError, SlideNotFoundError, NotASlideError,
    MissingMPPError, MPPToleranceError, SlideReadError      (openslide_io)
    TissueParams, detect_tissue                               (tissue)
    tile_slide, tile_slides, TilingParams, TilingResult, TilingSummary      (tiling)
    TileReader, SlideTileDataset                              (reader)
    render_qc, save_qc                                        (qc)
    write_pyramidal_tiff, TissueIslands                       (synthetic)
"""

from __future__ import annotations

from rl_benchmarks.utils.lazy import lazy_exports

_EXPORTS = {
    "open_slide": "openslide_io", "SlideInfo": "openslide_io", "SlideError": "openslide_io",
    "SlideNotFoundError": "openslide_io", "NotASlideError": "openslide_io",
    "MissingMPPError": "openslide_io", "MPPToleranceError": "openslide_io",
    "SlideReadError": "openslide_io",
    "TissueParams": "tissue", "detect_tissue": "tissue",
    "tile_slide": "tiling", "tile_slides": "tiling", "TilingResult": "tiling",
    "TilingSummary": "tiling",
    "TilingParams": "tiling",
    "TileReader": "reader", "SlideTileDataset": "reader",
    "render_qc": "qc", "save_qc": "qc",
    "write_pyramidal_tiff": "synthetic", "TissueIslands": "synthetic",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, {k: f".{v}" for k, v in _EXPORTS.items()})
