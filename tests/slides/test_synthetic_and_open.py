from __future__ import annotations

import numpy as np
import openslide
import pytest

from rl_benchmarks.slides.openslide_io import (
    MissingMPPError,
    NotASlideError,
    SlideNotFoundError,
    mpp_from_properties,
    open_slide,
)
from rl_benchmarks.slides.synthetic import TissueIslands, write_pyramidal_tiff


def test_written_tiff_is_an_openslide_pyramid_with_mpp(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (700, 900, 3), dtype=np.uint8)
    path = write_pyramidal_tiff(tmp_path / "a.tiff", img, mpp=0.5, compression="deflate")
    s = openslide.OpenSlide(str(path))
    assert s.properties["openslide.vendor"] == "generic-tiff"
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-6)
    assert s.level_dimensions == ((900, 700), (450, 350), (225, 175))
    back = np.asarray(s.read_region((0, 0), 0, (900, 700)).convert("RGB"))
    np.testing.assert_array_equal(back, img)  # lossless round trip


def test_render_callable_reuses_background_and_matches_mask(tmp_path):
    isl = TissueIslands.random(3000, 2000, n_islands=3, coverage=0.3, seed=2)
    path = write_pyramidal_tiff(tmp_path / "i.tiff", isl, 0.25, shape=(3000, 2000))
    with open_slide(path) as info:
        assert info.dimensions == (2000, 3000)
        assert info.mpp == pytest.approx(0.25)
        lvl = len(info.level_dimensions) - 1
        w, h = info.level_dimensions[lvl]
        thumb = np.asarray(info.slide.read_region((0, 0), lvl, (w, h)).convert("RGB"))
    truth = isl.mask(lvl, 0, 0, h, w)
    pink = thumb[..., 1].astype(int) < 200
    assert (pink == truth).mean() > 0.97


def test_open_slide_errors_name_file_and_cause(tmp_path, layout_slide_nompp):
    with pytest.raises(SlideNotFoundError, match="missing.svs: file not found"):
        open_slide(tmp_path / "missing.svs")
    txt = tmp_path / "notes.tif"
    txt.write_text("not a slide")
    with pytest.raises(NotASlideError, match="notes.tif"):
        open_slide(txt)
    with pytest.raises(MissingMPPError, match="layout_nompp.tiff: no pixel size.*default_mpp"):
        open_slide(layout_slide_nompp)
    with open_slide(layout_slide_nompp, default_mpp=0.25) as info:
        assert info.mpp == 0.25 and info.mpp_source == "default_mpp"


def test_mpp_from_tiff_resolution_tags():
    assert mpp_from_properties({"openslide.mpp-x": "0.2527"}) == (0.2527, "openslide.mpp-x")
    mpp, src = mpp_from_properties({"tiff.XResolution": "40000",
                                    "tiff.ResolutionUnit": "centimeter"})
    assert mpp == pytest.approx(0.25) and src == "tiff-resolution"
    mpp, _ = mpp_from_properties({"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"})
    assert mpp == pytest.approx(0.25)
    assert mpp_from_properties({"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"})[0] is None
