"""DeepZoom tiles decoded from the compressed JPEG tiles (rl_benchmarks/slides/jpeg_tiles.py)
against TileReader, the CPU path: every tile of a level (borders included), native levels and
levels shrunk like PIL's thumbnail(LANCZOS), on the real CMU-1-Small-Region.svs (Aperio, RGB
JPEG with JPEGTables) and on pyramids written here with tifffile (YCbCr JPEG, a 4x level).

Measured here (torchvision's libjpeg-turbo on the CPU vs OpenSlide): max abs difference 0,
mean 0, on every level, so these tests ask for equal pixels. The same comparison on CUDA
(nvJPEG) is tests/cuda/test_jpeg_decode_cuda.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from testlib.jpeg_pyramid import pyramid_image, write_pyramid

from rl_benchmarks.slides.jpeg_tiles import (
    ADOBE_RGB,
    STREAM_KINDS,
    JpegTiles,
    StreamKind,
    check_decoder,
    decode_batch,
    lanczos_weights,
    probe_decoder,
    probe_stream,
    read_compressed,
    resize_like_pil,
    thumbnail_size,
)
from rl_benchmarks.slides.reader import TileReader


@pytest.fixture(scope="module")
def jpeg_pyramid(tmp_path_factory) -> Path:
    return write_pyramid(tmp_path_factory.mktemp("jpeg") / "pyramid.tif")


def level_coords(path: Path, level: int, tile_size: int) -> np.ndarray:
    dz = TileReader(path, tile_size).deepzoom
    cols, rows = dz.level_tiles[level]
    return np.array([(level, c, r) for r in range(rows) for c in range(cols)], np.int64)


def compare(path: Path, level: int, tile_size: int = 224, device: str = "cpu"
            ) -> tuple[np.ndarray, np.ndarray, int]:
    """(device-decoded tiles, TileReader tiles, tiles read on the CPU inside the batch)."""
    coords = level_coords(path, level, tile_size)
    source, reader = JpegTiles(path, tile_size), TileReader(path, tile_size)
    batch = read_compressed(source, coords)
    got = decode_batch(batch, device).cpu().numpy()
    ref = np.stack([reader.read(*map(int, c)) for c in coords])
    source.close()
    reader.close()
    return got, ref, len(batch.pixel_rows)


def test_pil_thumbnail_and_lanczos_reproduced():
    """The size rule and the fixed-point Lanczos (passes in PIL's order) equal PIL's own
    thumbnail on random noise (the worst case) for DeepZoom's 2x shrinks, borders included.
    Without the order (PIL 13 runs tall ones vertical first, e.g. 90x331 -> 45x166) they
    differ by up to 14 grey levels."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for w, h, zw, zh in [(448, 448, 224, 224), (448, 137, 224, 69), (448, 3, 224, 2),
                         (300, 200, 150, 100), (90, 331, 45, 166)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        thumb = img.copy()
        thumb.thumbnail((zw, zh), Image.Resampling.LANCZOS)
        ow, oh = thumbnail_size(w, h, zw, zh)
        assert (ow, oh) == thumb.size
        ours = resize_like_pil(torch.from_numpy(np.array(img))[None], ow, oh)[0].numpy()
        np.testing.assert_array_equal(ours, np.asarray(thumb), err_msg=str((w, h)))
    # any shape, up- or downscaled on one or both axes: PIL's resize, exactly
    for _ in range(40):
        w, h = (int(v) for v in rng.integers(2, 300, 2))
        ow, oh = int(rng.integers(1, w + 1)), int(rng.integers(1, h + 1))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = Image.fromarray(img).resize((ow, oh), Image.Resampling.LANCZOS, reducing_gap=None)
        ours = resize_like_pil(torch.from_numpy(img)[None], ow, oh)[0].numpy()
        np.testing.assert_array_equal(ours, np.asarray(ref), err_msg=str((w, h, ow, oh)))
    sums = lanczos_weights(8, 4).sum(1)  # rows sum to one (2**22), up to fixed-point rounding
    assert np.abs(sums - (1 << 22)).max() <= 3


@pytest.mark.slow
@pytest.mark.real_data
def test_real_svs_rgb_jpeg_equals_tile_reader(real_data):
    """CMU-1-Small-Region.svs: Aperio RGB JPEG tiles (240 px) with JPEGTables; the native
    level and the 2x level (shrunk like PIL's thumbnail), borders included."""
    path = real_data / "slides" / "svs" / "CMU-1-Small-Region.svs"
    for level in (12, 11):
        got, ref, on_cpu = compare(path, level)
        assert on_cpu == 0 and len(got) == {12: 140, 11: 35}[level]
        np.testing.assert_array_equal(got, ref)
    # without the Adobe RGB marker libjpeg takes the components for YCbCr: far off
    source = JpegTiles(path, 224)
    source.unsupported(12)
    page = source._page(0)
    stream = source.stream(page, 0)
    assert stream[2:2 + len(ADOBE_RGB)] == ADOBE_RGB
    from torchvision.io import decode_jpeg

    plain = b"\xff\xd8" + stream[2 + len(ADOBE_RGB):]
    good = decode_jpeg(torch.frombuffer(bytearray(stream), dtype=torch.uint8)).int()
    bad = decode_jpeg(torch.frombuffer(bytearray(plain), dtype=torch.uint8)).int()
    assert (good - bad).abs().float().mean() > 10
    ref = TileReader(path, 240).read(12, 0, 0)
    np.testing.assert_array_equal(good.permute(1, 2, 0).numpy(), ref)
    source.close()


@pytest.mark.real_data
def test_real_svs_unsupported_levels_fall_back_per_tile(real_data):
    """Levels 4x and more below the only slide level: PIL reduce()s first, not reproduced:
    said so, and every tile comes from TileReader inside the batch (equal pixels)."""
    path = real_data / "slides" / "svs" / "CMU-1-Small-Region.svs"
    source = JpegTiles(path, 224)
    assert "4x slide level 0" in source.unsupported(10)
    source.close()
    got, ref, on_cpu = compare(path, 10)
    assert on_cpu == len(got) > 0
    np.testing.assert_array_equal(got, ref)


@pytest.mark.real_data
def test_jpeg2000_slide_is_unsupported(real_data):
    path = real_data / "slides" / "svs" / "tcga-cr-7395-01a-01-ts1.svs"
    source = JpegTiles(path, 224)
    dz = source.cpu.deepzoom
    why = source.unsupported(dz.level_count - 1)
    source.close()
    assert "JPEG 2000" in why and "not JPEG" in why


@pytest.mark.parametrize("tile_size", [224, 256])
def test_generated_pyramid_every_level_equals_tile_reader(jpeg_pyramid, tile_size):
    """YCbCr JPEG (JFIF streams, no tables): native levels (slide levels 0 and 1) and 2x
    levels above each slide level (thumbnail shrink), borders included, at two tile sizes
    (one aligned with the TIFF tiles, one not)."""
    source = JpegTiles(jpeg_pyramid, tile_size)
    dz = source.cpu.deepzoom
    top = dz.level_count - 1
    assert dz._osr.level_downsamples == (1.0, 4.0)
    for level in (top, top - 1, top - 2, top - 3):  # 1x of 0, 2x of 0, 1x of 1, 2x of 1
        assert source.unsupported(level) == "", level
        got, ref, on_cpu = compare(jpeg_pyramid, level, tile_size)
        assert on_cpu == 0
        np.testing.assert_array_equal(got, ref, err_msg=f"level {level}")
    assert "4x slide level 1" in source.unsupported(top - 4)
    source.close()


def test_subset_of_tiles_and_batch_order(jpeg_pyramid):
    """Any tiles in any order (shared TIFF tiles read once): row k is tile coords[k]."""
    coords = level_coords(jpeg_pyramid, 11, 224)[[7, 0, 7, 13, 2]]
    source = JpegTiles(jpeg_pyramid, 224)
    batch = read_compressed(source, coords)
    got = decode_batch(batch, "cpu", chunk=2).numpy()
    reader = TileReader(jpeg_pyramid, 224)
    for k, c in enumerate(coords):
        np.testing.assert_array_equal(got[k], reader.read(*map(int, c)))
    # the repeated tile adds no stream (each covering TIFF tile is read once per batch)
    unique = read_compressed(source, coords[[0, 1, 3, 4]]).streams_read
    assert batch.streams_read == unique


def test_other_codecs_and_backends_are_unsupported(tmp_path, jpeg_pyramid):
    lzw = write_pyramid(tmp_path / "lzw.tif", compression="lzw")
    source = JpegTiles(lzw, 224)
    assert source.unsupported(source.cpu.deepzoom.level_count - 1) == \
        "slide level 0 is LZW, not JPEG"
    source.close()
    forced = JpegTiles(jpeg_pyramid, 224, reader="tiffslide")
    assert forced.unsupported(11) == "read by tiffslide, not OpenSlide"
    forced.close()


def test_generated_pyramid_non_integer_downsample_is_unsupported(tmp_path):
    """write_pyramidal_tiff halves odd sizes: level 3 of 1300 px has downsample 7.99, which
    OpenSlide reads at sub-pixel offsets; the levels above it are exact."""
    from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

    path = write_pyramidal_tiff(tmp_path / "odd.tif", pyramid_image(1000, 1300), mpp=0.25)
    source = JpegTiles(path, 224)
    top = source.cpu.deepzoom.level_count - 1
    assert "downsample 7.98773" in source.unsupported(top - 3)
    source.close()
    for level in (top, top - 1, top - 3):
        got, ref, _ = compare(path, level)
        np.testing.assert_array_equal(got, ref)


def _ignore_rgb_marker(monkeypatch) -> None:
    """A "device" decoder (any list call of decode_jpeg) that drops the Adobe RGB marker, as a
    decoder that took Aperio's RGB tiles for YCbCr would."""
    import torchvision.io

    real = torchvision.io.decode_jpeg

    def ignores_marker(data, *args, device="cpu", **kwargs):
        if isinstance(data, list):
            data = [torch.frombuffer(bytearray(b"\xff\xd8" + bytes(d[2 + len(ADOBE_RGB):].numpy())),
                                     dtype=torch.uint8)
                    if bytes(d[2:2 + len(ADOBE_RGB)].numpy()) == ADOBE_RGB else d for d in data]
        return real(data, *args, device=device, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", ignores_marker)


@pytest.mark.real_data
def test_check_decoder_catches_a_decoder_that_ignores_the_rgb_marker(real_data, monkeypatch):
    """A device decoder that took Aperio's RGB tiles for YCbCr (as libjpeg does without the
    Adobe marker) is caught on a real slide's stream and on the probe's RGB streams alike."""
    path = real_data / "slides" / "svs" / "CMU-1-Small-Region.svs"
    source = JpegTiles(path, 224)
    assert source.unsupported(12) == ""
    page = source._page(0)
    assert page.kind == StreamKind(rgb=True, progressive=False)
    stream = source.stream(page, 0)
    source.close()
    assert check_decoder(stream, "cpu") == "" and probe_decoder("cpu") == {}
    _ignore_rgb_marker(monkeypatch)
    why = check_decoder(stream, "cpu")
    assert why.startswith("decode_jpeg on cpu differs from the CPU by"), why
    assert sorted(probe_decoder("cpu")) == [StreamKind(True, False), StreamKind(True, True)]


def test_probe_streams_are_made_as_a_slides_are(monkeypatch):
    """The RGB probe streams are as Aperio's become (components 0, 1, 2, no marker but the
    Adobe RGB one, which decides their colours); a decoder ignoring that marker fails the
    probe on RGB streams only, and YCbCr streams stay trusted."""
    from torchvision.io import decode_jpeg

    for kind in STREAM_KINDS:
        stream = probe_stream(kind)
        decoded = decode_jpeg(torch.frombuffer(bytearray(stream), dtype=torch.uint8))
        assert decoded.shape == (3, 256, 256) and check_decoder(stream, "cpu") == ""
        sof = stream.find(b"\xff\xc2" if kind.progressive else b"\xff\xc0")
        assert sof > 0 and (stream[sof + 10::3][:3] == bytes([0, 1, 2])) == kind.rgb, kind
        if kind.rgb:
            assert stream[2:2 + len(ADOBE_RGB)] == ADOBE_RGB
            plain = b"\xff\xd8" + stream[2 + len(ADOBE_RGB):]
            other = decode_jpeg(torch.frombuffer(bytearray(plain), dtype=torch.uint8))
            assert (other.int() - decoded.int()).abs().float().mean() > 10, kind
    _ignore_rgb_marker(monkeypatch)
    found = probe_decoder("cpu")
    assert sorted(found) == [StreamKind(True, False), StreamKind(True, True)]
    assert found[StreamKind(True, False)].startswith(
        "RGB baseline JPEG: decode_jpeg on cpu differs from the CPU by")


def test_distrusted_kind_makes_a_level_unsupported_with_the_reason(jpeg_pyramid):
    ycbcr = StreamKind(rgb=False, progressive=False)
    source = JpegTiles(jpeg_pyramid, 224, distrusted={ycbcr: "the probe failed"})
    top = source.cpu.deepzoom.level_count - 1
    assert source.unsupported(top) == "the probe failed"
    assert source._page(0).kind == ycbcr
    source.close()
    other = JpegTiles(jpeg_pyramid, 224, distrusted={StreamKind(True, False): "the probe failed"})
    assert other.unsupported(top) == ""
    other.close()


def test_slide_opened_once_and_the_tiff_only_when_needed(jpeg_pyramid, monkeypatch):
    """JpegTiles reads through its TileReader's handle (one open per process), and parses the
    TIFF only once the backend and vendor are supported."""
    import tifffile

    import rl_benchmarks.slides.backends as backends

    opened, parsed = [], []
    real_open, real_tiff = backends.open_handle, tifffile.TiffFile
    monkeypatch.setattr(backends, "open_handle", lambda *a, **k: opened.append(a[0]) or
                        real_open(*a, **k))
    coords = level_coords(jpeg_pyramid, 11, 224)[:4]  # (opens a TileReader: not counted below)
    opened.clear()
    monkeypatch.setattr(tifffile, "TiffFile", lambda *a, **k: parsed.append(a[0]) or
                        real_tiff(*a, **k))
    source = JpegTiles(jpeg_pyramid, 224, reader="openslide")  # (auto parses to find OME)
    assert source.unsupported(11) == ""
    read_compressed(source, coords)
    source.cpu.read(*map(int, coords[0]))
    assert len(opened) == 1 and parsed == [jpeg_pyramid], (opened, parsed)
    source.close()
    opened.clear()
    parsed.clear()
    forced = JpegTiles(jpeg_pyramid, 224, reader="tiffslide")
    assert forced.unsupported(11) == "read by tiffslide, not OpenSlide"
    assert len(opened) == 1 and forced._tif is None and not forced._tiff_tried
    forced.close()
