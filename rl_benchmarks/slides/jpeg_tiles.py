"""DeepZoom tiles from the compressed JPEG tiles of a pyramidal TIFF/SVS, decoded in batches
on a device (nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``, or libjpeg-turbo on
the CPU).

Why: on a GPU the CPU's JPEG decoding caps the extraction pipeline (docs/extraction.md). Here
DataLoader workers only read compressed bytes (:func:`read_compressed`); the main process
decodes every TIFF tile a batch needs with one ``decode_jpeg`` call and assembles the
DeepZoom tiles on the device (:func:`decode_batch`).

Pixels: the same as :class:`rl_benchmarks.slides.reader.TileReader` (``pad=True``), i.e. as
``DeepZoomGenerator(slide, tile_size, 0).get_tile``:

* the region is openslide's own arithmetic (``DeepZoomGenerator._get_tile_info``), read from
  the TIFF page whose size equals the slide level's;
* a region larger than its DeepZoom tile is shrunk as PIL's ``thumbnail(z_size, LANCZOS)``
  does, reproduced exactly (same output size, same fixed-point Lanczos weights, same
  rounding, the two passes in the order PIL takes) as two matrix products on the device;
* border tiles are zero-padded at the bottom/right.

Measured on CMU-1-Small-Region.svs and a generated pyramidal JPEG TIFF (tests/slides/
test_jpeg_tiles.py): libjpeg-turbo on the CPU gives exactly TileReader's pixels (max abs
difference 0), native and resized levels alike. nvJPEG's IDCT/upsampling may differ by a few
grey levels; the GPU test bounds it.

Aperio SVS stores some JPEG tiles as RGB (TIFF Photometric RGB) without a marker saying so;
libjpeg would take them for YCbCr. Each such stream gets an Adobe APP14 marker with
transform 0 (components are RGB), as libtiff's raw colour mode decodes them. Whatever the
device decoder does with it, :func:`probe_decoder` compares its output with libjpeg-turbo's
on one stream of each kind (:class:`StreamKind`: RGB or YCbCr, baseline or progressive),
made as a slide's are, before any slide is read; slides stored as a kind the device
disagrees on are read by the CPU reader (``JpegTiles(..., distrusted=...)``).

Supported (:meth:`JpegTiles.unsupported` says why not, and the caller falls back to the CPU
reader for the slide): a slide opened by OpenSlide as ``aperio`` or ``generic-tiff``, whose
slide level for the DeepZoom level is a tiled, 8-bit, 3-sample, contiguous JPEG page
(Photometric RGB or YCbCr) of exactly the level's size, with an integer downsample and an
integer DeepZoom/slide-level ratio below 4 (larger ratios make PIL ``reduce()`` first, not
reproduced). JPEG 2000, LZW, deflate, uncompressed pages, DICOM, OME-TIFF (tiffslide) and
other vendors are not supported. A single tile that cannot be planned (e.g. an empty TIFF
tile) is read on the CPU by TileReader inside the batch.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tifffile import COMPRESSION, PHOTOMETRIC

SUPPORTED_VENDORS = ("aperio", "generic-tiff")
SOI = b"\xff\xd8"
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
"""APP14 "Adobe" marker with transform 0: libjpeg reads 3 components as RGB (whether nvJPEG
does is unverified; :func:`probe_decoder` catches a decoder that does not)."""
_READABLE_COMPRESSION = {
    COMPRESSION.NONE: "uncompressed", COMPRESSION.ADOBE_DEFLATE: "deflate",
    COMPRESSION.DEFLATE: "deflate", COMPRESSION.APERIO_JP2000_YCBC: "JPEG 2000 (Aperio YCbCr)",
    COMPRESSION.APERIO_JP2000_RGB: "JPEG 2000 (Aperio RGB)", COMPRESSION.JPEG2000: "JPEG 2000",
    COMPRESSION.WEBP: "WebP", COMPRESSION.ZSTD: "Zstd"}
"""Names people use where tifffile's enum name is not one (else the enum's name, e.g. LZW)."""
_PRECISION_BITS = 22  # PIL's Resample.c: 32 - 8 - 2
DECODER_MAX_MEAN_ABS = 2.0
"""A device decoder whose pixels differ from libjpeg-turbo's by more than this (mean absolute
difference on the probe stream of a :class:`StreamKind`) is not used for that kind."""


class StreamKind(NamedTuple):
    """What a device decoder is probed on: the page's colours (TIFF Photometric RGB, with the
    Adobe RGB marker, or YCbCr) and its JPEG frame type (progressive or baseline)."""

    rgb: bool
    progressive: bool

    def __str__(self) -> str:
        return (f"{'RGB' if self.rgb else 'YCbCr'} "
                f"{'progressive' if self.progressive else 'baseline'} JPEG")


STREAM_KINDS = tuple(StreamKind(rgb, prog) for rgb in (False, True) for prog in (False, True))


@dataclass(frozen=True)
class PageTiles:
    """The JPEG tiles of one TIFF page: where they are and how to make them full streams."""

    index: int
    width: int
    height: int
    tile_w: int
    tile_h: int
    offsets: np.ndarray
    counts: np.ndarray
    tables: bytes  # the page's JPEGTables (b"" when none)
    rgb: bool  # Photometric RGB: streams get the Adobe RGB marker
    progressive: bool = False  # JPEG frame type SOF2

    @property
    def across(self) -> int:
        """TIFF tiles per row."""
        return -(-self.width // self.tile_w)

    @property
    def kind(self) -> StreamKind:
        """The kind of its streams, as the device decoder is probed on."""
        return StreamKind(self.rgb, self.progressive)


@dataclass(frozen=True)
class Region:
    """Where DeepZoom tile ``(level, col, row)`` lies on a page, and its final size."""

    page: PageTiles
    x: int
    y: int
    w: int
    h: int
    out_w: int
    out_h: int


def compression_name(code: int) -> str:
    """A TIFF compression code as people call it (tifffile's name for the rare ones)."""
    try:
        member = COMPRESSION(int(code))
    except ValueError:
        return f"TIFF compression {int(code)}"
    return _READABLE_COMPRESSION.get(member, member.name)


def thumbnail_size(w: int, h: int, zw: int, zh: int) -> tuple[int, int]:
    """The size PIL's ``Image.thumbnail((zw, zh))`` gives a (w, h) image (aspect kept,
    never enlarged): the code of PIL 13's ``preserve_aspect_ratio``."""
    if zw >= w and zh >= h:
        return w, h

    def round_aspect(number: float, key) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    aspect = w / h
    x, y = zw, zh
    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


def lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """PIL's fixed-point LANCZOS coefficients (out_size, in_size) int64 for one axis
    (Resample.c: ``precompute_coeffs`` then ``normalize_coeffs_8bpc``)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    out = np.zeros((out_size, in_size), np.int64)

    def lanczos(x: float) -> float:
        def sinc(v: float) -> float:
            if v == 0.0:
                return 1.0
            v *= math.pi
            return math.sin(v) / v
        return sinc(x) * sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0

    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = sum(k)
        for x in range(xmax):
            v = k[x] / ww if ww != 0.0 else k[x]
            out[xx, xmin + x] = int(-0.5 + v * (1 << _PRECISION_BITS) if v < 0
                                    else 0.5 + v * (1 << _PRECISION_BITS))
    return out


_WEIGHTS: dict[tuple[int, int, str], torch.Tensor] = {}


def _weights(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    key = (in_size, out_size, str(device))
    if key not in _WEIGHTS:
        _WEIGHTS[key] = torch.from_numpy(lanczos_weights(in_size, out_size)).to(
            device, torch.float64)
    return _WEIGHTS[key]


def _fixed_point(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``clip8``: (sum + half) >> 22, clipped to 0..255 (exact in float64)."""
    return torch.floor((x + float(1 << (_PRECISION_BITS - 1))) / float(1 << _PRECISION_BITS)
                       ).clamp_(0, 255)


def _passes(x: torch.Tensor, out_w: int, out_h: int, horizontal_first: bool) -> torch.Tensor:
    """The two 8-bit passes of PIL's resampling on float64 (B, h, w, 3), in the given order."""
    def horizontal(v: torch.Tensor) -> torch.Tensor:
        if v.shape[2] == out_w:
            return v
        return _fixed_point(torch.einsum("bhwc,ow->bhoc", v, _weights(v.shape[2], out_w, v.device)))

    def vertical(v: torch.Tensor) -> torch.Tensor:
        if v.shape[1] == out_h:
            return v
        return _fixed_point(torch.einsum("bhwc,oh->bowc", v, _weights(v.shape[1], out_h, v.device)))

    return vertical(horizontal(x)) if horizontal_first else horizontal(vertical(x))


@functools.lru_cache(maxsize=256)
def pil_horizontal_first(w: int, h: int, out_w: int, out_h: int) -> bool:
    """Whether the installed PIL runs the horizontal pass first for this resize.

    PIL 13 chooses the order of its two passes itself (older versions always went
    horizontal first), and the 8-bit intermediate makes the order visible. Asked once per
    shape on a noise probe: the order whose result equals PIL's."""
    from PIL import Image

    if out_w == w or out_h == h:
        return True
    probe = np.random.default_rng(w * 7919 + h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = torch.from_numpy(np.asarray(Image.fromarray(probe).resize(
        (out_w, out_h), Image.Resampling.LANCZOS, reducing_gap=None)).copy())
    x = torch.from_numpy(probe)[None].to(torch.float64)
    return bool(torch.equal(_passes(x, out_w, out_h, True)[0].to(torch.uint8), ref)
                or not torch.equal(_passes(x, out_w, out_h, False)[0].to(torch.uint8), ref))


def resize_like_pil(tiles: torch.Tensor, out_w: int, out_h: int) -> torch.Tensor:
    """uint8 (B, h, w, 3) -> uint8 (B, out_h, out_w, 3) as PIL's ``resize(LANCZOS)`` without
    ``reducing_gap``: fixed-point Lanczos passes with 8-bit rounding between them, in PIL's
    order (:func:`pil_horizontal_first`)."""
    b, h, w, c = tiles.shape
    first = pil_horizontal_first(w, h, out_w, out_h)
    return _passes(tiles.to(torch.float64), out_w, out_h, first).to(torch.uint8)


def _sof_type(data: bytes) -> int | None:
    """The SOFn marker byte of a JPEG stream (None when there is none)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        if marker == 0xDA:
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def full_stream(data: bytes, tables: bytes = b"", rgb: bool = False) -> bytes:
    """A TIFF JPEG tile as a complete stream: the page's JPEGTables (``tables``) merged in,
    and for Photometric RGB (``rgb``) the Adobe RGB marker. A ValueError says (as a phrase
    to follow the tile's name) why a tile cannot be one."""
    if data[:2] != SOI:
        raise ValueError("is not a JPEG stream")
    if tables:
        data = tables[:-2] + data[2:]
    if rgb:
        if data[2:4] == b"\xff\xe0":  # a JFIF marker would make libjpeg assume YCbCr
            raise ValueError("is RGB but carries a JFIF marker")
        data = SOI + ADOBE_RGB + data[2:]
    return data


def _as_aperio_rgb(data: bytes) -> bytes:
    """libjpeg's RGB stream (Adobe marker, components named R, G, B, which tell a decoder
    they are RGB) as Aperio stores one: no APPn segment, components numbered 0, 1, 2."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF and 0xE0 <= data[i + 1] <= 0xEF:
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    out = bytearray(SOI + data[i:])
    new_id: dict[int, int] = {}
    i = 2
    while i + 4 <= len(out) and out[i] == 0xFF and out[i + 1] != 0xD9:
        marker, length = out[i + 1], int.from_bytes(out[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            for c in range(out[i + 9]):
                new_id[out[i + 10 + 3 * c]] = c
                out[i + 10 + 3 * c] = c
        elif marker == 0xDA:  # SOS: its components, then entropy-coded data up to a marker
            for c in range(out[i + 4]):
                out[i + 5 + 2 * c] = new_id[out[i + 5 + 2 * c]]
            j = i + 2 + length
            while j + 1 < len(out) and not (out[j] == 0xFF and out[j + 1] != 0
                                            and not 0xD0 <= out[j + 1] <= 0xD7):
                j += 1
            i = j
            continue
        i += 2 + length
    return bytes(out)


@functools.cache
def probe_stream(kind: StreamKind) -> bytes:
    """A 256-px H&E-like tile (pink stroma, purple nuclei, mild noise) as a stream of ``kind``,
    made as :meth:`JpegTiles.stream` makes a slide's: YCbCr 4:2:0 with its JFIF marker, or
    RGB 4:4:4 as Aperio stores them (no marker, components 0, 1, 2) given the Adobe RGB
    marker."""
    from PIL import Image

    yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
    img = np.empty((256, 256, 3))
    img[:] = (232, 160, 196)
    for cy, cx, r in ((60, 70, 18), (150, 190, 24), (200, 60, 14), (110, 130, 10)):
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * r * r))[..., None]
        img = img * (1 - blob) + np.array([96.0, 56.0, 150.0]) * blob
    img += np.random.default_rng(0).normal(0, 3, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
        buf, "JPEG", quality=90, subsampling=0 if kind.rgb else 2, keep_rgb=kind.rgb,
        progressive=kind.progressive)
    data = buf.getvalue()
    return full_stream(_as_aperio_rgb(data), rgb=True) if kind.rgb else data


def check_decoder(stream: bytes, device: torch.device | str,
                  max_mean_abs: float = DECODER_MAX_MEAN_ABS) -> str:
    """Why ``device``'s decoder cannot be trusted with ``stream`` ("" when it can): decoded
    there and by libjpeg-turbo on the CPU, it must agree (mean absolute difference at most
    ``max_mean_abs``). Catches a decoder that ignores the Adobe RGB marker, or refuses it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.frombuffer(bytearray(stream), dtype=torch.uint8)
    try:
        ref = decode_jpeg(data, mode=ImageReadMode.RGB).int()
        got = decode_jpeg([data], mode=ImageReadMode.RGB, device=device)[0].cpu().int()
    except Exception as exc:  # any decoder failure means: decode on the CPU
        return f"decode_jpeg on {device} failed: {type(exc).__name__}: {exc}".splitlines()[0]
    if got.shape != ref.shape:
        return f"decode_jpeg on {device} gave shape {tuple(got.shape)}, the CPU {tuple(ref.shape)}"
    mean = float((got - ref).abs().float().mean())
    if mean > max_mean_abs:
        return (f"decode_jpeg on {device} differs from the CPU by {mean:.1f} grey levels on "
                f"average")
    return ""


def probe_decoder(device: torch.device | str,
                  max_mean_abs: float = DECODER_MAX_MEAN_ABS) -> dict[StreamKind, str]:
    """The kinds of stream ``device``'s decoder cannot be trusted with, and why: each kind's
    :func:`probe_stream` through :func:`check_decoder` (run once, before any slide is read;
    the result goes to :class:`JpegTiles` as ``distrusted``)."""
    out = {}
    for kind in STREAM_KINDS:
        why = check_decoder(probe_stream(kind), device, max_mean_abs)
        if why:
            out[kind] = f"{kind}: {why}"
    return out


class JpegTiles:
    """The compressed JPEG tiles behind one slide's DeepZoom tiles (``tile_size``, overlap 0).

    The slide is opened once per process, by its :class:`~rl_benchmarks.slides.reader.TileReader`
    (``cpu``, which also reads the tiles that cannot be decoded from their streams); the TIFF
    (tifffile and a raw file descriptor) only when OpenSlide's backend and vendor are
    supported. Handles open on first use in each process and are not pickled.
    ``distrusted``: kinds of stream the decoding device is not trusted with
    (:func:`probe_decoder`) and why; levels stored so are unsupported, with that reason."""

    def __init__(self, slide_path: str | os.PathLike, tile_size: int = 224,
                 reader: str | None = "auto",
                 distrusted: Mapping[StreamKind, str] | None = None):
        from rl_benchmarks.slides.reader import TileReader

        self.slide_path = Path(slide_path)
        self.tile_size = int(tile_size)
        self.reader = reader
        self.distrusted = dict(distrusted or {})
        self.cpu = TileReader(slide_path, tile_size, reader=reader)
        self._pid: int | None = None
        self._tif = None
        self._fd: int | None = None
        self._tiff_tried = False
        self._pages: dict[int, PageTiles | str] = {}
        self._why: dict[int, str] = {}  # DeepZoom level -> unsupported() (cached)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_pid=None, _tif=None, _fd=None, _tiff_tried=False, _pages={}, _why={})
        return state

    def _ensure(self) -> None:
        """Forget another process's handles and caches (opened again on first use here)."""
        if self._pid != os.getpid():
            self._pages = {}
            self._why = {}
            self._tif = None
            self._fd = None
            self._tiff_tried = False
            self._pid = os.getpid()

    def _tiff(self):
        """The slide's ``TiffFile`` (opened on first call), None when tifffile cannot read it."""
        if not self._tiff_tried:
            import tifffile

            self._tiff_tried = True
            source = self.cpu.source
            try:
                self._tif = tifffile.TiffFile(source)
                self._fd = os.open(source, os.O_RDONLY)
            except Exception:  # not a TIFF tifffile reads: unsupported() says so
                if self._tif is not None:
                    self._tif.close()
                self._tif = self._fd = None
        return self._tif

    def _page(self, slide_level: int) -> PageTiles | str:
        """The page of ``slide_level``, or why it cannot be used."""
        if slide_level in self._pages:
            return self._pages[slide_level]
        slide = self.cpu.deepzoom._osr
        w, h = slide.level_dimensions[slide_level]
        found = [p for p in self._tif.pages if getattr(p, "is_tiled", False)  # type: ignore[union-attr]
                 and tuple(p.shape[:2]) == (h, w)]
        if len(found) != 1:
            why = (f"no tiled TIFF page of {w}x{h} px for slide level {slide_level}" if not found
                   else f"{len(found)} tiled TIFF pages of {w}x{h} px for slide level {slide_level}")
            self._pages[slide_level] = why
            return why
        page = found[0]
        why = ""
        if page.compression != COMPRESSION.JPEG:
            why = f"slide level {slide_level} is {compression_name(page.compression)}, not JPEG"
        elif page.photometric not in (PHOTOMETRIC.RGB, PHOTOMETRIC.YCBCR):
            why = f"slide level {slide_level}: JPEG with TIFF photometric {int(page.photometric)}"
        elif (page.samplesperpixel != 3 or page.bitspersample != 8 or page.planarconfig != 1
              or getattr(page, "imagedepth", 1) != 1):
            why = (f"slide level {slide_level}: {page.samplesperpixel} samples of "
                   f"{page.bitspersample} bits, planar config {int(page.planarconfig)} "
                   f"(need 3 x 8 bits, contiguous)")
        counts = np.asarray(page.databytecounts, np.int64)
        if not why and (counts == 0).any():
            why = f"slide level {slide_level} has {(counts == 0).sum()} empty TIFF tiles"
        tables = bytes(page.jpegtables or b"")
        sof = None
        if not why:
            first = self._raw(int(page.dataoffsets[0]), int(counts[0]))
            sof = _sof_type(first)
            sof = _sof_type(tables) if sof is None else sof
            if sof not in (0xC0, 0xC1, 0xC2):
                why = (f"slide level {slide_level}: JPEG frame type "
                       f"{'none' if sof is None else hex(sof)} (need baseline or progressive)")
        if why:
            self._pages[slide_level] = why
            return why
        tiles = PageTiles(page.index, w, h, int(page.tilewidth), int(page.tilelength),
                          np.asarray(page.dataoffsets, np.int64), counts, tables,
                          page.photometric == PHOTOMETRIC.RGB, sof == 0xC2)
        self._pages[slide_level] = tiles
        return tiles

    def unsupported(self, level: int) -> str:
        """Why DeepZoom level ``level`` cannot be decoded from its JPEG tiles ("" when it can)."""
        self._ensure()
        if level not in self._why:
            self._why[level] = self._unsupported(level)
        return self._why[level]

    def _unsupported(self, level: int) -> str:
        dz = self.cpu.deepzoom  # opens the slide (once in this process)
        if self.cpu.backend != "openslide":
            return f"read by {self.cpu.backend}, not OpenSlide"
        vendor = dz._osr.properties.get("openslide.vendor", "")
        if vendor not in SUPPORTED_VENDORS:
            return f"OpenSlide format {vendor or 'unknown'!r} (only {', '.join(SUPPORTED_VENDORS)})"
        if self._tiff() is None:
            return "not a TIFF file tifffile reads"
        if not 0 <= level < dz.level_count:
            return f"DeepZoom level {level} out of range"
        slide_level = dz._slide_from_dz_level[level]
        ds = float(dz._osr.level_downsamples[slide_level])
        if abs(ds - round(ds)) > 1e-9:
            return (f"slide level {slide_level} has downsample {ds:.6g}: OpenSlide reads it at "
                    f"sub-pixel offsets")
        ratio = float(dz._l_z_downsamples[level])
        if abs(ratio - round(ratio)) > 1e-9 or not 1 <= round(ratio) < 4:
            return (f"DeepZoom level {level} is {ratio:.6g}x slide level {slide_level} "
                    f"(need 1x, 2x or 3x)")
        page = self._page(slide_level)
        return page if isinstance(page, str) else self.distrusted.get(page.kind, "")

    def region(self, level: int, col: int, row: int) -> Region | None:
        """The region of tile ``(level, col, row)`` on its page; None when this tile cannot be
        decoded from its JPEG tiles (its level is unsupported, or the resize needs PIL's
        ``reduce``)."""
        self._ensure()
        if self.unsupported(level):
            return None
        (l0, slide_level, (w, h)), (zw, zh) = self.cpu.deepzoom._get_tile_info(
            int(level), (int(col), int(row)))
        page = self._page(slide_level)
        assert isinstance(page, PageTiles)
        ds = float(self.cpu.deepzoom._l0_l_downsamples[slide_level])
        x, y = l0[0] / ds, l0[1] / ds
        if abs(x - round(x)) > 1e-6 or abs(y - round(y)) > 1e-6:
            return None
        x, y = int(round(x)), int(round(y))
        if w <= 0 or h <= 0 or x + w > page.width or y + h > page.height:
            return None
        out_w, out_h = (w, h) if (w, h) == (zw, zh) else thumbnail_size(w, h, zw, zh)
        if (int(w / out_w / 2.0) or 1) > 1 or (int(h / out_h / 2.0) or 1) > 1:
            return None  # PIL would reduce() first
        return Region(page, x, y, w, h, out_w, out_h)

    def _raw(self, offset: int, count: int) -> bytes:
        data = os.pread(self._fd, count, offset)  # type: ignore[arg-type]
        if len(data) != count:
            raise OSError(f"{self.slide_path}: short read at byte {offset}")
        return data

    def stream(self, page: PageTiles, index: int) -> bytes:
        """TIFF tile ``index`` of ``page`` as a complete JPEG stream (tables merged, Adobe RGB
        marker for Photometric RGB)."""
        self._ensure()
        data = self._raw(int(page.offsets[index]), int(page.counts[index]))
        try:
            return full_stream(data, page.tables, page.rgb)
        except ValueError as exc:
            raise ValueError(f"{self.slide_path}: TIFF tile {index} of page {page.index} "
                             f"{exc}") from None

    def close(self) -> None:
        if self._pid == os.getpid():
            if self._tif is not None:
                self._tif.close()
            if self._fd is not None:
                os.close(self._fd)
        self._tif = self._fd = None
        self._tiff_tried = False
        self._pid = None
        self._pages = {}
        self._why = {}
        self.cpu.close()


@dataclass
class CompressedBatch:
    """A batch of DeepZoom tiles as the JPEG streams they need (made by :func:`read_compressed`
    in a DataLoader worker, decoded by :func:`decode_batch` in the main process).

    ``regions`` (B, 6) int64: x, y offset of the region in its first covering TIFF tile,
    w, h, out_w, out_h (all 0 for a tile read on the CPU); ``lookup`` (B, KY, KX) int64: the
    stream of each covering TIFF tile (-1 none); ``pixels`` (k, T, T, 3) uint8 with
    ``pixel_rows`` (k,): tiles read by TileReader instead."""

    data: torch.Tensor
    bounds: torch.Tensor
    tile_hw: tuple[int, int]
    regions: torch.Tensor
    lookup: torch.Tensor
    pixels: torch.Tensor
    pixel_rows: torch.Tensor
    tile_size: int

    def __len__(self) -> int:
        return int(self.regions.shape[0])

    @property
    def streams_read(self) -> int:
        """How many JPEG streams the batch holds (each covering TIFF tile once)."""
        return len(self.bounds) - 1


def read_compressed(source: JpegTiles, coords: np.ndarray) -> CompressedBatch:
    """The JPEG streams of tiles ``coords`` (n, 3) ``[level, col, row]`` (each TIFF tile read
    once per batch); tiles that cannot be planned are read by TileReader."""
    n, t = len(coords), source.tile_size
    regions = np.zeros((n, 6), np.int64)
    plans: list[tuple[Region, int, int, int, int] | None] = []
    order: dict[tuple[int, int], int] = {}
    chunks: list[bytes] = []
    tile_hw = (0, 0)
    for lvl, col, row in coords:
        reg = source.region(int(lvl), int(col), int(row))
        if reg is None:
            plans.append(None)
            continue
        p = reg.page
        if tile_hw == (0, 0):
            tile_hw = (p.tile_h, p.tile_w)
        elif tile_hw != (p.tile_h, p.tile_w):
            plans.append(None)  # one tile shape per batch (one page per slide level)
            continue
        tx0, ty0 = reg.x // p.tile_w, reg.y // p.tile_h
        tx1, ty1 = (reg.x + reg.w - 1) // p.tile_w, (reg.y + reg.h - 1) // p.tile_h
        plans.append((reg, tx0, ty0, tx1, ty1))
    ky = max((pl[4] - pl[2] + 1 for pl in plans if pl is not None), default=1)
    kx = max((pl[3] - pl[1] + 1 for pl in plans if pl is not None), default=1)
    lookup = np.full((n, ky, kx), -1, np.int64)
    cpu_rows = []
    for i, pl in enumerate(plans):
        if pl is None:
            cpu_rows.append(i)
            continue
        reg, tx0, ty0, tx1, ty1 = pl
        p = reg.page
        try:
            for a, ty in enumerate(range(ty0, ty1 + 1)):
                for b, tx in enumerate(range(tx0, tx1 + 1)):
                    key = (p.index, ty * p.across + tx)
                    if key not in order:
                        order[key] = len(chunks)
                        chunks.append(source.stream(p, key[1]))
                    lookup[i, a, b] = order[key]
        except ValueError:  # e.g. an RGB stream with a JFIF marker: this tile on the CPU
            lookup[i] = -1
            cpu_rows.append(i)
            continue
        regions[i] = (reg.x - tx0 * p.tile_w, reg.y - ty0 * p.tile_h, reg.w, reg.h,
                      reg.out_w, reg.out_h)
    pixels = np.zeros((len(cpu_rows), t, t, 3), np.uint8)
    for j, i in enumerate(cpu_rows):
        lvl, col, row = (int(v) for v in coords[i])
        pixels[j] = source.cpu.read(lvl, col, row)
    bounds = np.cumsum([0] + [len(c) for c in chunks], dtype=np.int64)
    data = np.empty(int(bounds[-1]), np.uint8)
    for chunk, at in zip(chunks, bounds[:-1]):  # each stream copied once, into the batch
        data[at:at + len(chunk)] = np.frombuffer(chunk, np.uint8)
    return CompressedBatch(
        data=torch.from_numpy(data), bounds=torch.from_numpy(bounds),
        tile_hw=tile_hw, regions=torch.from_numpy(regions), lookup=torch.from_numpy(lookup),
        pixels=torch.from_numpy(pixels), pixel_rows=torch.as_tensor(cpu_rows, dtype=torch.int64),
        tile_size=t)


def decode_streams(batch: CompressedBatch, device: torch.device | str) -> torch.Tensor:
    """All streams of ``batch`` decoded with one ``decode_jpeg`` call into one buffer:
    uint8 (N * th * tw + 1, 3), every stream's pixels row by row, then one zero row (the pixel
    :func:`decode_batch` gives to places no stream covers)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    th, tw = batch.tile_hw
    bounds = batch.bounds.tolist()
    parts = [batch.data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    flat = torch.empty((len(parts) * th * tw + 1, 3), dtype=torch.uint8, device=device)
    flat[-1] = 0
    if not parts:
        return flat
    images = decode_jpeg(parts, mode=ImageReadMode.RGB, device=device)
    for k, img in enumerate(images):
        if tuple(img.shape) != (3, th, tw):
            raise ValueError(f"JPEG tile {k} decoded to {tuple(img.shape)}, expected (3, {th}, {tw})")
    torch.stack([img.permute(1, 2, 0) for img in images], out=flat[:-1].view(-1, th, tw, 3))
    return flat


def decode_batch(batch: CompressedBatch, device: torch.device | str,
                 chunk: int = 64) -> torch.Tensor:
    """The DeepZoom tiles of ``batch`` as uint8 (B, T, T, 3) on ``device``: decoded, pasted,
    cropped, resized like PIL's thumbnail(LANCZOS) where needed, zero-padded."""
    device = torch.device(device)
    t = batch.tile_size
    n = len(batch)
    out = torch.zeros((n, t, t, 3), dtype=torch.uint8, device=device)
    if batch.streams_read:
        th, tw = batch.tile_hw
        flat = decode_streams(batch, device)
        zero = flat.shape[0] - 1
        regions = batch.regions.to(device)
        lookup = batch.lookup.to(device)
        rows = torch.nonzero(regions[:, 2] > 0).flatten()
        hc = max(t, int(regions[:, 3].max()))
        wc = max(t, int(regions[:, 2].max()))
        ii = torch.arange(hc, device=device)
        jj = torch.arange(wc, device=device)
        for start in range(0, len(rows), chunk):
            r = rows[start:start + chunk]
            reg, lk = regions[r], lookup[r]
            ly = reg[:, 1:2] + ii  # (b, hc) within the covering tiles
            lx = reg[:, 0:1] + jj  # (b, wc)
            ty = (ly // th).clamp_(max=lk.shape[1] - 1)
            tx = (lx // tw).clamp_(max=lk.shape[2] - 1)
            b_idx = torch.arange(len(r), device=device)[:, None, None]
            stream = lk[b_idx, ty[:, :, None], tx[:, None, :]]  # (b, hc, wc)
            index = (stream * th + (ly % th)[:, :, None]) * tw + (lx % tw)[:, None, :]
            inside = ((ii[None, :] < reg[:, 3:4])[:, :, None]
                      & (jj[None, :] < reg[:, 2:3])[:, None, :] & (stream >= 0))
            index = torch.where(inside, index, torch.full_like(index, zero))
            canvas = flat[index.reshape(-1)].reshape(len(r), hc, wc, 3)
            same = (reg[:, 2] == reg[:, 4]) & (reg[:, 3] == reg[:, 5])
            if bool(same.all()):
                out[r] = canvas[:, :t, :t]
                continue
            sizes = reg[:, 2:6].tolist()
            groups: dict[tuple[int, int, int, int], list[int]] = {}
            for k, size in enumerate(sizes):
                groups.setdefault(tuple(size), []).append(k)
            for (w, h, ow, oh), ks in groups.items():
                sel = torch.as_tensor(ks, device=device)
                tiles = canvas[sel, :h, :w]
                if (w, h) != (ow, oh):
                    tiles = resize_like_pil(tiles, ow, oh)
                block = torch.zeros((len(ks), t, t, 3), dtype=torch.uint8, device=device)
                block[:, :oh, :ow] = tiles
                out[r[sel]] = block
    if len(batch.pixel_rows):
        out[batch.pixel_rows.to(device)] = batch.pixels.to(device)
    return out
