"""Reader backends: an OME-TIFF (tiffslide) and a TIFF OpenSlide refuses tile exactly as
the same pixels in a generic TIFF read by OpenSlide; forced and bad ``reader`` values."""

from __future__ import annotations

import numpy as np
import pytest
from openslide import OpenSlide
from openslide.deepzoom import DeepZoomGenerator

from rl_benchmarks.slides.backends import READERS, check_reader, open_handle
from rl_benchmarks.slides.openslide_io import NotASlideError, open_slide
from rl_benchmarks.slides.reader import TileReader
from rl_benchmarks.slides.synthetic import _downsample2, default_n_levels, write_pyramidal_tiff
from rl_benchmarks.slides.tiling import tile_slide

from .conftest import layout_image

MPP = 0.25


def write_tiff_levels(path, image: np.ndarray, ome: bool, compression: str = "zlib"):
    """The pyramid ``write_pyramidal_tiff`` writes (same 2x2 box-averaged levels, 256-px
    tiles, lossless), as an OME-TIFF (levels in SubIFDs, mpp in the OME-XML only) or as
    plain pages with ``compression`` (mpp in resolution tags)."""
    import tifffile

    n = default_n_levels(*image.shape[:2], 256)
    levels = [image]
    for _ in range(n - 1):
        levels.append(_downsample2(levels[-1]))
    with tifffile.TiffWriter(path, ome=ome) as tw:
        if ome:
            tw.write(levels[0], subifds=n - 1, tile=(256, 256), photometric="rgb",
                     compression=compression,
                     metadata={"axes": "YXS", "PhysicalSizeX": MPP, "PhysicalSizeY": MPP,
                               "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
            for lvl in levels[1:]:
                tw.write(lvl, subfiletype=1, tile=(256, 256), photometric="rgb",
                         compression=compression)
        else:
            for i, lvl in enumerate(levels):
                ppcm = 1e4 / (MPP * 2**i)
                tw.write(lvl, subfiletype=1 if i else 0, tile=(256, 256), photometric="rgb",
                         compression=compression, resolution=(ppcm, ppcm),
                         resolutionunit="CENTIMETER", metadata=None)
    return path


@pytest.fixture(scope="module")
def same_pixels(tmp_path_factory):
    """One image as a generic TIFF (OpenSlide), an OME-TIFF and a LERC-compressed TIFF (OpenSlide
    refuses both: tiffslide)."""
    root = tmp_path_factory.mktemp("backends")
    image = np.ascontiguousarray(layout_image()[: 3 * 448])  # rows 0-2: block A, 6 x 3 tiles
    generic = write_pyramidal_tiff(root / "generic.tiff", image, mpp=MPP, compression="deflate")
    ome = write_tiff_levels(root / "same.ome.tiff", image, ome=True)
    lerc = write_tiff_levels(root / "lerc.tiff", image, ome=False, compression="lerc")
    return image, generic, ome, lerc


def test_auto_chooses_the_backend_by_file(same_pixels):
    _, generic, ome, lerc = same_pixels
    with pytest.raises(Exception, match="Unsupported TIFF compression"):
        OpenSlide(str(lerc))
    with open_slide(generic) as g, open_slide(ome) as o, open_slide(lerc) as z:
        assert (g.backend, o.backend, z.backend) == ("openslide", "tiffslide", "tiffslide")
        assert o.vendor == "ome-tiff" and g.vendor == "generic-tiff"
        for info in (o, z):
            assert info.mpp == pytest.approx(g.mpp) and info.mpp == pytest.approx(MPP)
            assert info.level_dimensions == g.level_dimensions
            assert info.level_downsamples == g.level_downsamples
            for ds in (1.0, 1.5, 2.0, 3.9, 4.0, 100.0):
                assert (info.slide.get_best_level_for_downsample(ds)
                        == g.slide.get_best_level_for_downsample(ds))
            np.testing.assert_array_equal(np.asarray(info.slide.get_thumbnail((300, 300))),
                                          np.asarray(g.slide.get_thumbnail((300, 300))))


@pytest.mark.parametrize("target_mpp", [0.5, 1.0])
def test_ome_and_refused_tiff_tile_like_the_generic_tiff(same_pixels, target_mpp):
    image, generic, ome, lerc = same_pixels
    ref = tile_slide(generic, target_mpp=target_mpp, min_tissue=0.5)
    assert ref.n_tiles > 0
    dz = DeepZoomGenerator(OpenSlide(str(generic)), tile_size=224, overlap=0)
    cols, rows = dz.level_tiles[ref.level]
    border = np.array([[ref.level, cols - 1, rows - 1]])
    for path in (ome, lerc):
        res = tile_slide(path, target_mpp=target_mpp, min_tissue=0.5)
        assert (res.level, res.level_count, res.mpp) == (ref.level, ref.level_count, ref.mpp)
        np.testing.assert_array_equal(res.coords, ref.coords)
        np.testing.assert_array_equal(res.tissue_fraction, ref.tissue_fraction)
        mine, theirs = TileReader(path, 224), TileReader(generic, 224)
        for lvl, col, row in np.concatenate([ref.coords, border]):
            want = np.asarray(dz.get_tile(int(lvl), (int(col), int(row))).convert("RGB"))
            got = mine.read(lvl, col, row)
            np.testing.assert_array_equal(got, theirs.read(lvl, col, row))
            np.testing.assert_array_equal(got[: want.shape[0], : want.shape[1]], want)
    if target_mpp == 0.5:  # pyramid level 1 of the file: its own (box-averaged) pixels
        lvl, col, row = ref.coords[0]
        np.testing.assert_array_equal(TileReader(ome, 224).read(lvl, col, row),
                                      _downsample2(image)[row * 224:(row + 1) * 224,
                                                          col * 224:(col + 1) * 224])


def test_tiffslide_regions_are_transparent_outside_the_slide(same_pixels):
    _, generic, ome, _ = same_pixels
    with OpenSlide(str(generic)) as g:
        h = open_handle(ome).handle
        w, ht = g.dimensions
        for loc, level, size in [((w - 100, ht - 50), 0, (300, 200)), ((-20, -10), 1, (64, 64))]:
            want = np.asarray(g.read_region(loc, level, size))
            got = np.asarray(h.read_region(loc, level, size))
            assert got.shape == want.shape and got.dtype == np.uint8
            np.testing.assert_array_equal(got[..., 3], want[..., 3])
            inside = want[..., 3] == 255
            assert 0 < inside.sum() < inside.size
            np.testing.assert_array_equal(got[inside], want[inside])
        h.close()


def test_forced_reader(same_pixels, tmp_path):
    _, generic, _, lerc = same_pixels
    assert READERS[0] == "auto" and check_reader(None) == "auto"
    with pytest.raises(ValueError, match="reader='pillow': expected one of auto, openslide, tiffslide"):
        check_reader("pillow")
    with pytest.raises(ValueError, match="reader='pillow'"):
        TileReader(generic, 224, reader="pillow")
    forced = TileReader(generic, 224, reader="tiffslide")
    auto = TileReader(generic, 224)
    for lvl, col, row in [(12, 1, 1), (12, 4, 2), (11, 0, 0)]:
        np.testing.assert_array_equal(forced.read(lvl, col, row), auto.read(lvl, col, row))
    assert type(forced._slide).__name__ == "TiffSlideHandle"
    with pytest.raises(NotASlideError, match=r"lerc\.tiff: .*Unsupported TIFF compression"):
        open_slide(lerc, reader="openslide")
    flat = tmp_path / "flat.tif"  # a strip (untiled) TIFF stays refused under auto
    import tifffile

    tifffile.imwrite(flat, np.zeros((64, 80, 3), np.uint8), photometric="rgb")
    with pytest.raises(NotASlideError, match="flat.tif: not a whole-slide image OpenSlide can read"):
        open_slide(flat)
    with open_slide(flat, reader="tiffslide", default_mpp=0.5) as info:
        assert info.dimensions == (80, 64) and info.backend == "tiffslide"
