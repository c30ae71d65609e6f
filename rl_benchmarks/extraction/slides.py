"""Slides -> ``<output_dir>/<slide id>/features.npy`` ((N, 3+D) float32,
``[dz_level, col, row, f_1..f_D]``).

Design:

* **Plan.** Each slide gets coords: a given ``coords.npy`` (a CSV ``coords_path``, a
  reference cohort's, or ``rlbench tile``'s output through :func:`attach_coords_dir`; a
  ``tiling.json`` beside it must show the extraction's tile size and mpp), one already
  written beside its outputs, or tissue tiling on the fly
  (:func:`rl_benchmarks.slides.tile_slide`) with the extractor's tile size and mpp (saved
  too). A slide with no tissue tile is a failure.
* **Skips are never stale.** Each slide's ``features.json`` holds ``settings``: extractor
  name, weights SHA-256, precision, tile size, mpp, n_tiles, random_sampling, seed, float16
  (:func:`slide_settings`). A slide whose ``features.npy`` exists is skipped only when
  those match the run's; any difference stops the run before any work with one line naming
  the slide and the settings (old -> new), unless ``overwrite=True``, which deletes and
  recomputes it. The same holds for ``extraction_params.json`` and for coords tiled by an
  earlier run (``tiling.json``). Records are never rewritten over features they did not
  produce.
* **Legacy outputs.** A ``features.npy`` without a record of its settings (written by the
  reference or an older version) is a mismatch, since nothing says how it was made;
  ``accept_legacy=True`` keeps and skips such slides (listed as ``legacy_slides`` in
  ``extraction_params.json``, their missing records not invented), ``overwrite=True``
  recomputes them.
* **Locks.** Each slide folder gets a lock file (:mod:`rl_benchmarks.extraction.locks`)
  while a run works on it, so two runs on one output folder never extract the same slide:
  the second one skips slides held by a live run and reports them. A killed run's locks
  are stale and taken over, so re-running it finishes the rest.
* **Read.** One DataLoader over every selected tile of this rank's slides. Batches never
  span two slides, so a slide's features do not depend on which other slides a rank holds
  (1 rank and K ranks give identical files). Workers keep one OpenSlide handle per slide
  and return uint8 tiles; normalisation runs batched on tensors in the main process.
  With ``decode=gpu`` (or ``auto`` on CUDA) the workers of slides stored as JPEG tiles only
  read the compressed tiles and the main process decodes them on the GPU
  (:mod:`rl_benchmarks.slides.jpeg_tiles`; other slides, and slides stored as a kind of
  JPEG the GPU's decoder failed its probe on, are read as before). The decoder is recorded
  per slide (:class:`SlideDecoder`; ``decoder`` in ``features.json``) but is not a setting:
  the pixels are the CPU path's within JPEG-decoder tolerance.
* **Write.** When a slide's last batch is done, its JSON record and then its matrix are
  written atomically (``features.npy`` last: its presence means "done"). With
  ``output_format=h5`` (or ``both``) a TRIDENT-layout ``features.h5`` is written instead of
  (or before) it; a slide is done when every file of the requested format is there
  (docs/interop.md). A tile that cannot
  be read fails its slide (one line, a row in ``failures.csv``), and the other slides go on.
* **Scale.** Under ``torchrun`` slides are sharded across ranks, balanced by tile count;
  each rank writes its own slides and rank 0 checks, locks and writes the run files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rl_benchmarks.extraction import locks
from rl_benchmarks.extraction.sampling import select_tiles
from rl_benchmarks.extraction.sharding import shard_by_cost
from rl_benchmarks.utils import distributed as dist_utils
from rl_benchmarks.utils import io

logger = logging.getLogger(__name__)

FEATURES_NAME = "features.npy"
H5_NAME = "features.h5"  # TRIDENT-layout copy (output_format=h5|both), docs/interop.md
OUTPUT_FORMATS = {"npy": (FEATURES_NAME,), "h5": (H5_NAME,), "both": (H5_NAME, FEATURES_NAME)}
"""Files each ``output_format`` writes per slide, in writing order (the last one means done)."""
COORDS_NAME = "coords.npy"
RECORD_NAME = "features.json"
FAILURES_NAME = "failures.csv"
PARAMS_NAME = "extraction_params.json"
LOCK_NAME = ".rlbench.lock"
DECODES = ("cpu", "gpu", "auto")
"""``decode``: cpu (DataLoader workers decode, the reference's way), gpu (workers read the
compressed JPEG tiles, the extractor's CUDA device decodes them), auto (gpu when the
extractor runs on CUDA)."""


@dataclass(frozen=True)
class SlideDecoder:
    """Which decoder read a slide's JPEG tiles (``decode=gpu|auto``): ``device`` (e.g.
    ``cuda:0``) when the main process decoded them there, else ``""`` (the CPU, in the loader
    workers) with the reason in ``fallback``."""

    device: str = ""
    fallback: str = ""

    @property
    def on_device(self) -> bool:
        """Whether the device decoded the slide."""
        return bool(self.device)

    def record(self) -> dict[str, str]:
        """``features.json``'s keys: ``decoder`` (``"device (decode_jpeg on cuda:0)"`` or
        ``"cpu"``) and, on the CPU, ``decoder_fallback`` (why not the device)."""
        if self.on_device:
            return {"decoder": f"device (decode_jpeg on {self.device})"}
        return {"decoder": "cpu", "decoder_fallback": self.fallback}


class StaleOutputError(ValueError):
    """Outputs in the folder were made with other settings than the ones requested."""


class NoTissueError(ValueError):
    """A slide has no tile to extract."""


def check_int(name: str, value: Any, minimum: int = 1, none_ok: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (None allowed with ``none_ok``), else a
    one-line ValueError naming ``name``."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}{' or null' if none_ok else ''}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, low: float = 0.0, high: float | None = None,
                none_ok: bool = False, strict: bool = True) -> float | None:
    """``value`` as a finite float above ``low`` (``strict``) or at least ``low``, at most
    ``high``; a one-line ValueError naming ``name`` otherwise."""
    if value is None and none_ok:
        return None
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and np.isfinite(value) and (value > low if strict else value >= low)
          and (high is None or value <= high))
    if not ok:
        bound = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high else "")
        raise ValueError(f"{name} must be a number {bound}{' or null' if none_ok else ''}, "
                         f"got {value!r}")
    return float(value)


@dataclass
class SlideInput:
    """One slide to extract: its file, its id (its output folder's name: a CSV's
    ``slide_id``, else the file name with its extension) and optional coords."""

    slide_path: Path
    slide_id: str
    coords_path: Path | None = None


@dataclass
class SlideExtractionSettings:
    """What to extract (defaults = the reference script's values, except n_tiles).

    Values are checked when built (and again by :func:`run_slide_extraction`): a bad one
    is a one-line ValueError naming it, before any output is written."""

    n_tiles: int | None = None
    random_sampling: bool = False
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 8
    target_mpp: float | None = None  # None: the extractor's mpp
    tile_size: int | None = None  # None: the extractor's tile size
    min_tissue: float = 0.6
    default_mpp: float | None = None
    mpp_tolerance: float = 0.2
    float16: bool = False
    progress: bool = True
    overwrite: bool = False  # recompute slides whose outputs have other settings
    accept_legacy: bool = False  # skip outputs that carry no record of their settings
    output_format: str = "npy"  # npy (the reference's), h5 (TRIDENT layout) or both
    reader: str = "auto"  # slide reader backend (rl_benchmarks.slides.backends); same pixels whichever
    stain_norm: Any = None  # a rl_benchmarks.slides.stain.StainNormalizer, or None
    decode: str = "cpu"  # cpu | gpu | auto: where JPEG tiles are decoded (see resolve_decode)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a one-line ValueError naming the first bad setting."""
        check_int("n_tiles", self.n_tiles, none_ok=True)
        check_int("seed", self.seed, minimum=0)
        check_int("batch_size", self.batch_size)
        check_int("num_workers", self.num_workers, minimum=0)
        check_int("tile_size", self.tile_size, none_ok=True)
        check_float("target_mpp", self.target_mpp, none_ok=True)
        check_float("min_tissue", self.min_tissue, 0.0, 1.0, strict=False)
        check_float("default_mpp", self.default_mpp, none_ok=True)
        check_float("mpp_tolerance", self.mpp_tolerance, strict=False)
        for name in ("random_sampling", "float16", "progress", "overwrite", "accept_legacy"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        from rl_benchmarks.slides.backends import check_reader

        check_reader(self.reader)
        if self.decode not in DECODES:
            raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {self.decode!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, "
                             f"got {self.output_format!r}")


@dataclass
class ExtractionSummary:
    """What a run did: done, skipped and failed slides, and where the outputs went."""

    output_dir: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)  # slide id -> the run working on it
    legacy: list[str] = field(default_factory=list)  # skipped outputs without a record
    n_tiles: int = 0
    seconds: float = 0.0
    decoders: dict[str, SlideDecoder] = field(default_factory=dict)
    """decode=gpu|auto: slide id -> the decoder that read it."""

    def line(self) -> str:
        rate = self.n_tiles / self.seconds if self.seconds > 0 else 0.0
        held = f", {len(self.held)} left to another live run" if self.held else ""
        n_dev = sum(d.on_device for d in self.decoders.values())
        dec = (f"; JPEG decoded on the device for {n_dev} slide(s), on the CPU for "
               f"{len(self.decoders) - n_dev}" if self.decoders else "")
        return (
            f"{len(self.done)} slides done, {len(self.skipped)} skipped (already extracted), "
            f"{len(self.failed)} failed{held}; {self.n_tiles} tiles in {self.seconds:.1f} s "
            f"({rate:.1f} tiles/s){dec}; outputs in {self.output_dir}"
        )


# --------------------------------------------------------------------------- inputs


def list_slides(slides: str | Path | Sequence[str | Path]) -> list[SlideInput]:
    """Slides from a folder (every known WSI extension, and DICOM-WSI series), a CSV
    (``slide_path`` column, and optional ``slide_id`` and ``coords_path`` columns; no other
    column is needed) or a list of paths, as listed by
    :func:`rl_benchmarks.slides.tiling.collect_slide_entries` (a DICOM series is one slide).

    The slide id, which names the slide's output folder, is the CSV's ``slide_id`` when
    given, else the slide's name: its file name with its extension (``a.svs``), or a DICOM
    series' folder name (or ContainerIdentifier). Ids must be usable as folder names and
    unique; otherwise a one-line ValueError names the source."""
    from rl_benchmarks.slides.tiling import collect_slide_entries

    src = Path(slides).expanduser() if isinstance(slides, (str, Path)) else None
    is_csv = src is not None and src.suffix.lower() == ".csv"
    out = []
    for entry in collect_slide_entries(src if is_csv else slides):
        row = entry.row
        sid = (row.get("slide_id") or "").strip() or None
        coords = (row.get("coords_path") or "").strip() or None
        coords = None if coords is None else Path(coords).expanduser()
        if coords is not None and not coords.is_absolute():
            coords = src.parent / coords  # type: ignore[union-attr]  # rows come from a CSV
        out.append(SlideInput(entry.path, entry.name if sid is None else sid, coords))
    _check_slide_ids(out, str(slides) if src is not None else "slides", csv=is_csv)
    return out


def _check_slide_ids(slides: Sequence[SlideInput], source: str, csv: bool) -> None:
    """Every slide id names one output folder: it must be a plain folder name, and unique."""
    from rl_benchmarks.utils.safe_names import safe_name

    seen: dict[str, Path] = {}
    for line, slide in enumerate(slides, start=2):
        sid = slide.slide_id
        try:
            ok = safe_name(sid) == sid
        except ValueError:
            ok = False
        if not ok:
            where = f" (line {line})" if csv else ""
            raise ValueError(f"{source}: slide id {sid!r}{where} cannot be a folder name: "
                             f"it holds one of <>:\"/\\|?* or ends with a dot or space")
        if sid in seen:
            raise ValueError(f"{source}: slide id {sid!r} is used by two slides ({seen[sid]} and "
                             f"{slide.slide_path}); give each a distinct slide_id")
        seen[sid] = slide.slide_path


def coords_in_dir(slide: SlideInput, coords_dir: Path) -> Path | None:
    """``<coords_dir>/<slide file name>/coords.npy`` (the layout ``rlbench tile`` writes),
    else ``<coords_dir>/<slide id>/coords.npy``; None when neither exists."""
    for name in dict.fromkeys((slide.slide_path.name, slide.slide_id)):
        path = coords_dir / name / COORDS_NAME
        if path.is_file():
            return path
    return None


def attach_coords_dir(slides: Sequence[SlideInput], coords_dir: str | Path) -> list[SlideInput]:
    """``slides`` with the coords of ``coords_dir`` (an ``rlbench tile`` output folder) for
    every slide that has no ``coords_path`` yet (an explicit CSV ``coords_path`` wins).
    Slides missing from ``coords_dir`` keep none, so they are tiled on the fly, and one
    warning lists them. Whether the coords fit the extractor is checked by
    :func:`check_coords_settings` (run by :func:`run_slide_extraction`)."""
    root = Path(coords_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"coords_dir={root}: not a folder (give the output_dir of rlbench tile)")
    out, missing = [], []
    for slide in slides:
        if slide.coords_path is None:
            found = coords_in_dir(slide, root)
            if found is None:
                missing.append(slide.slide_id)
            slide = SlideInput(slide.slide_path, slide.slide_id, found)
        out.append(slide)
    if missing:
        head = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)"
                                          if len(missing) > 10 else "")
        logger.warning("coords_dir=%s has no coords for %d slide(s), tiled on the fly: %s",
                       root, len(missing), head)
    return out


def check_coords_settings(slides: Sequence[SlideInput], tile_size: int, mpp: float,
                          extractor_name: str = "the extractor") -> None:
    """Raise a one-line ValueError, before any work, when given coords were made (per the
    ``tiling.json`` beside them, as ``rlbench tile`` writes it) at another tile size or mpp
    than the extraction's. Coords without a ``tiling.json`` (the reference's) are taken as
    they are."""
    import math

    bad = []
    for slide in slides:
        if slide.coords_path is None:
            continue
        rec = _read_json(Path(slide.coords_path).parent / "tiling.json")
        if rec is None:
            continue
        params = rec.get("params") if isinstance(rec.get("params"), dict) else {}
        made_size = rec.get("tile_size", params.get("tile_size"))
        made_mpp = rec.get("target_mpp", params.get("target_mpp"))
        try:
            same = (made_size is None or int(made_size) == int(tile_size)) and (
                made_mpp is None or math.isclose(float(made_mpp), float(mpp), rel_tol=1e-6))
        except (TypeError, ValueError):
            same = False
        if not same:
            bad.append(f"slide {slide.slide_id}: {slide.coords_path} was tiled at "
                       f"tile_size={made_size}, mpp={made_mpp}, but {extractor_name} extracts "
                       f"at tile_size={tile_size}, mpp={mpp:g}")
    if bad:
        more = f" (and {len(bad) - 1} more slide(s))" if len(bad) > 1 else ""
        raise ValueError(f"coords made with other settings: {bad[0]}{more}; re-tile with "
                         f"rlbench tile tile_size={tile_size} target_mpp={mpp:g}, or use "
                         f"coords made for this extractor")


# --------------------------------------------------------------------------- reading


class _TileBatches(Dataset):
    """Item k = batch k: (uint8 tiles (b,T,T,3), slide index, first tile index, error
    message or "", why not compressed or ""). With ``jpeg`` (the stream kinds the decoding
    device is not trusted with, :func:`~rl_benchmarks.slides.jpeg_tiles.probe_decoder`) the
    tiles of a slide whose level :class:`~rl_benchmarks.slides.jpeg_tiles.JpegTiles` supports
    are a :class:`~rl_benchmarks.slides.jpeg_tiles.CompressedBatch` (JPEG streams, decoded
    later on the extractor's device); the other slides' are read as without it, and the
    last item says why."""

    def __init__(self, slides: list[tuple[Path, np.ndarray]], batches: list[tuple[int, int, int]],
                 tile_size: int, reader: str = "auto", jpeg: dict[Any, str] | None = None):
        self.slides = slides  # (path, coords (n,3)) per slide
        self.batches = batches  # (slide index, start, stop)
        self.tile_size = tile_size
        self.reader = reader
        self.jpeg = jpeg
        self._cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def _reader(self, slide_index: int):
        from rl_benchmarks.slides.jpeg_tiles import JpegTiles
        from rl_benchmarks.slides.reader import TileReader

        if slide_index not in self._cache:
            for old in self._cache.values():  # one open slide per worker at a time
                old.close()
            self._cache.clear()
            path = self.slides[slide_index][0]
            self._cache[slide_index] = (
                TileReader(path, self.tile_size, reader=self.reader) if self.jpeg is None
                else JpegTiles(path, self.tile_size, reader=self.reader, distrusted=self.jpeg))
        return self._cache[slide_index]

    def __getitem__(self, k: int):
        slide_index, start, stop = self.batches[k]
        try:
            reader = self._reader(slide_index)
            coords = self.slides[slide_index][1]
            why = ""
            if self.jpeg is not None:
                from rl_benchmarks.slides.jpeg_tiles import read_compressed

                why = reader.unsupported(int(coords[start][0]))
                if not why:
                    return read_compressed(reader, coords[start:stop]), slide_index, start, "", ""
                reader = reader.cpu  # its TileReader
            tiles = np.empty((stop - start, self.tile_size, self.tile_size, 3), np.uint8)
            for j, (lvl, col, row) in enumerate(coords[start:stop]):
                tiles[j] = reader.read(int(lvl), int(col), int(row))
            return torch.from_numpy(tiles), slide_index, start, "", why
        except Exception as exc:  # a tile that cannot be read fails its slide only
            empty = torch.zeros((0, self.tile_size, self.tile_size, 3), dtype=torch.uint8)
            return empty, slide_index, start, _describe(exc), ""


class _InOrder(Sampler[int]):
    def __init__(self, n: int):
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


def _identity_collate(batch):
    return batch[0]


def features_of_uint8(extractor, tiles: torch.Tensor, stain=None) -> np.ndarray:
    """Features (B, D) float32 of uint8 tiles (B, H, W, 3): on the extractor's device, the
    batched stain normalisation (``stain``, a :class:`~rl_benchmarks.slides.stain.StainNormalizer`,
    if any), the extractor's normalisation, then the model."""
    x = tiles.to(extractor.device, non_blocking=True)
    if stain is not None:
        x = stain(x)
    return extractor(extractor.normalize_uint8(x, channels_last=True)).cpu().numpy()


def resolve_decode(decode: str, device: torch.device | str) -> torch.device | None:
    """The device that decodes JPEG tiles for ``decode`` (cpu | gpu | auto) with the extractor
    on ``device``: None for the CPU path (workers decode), the CUDA device for gpu, and for
    auto when the extractor runs on CUDA. ``gpu`` on another device is a one-line ValueError."""
    device = torch.device(device)
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    if decode == "gpu" and device.type != "cuda":
        raise ValueError(f"decode=gpu needs the extractor on a CUDA device, but it runs on "
                         f"{device}: use decode=cpu or decode=auto")
    return device if decode != "cpu" and device.type == "cuda" else None


def extract_from_coords(
    jobs: list[tuple[Path, np.ndarray]],
    extractor,
    tile_size: int,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    on_slide_done=None,
    desc: str = "extract",
    reader: str = "auto",
    stain=None,
    jpeg_device: torch.device | str | None = None,
    decoders: dict[int, SlideDecoder] | None = None,
) -> dict[int, np.ndarray | str]:
    """Features of ``jobs`` (slide path, coords (n,3)), slide by slide.

    ``on_slide_done(index, result)`` is called as soon as a slide is complete, with its
    (n, 3+D) float32 matrix or an error message; the function then keeps no matrix (memory
    stays at one slide in flight) and returns index -> "" (done) or the error. Without a
    callback it returns index -> matrix or error message. ``reader`` chooses the slide
    reader backend; ``stain`` normalises the tiles' stain first (see :func:`features_of_uint8`).

    With ``jpeg_device`` its decoder is first probed on each kind of JPEG stream
    (:func:`rl_benchmarks.slides.jpeg_tiles.probe_decoder`); then the workers only read the
    compressed JPEG tiles of the slides :class:`~rl_benchmarks.slides.jpeg_tiles.JpegTiles`
    supports and stores as a kind the probe trusts, and this process decodes them on
    ``jpeg_device`` (:func:`rl_benchmarks.slides.jpeg_tiles.decode_batch`). The other slides
    are read by the workers as without it. ``decoders`` (filled when given): slide index ->
    its :class:`SlideDecoder`.
    """
    from tqdm.auto import tqdm

    check_int("batch_size", batch_size)
    check_int("num_workers", num_workers, minimum=0)
    decoders = {} if decoders is None else decoders
    distrusted = None  # stream kind -> why the device does not decode it (decode=cpu: None)
    if jpeg_device is not None:
        from rl_benchmarks.slides.jpeg_tiles import CompressedBatch, decode_batch, probe_decoder

        distrusted = probe_decoder(jpeg_device)
        on_device = SlideDecoder(device=str(torch.device(jpeg_device)))
    batches = [
        (s, start, min(start + batch_size, len(coords)))
        for s, (_, coords) in enumerate(jobs)
        for start in range(0, len(coords), batch_size)
    ]
    remaining = {s: -(-len(c) // batch_size) for s, (_, c) in enumerate(jobs)}
    parts: dict[int, list[np.ndarray]] = {s: [] for s in remaining}
    results: dict[int, np.ndarray | str] = {}

    def finish(s: int, result: np.ndarray | str) -> None:
        if on_slide_done is None:
            results[s] = result
        else:
            results[s] = result if isinstance(result, str) else ""
            on_slide_done(s, result)

    for s, (_, coords) in enumerate(jobs):  # slides without tiles are complete at once
        if len(coords) == 0:
            finish(s, np.zeros((0, 3 + extractor.feature_dim), np.float32))
    loader = DataLoader(
        _TileBatches(jobs, batches, tile_size, reader, jpeg=distrusted),
        batch_size=1,
        sampler=_InOrder(len(batches)),
        num_workers=num_workers,
        collate_fn=_identity_collate,
        pin_memory=getattr(extractor, "device", torch.device("cpu")).type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    total = sum(len(c) for _, c in jobs)
    bar = tqdm(total=total, unit="tile", desc=desc, disable=not progress, smoothing=0.05)
    for tiles, s, start, error, why in loader:
        bar.update(len(tiles))
        if s in results:  # the slide already failed
            continue
        if error:
            parts.pop(s, None)
            finish(s, error)
            continue
        if jpeg_device is not None:
            if isinstance(tiles, CompressedBatch):
                decoders.setdefault(s, on_device)
                try:
                    tiles = decode_batch(tiles, jpeg_device)
                except Exception as exc:  # a stream the decoder refuses fails its slide only
                    parts.pop(s, None)
                    finish(s, f"decoding JPEG tiles on {jpeg_device}: {_describe(exc)}")
                    continue
            else:
                decoders.setdefault(s, SlideDecoder(fallback=why))
        meta = jobs[s][1][start:start + len(tiles)].astype(np.float32)
        parts[s].append(np.concatenate([meta, features_of_uint8(extractor, tiles, stain)], axis=1))
        remaining[s] -= 1
        if remaining[s] == 0:
            finish(s, np.concatenate(parts.pop(s), axis=0))
    bar.close()
    return results


# --------------------------------------------------------------------------- pipeline


def weights_identity(extractor) -> str:
    """The weights file's SHA-256; for random weights (``"random-init"``, which differ with
    the seed) ``random-init:`` + the SHA-256 of the parameters themselves."""
    sha = str(extractor.record().get("weights_sha256"))
    if sha != "random-init":
        return sha
    import hashlib

    h = hashlib.sha256()
    for key, value in sorted(extractor.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return f"random-init:{h.hexdigest()}"


def slide_settings(extractor, settings: SlideExtractionSettings) -> dict[str, Any]:
    """The settings that define a slide's features: a finished slide is skipped only when
    its record holds exactly these."""
    rec = extractor.record()
    out = {
        "extractor": rec.get("name"),
        "weights_sha256": weights_identity(extractor),
        "precision": rec.get("precision"),
        "tile_size": int(settings.tile_size or extractor.tile_size),
        "mpp": float(settings.target_mpp or extractor.mpp),
        "n_tiles": settings.n_tiles,
        "random_sampling": bool(settings.random_sampling),
        "seed": int(settings.seed),
        "float16": bool(settings.float16),
    }
    if settings.stain_norm is not None:  # absent otherwise: records made before it still match
        out["stain_norm"] = settings.stain_norm.record()
    return out


def _read_json(path: Path) -> dict | None:
    """A JSON object, or None when the file is absent or not a JSON object."""
    import json

    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _flat(settings: dict) -> dict:
    """Nested settings (e.g. ``stain_norm``) as dotted keys, so a diff names the leaf."""
    out = {}
    for k, v in settings.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in _flat(v).items()})
        else:
            out[k] = v
    return out


def settings_diff(old: dict, new: dict) -> str:
    """``key old -> new`` for every setting that differs ("" when none)."""
    old, new = _flat(old), _flat(new)
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}"
                     for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def _tiling_diff(out_dir: Path, tile_size: int, mpp: float, min_tissue: float) -> str:
    """How coords tiled by an earlier run (per its ``tiling.json``) differ from the tiling
    this run would do ("" when they do not, or when no run of ours tiled them)."""
    tiling = _read_json(out_dir / "tiling.json")
    if tiling is None or not (out_dir / COORDS_NAME).is_file():
        return ""
    want = {"tile_size": tile_size, "target_mpp": mpp, "min_tissue": min_tissue}
    old = {k: tiling.get(k) for k in want}
    return settings_diff({f"tiling.{k}": v for k, v in old.items()},
                         {f"tiling.{k}": v for k, v in want.items()})


def _coords_for(slide: SlideInput, out_dir: Path, extractor, settings: SlideExtractionSettings):
    """Coords (n,3) int for a slide: given, previously written, or tiled now (and saved).
    No tile at all is a :class:`NoTissueError`."""
    tile_size = settings.tile_size or extractor.tile_size
    mpp = settings.target_mpp or extractor.mpp
    if slide.coords_path is not None:
        coords = np.load(slide.coords_path, allow_pickle=False)
    elif (out_dir / COORDS_NAME).is_file():
        coords = np.load(out_dir / COORDS_NAME, allow_pickle=False)
    else:
        from rl_benchmarks.slides import tile_slide

        tiling = tile_slide(
            slide.slide_path,
            tile_size=tile_size,
            target_mpp=mpp,
            min_tissue=settings.min_tissue,
            default_mpp=settings.default_mpp,
            mpp_tolerance=settings.mpp_tolerance,
            reader=settings.reader,
        )
        coords = np.asarray(tiling.coords)
        try:
            from rl_benchmarks.slides.qc import save_qc
            from rl_benchmarks.slides.tiling import TISSUE_GEOJSON_FILE, write_tissue_geojson

            save_qc(tiling, out_dir / "qc.png")
            write_tissue_geojson(tiling, out_dir / TISSUE_GEOJSON_FILE)
        except Exception as exc:  # a picture never fails a slide
            logger.warning("%s: QC picture or tissue.geojson not written: %s", slide.slide_path, exc)
        io.write_json(out_dir / "tiling.json", tiling.record())
        io.save_npy(out_dir / COORDS_NAME, coords.reshape(-1, 3).astype(np.int64))
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords for {slide.slide_id} must have shape (N, 3) "
                         f"[level, col, row], got {coords.shape}")
    if len(coords) == 0:
        raise NoTissueError(f"no tissue tile (tile_size={tile_size}, mpp={mpp}, "
                            f"min_tissue={settings.min_tissue}): nothing to extract")
    if len(np.unique(coords[:, 0])) > 1:
        raise ValueError(f"coords for {slide.slide_id} mix several DeepZoom levels")
    return coords.astype(np.int64)


@dataclass
class _Plan:
    """Rank 0's decision for every slide, shared with the other ranks."""

    todo: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    legacy: list[str] = field(default_factory=list)
    held: dict[str, str] = field(default_factory=dict)
    error: str = ""


def _plan(slides: Sequence[SlideInput], out_root: Path, new: dict,
          settings: SlideExtractionSettings) -> _Plan:
    """Lock every slide not held by another live run and sort it into done (skip), stale
    (error, or recompute with ``overwrite``) and to do. On error every lock is released."""
    plan = _Plan()
    stale: list[str] = []
    locked: list[Path] = []
    clear: list[tuple[Path, bool]] = []  # (slide folder, its coords too)
    for i, slide in enumerate(slides):
        folder = out_root / slide.slide_id
        owner = locks.try_lock(folder / LOCK_NAME)
        if owner is not None:
            plan.held[slide.slide_id] = str(owner)
            continue
        locked.append(folder / LOCK_NAME)
        wanted = OUTPUT_FORMATS[settings.output_format]
        done = any((folder / name).is_file() for name in (FEATURES_NAME, H5_NAME))
        complete = all((folder / name).is_file() for name in wanted)
        old = (_read_json(folder / RECORD_NAME) or {}).get("settings") if done else None
        tiling = "" if slide.coords_path is not None else _tiling_diff(
            folder, new["tile_size"], new["mpp"], settings.min_tissue)
        if done and isinstance(old, dict) and not settings_diff(old, new):
            if complete:
                plan.skipped.append(slide.slide_id)
                locks.release(folder / LOCK_NAME)
            else:  # same settings, but a requested format is missing: extract again
                plan.todo.append(i)
            continue
        if complete and not isinstance(old, dict) and settings.accept_legacy:
            plan.legacy.append(slide.slide_id)
            plan.skipped.append(slide.slide_id)
            locks.release(folder / LOCK_NAME)
            continue
        if settings.overwrite:
            clear.append((folder, bool(tiling)))
        elif done:
            why = (settings_diff(old, new) if isinstance(old, dict)
                   else "no record of its settings (legacy output; accept_legacy=true keeps it)")
            stale.append(f"slide {slide.slide_id}: {why}")
            continue
        elif tiling:
            stale.append(f"slide {slide.slide_id}: coords.npy {tiling}")
            continue
        plan.todo.append(i)
    params = _read_json(out_root / PARAMS_NAME)
    if params is not None and isinstance(params.get("settings"), dict) and not settings.overwrite:
        diff = settings_diff(params["settings"], new)
        if diff:  # e.g. a concurrent run with other settings that has not finished a slide
            stale.append(f"{PARAMS_NAME}: {diff}")
    if stale:
        for path in locked:
            locks.release(path)
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        plan.error = (f"{out_root}: outputs made with other settings: {stale[0]}{more}; "
                      f"rerun with overwrite=true to recompute them, or use another output_dir")
        return plan
    for folder, coords_too in clear:  # under our lock: old outputs go before new work
        names = [FEATURES_NAME, H5_NAME, RECORD_NAME] + (
            [COORDS_NAME, "tiling.json", "qc.png", "tissue.geojson"] if coords_too else [])
        for name in names:
            (folder / name).unlink(missing_ok=True)
    return plan


def run_slide_extraction(
    slides: Sequence[SlideInput],
    output_dir: str | Path,
    extractor,
    settings: SlideExtractionSettings,
    run_record: dict[str, Any] | None = None,
    dist: dist_utils.DistInfo | None = None,
) -> ExtractionSummary:
    """Extract every slide not yet done; see the module docstring.

    Raises :class:`StaleOutputError` (before any work) when finished outputs were made
    with other settings and ``settings.overwrite`` is False."""
    settings.validate()
    resolve_decode(settings.decode, getattr(extractor, "device", "cpu"))  # one line, before work
    dist = dist or dist_utils.DistInfo()
    out_root = Path(output_dir)
    tile_size = settings.tile_size or extractor.tile_size
    new = slide_settings(extractor, settings)
    summary = ExtractionSummary(output_dir=str(out_root))
    t0 = time.perf_counter()
    check_coords_settings(slides, new["tile_size"], new["mpp"], str(new["extractor"]))

    # 0. Rank 0 checks the folder and locks the slides it takes; every rank follows.
    plan = None
    if dist.is_main:
        out_root.mkdir(parents=True, exist_ok=True)
        plan = _plan(slides, out_root, new, settings)
    plan = dist_utils.all_gather_objects(dist, plan)[0]
    if plan.error:
        raise StaleOutputError(plan.error)
    try:
        return _run_plan(slides, out_root, extractor, settings, run_record, dist, plan, new,
                         summary, tile_size, t0)
    finally:
        if dist.is_main:
            for i in plan.todo:
                locks.release(out_root / slides[i].slide_id / LOCK_NAME)


def _run_plan(slides, out_root, extractor, settings, run_record, dist, plan, new, summary,
              tile_size, t0) -> ExtractionSummary:
    summary.skipped = list(plan.skipped)
    summary.legacy = list(plan.legacy)
    summary.held = dict(plan.held)
    todo = plan.todo
    if dist.is_main:
        _write_params(out_root, run_record, new, slides, summary)

    # 1. Coords for every slide to do (tiling spread round-robin over ranks).
    coords: dict[int, np.ndarray] = {}
    for k, i in enumerate(todo):
        if k % dist.world_size != dist.rank:
            continue
        try:
            coords[i] = _coords_for(slides[i], out_root / slides[i].slide_id, extractor, settings)
        except Exception as exc:
            summary.failed[slides[i].slide_id] = _describe(exc)
            logger.error("%s: %s", slides[i].slide_path, summary.failed[slides[i].slide_id])
    if dist.enabled:  # everyone needs every slide's tile count to shard
        dist_utils.barrier(dist)
        failed_anywhere = _all_failed(dist, summary)  # collective: every rank calls it once
        for i in todo:
            if i not in coords and slides[i].slide_id not in failed_anywhere:
                coords[i] = _coords_for(slides[i], out_root / slides[i].slide_id, extractor,
                                        settings)

    # 2. Select tiles (seeded per slide) and shard by tile count.
    selected: dict[int, np.ndarray] = {}
    for i, c in coords.items():
        idx = select_tiles(len(c), settings.n_tiles, settings.random_sampling, settings.seed,
                           slides[i].slide_id)
        selected[i] = c[idx]
    order = sorted(selected)
    shard = shard_by_cost([len(selected[i]) for i in order], dist.world_size)[dist.rank]
    mine = [order[j] for j in shard]
    jpeg_device = resolve_decode(settings.decode, getattr(extractor, "device", "cpu"))
    decoders: dict[int, SlideDecoder] = {}  # local slide index -> decoder (filled while extracting)

    # 3. Extract and write each slide as soon as it is complete.
    def write(local: int, result: np.ndarray | str) -> None:
        slide = slides[mine[local]]
        if isinstance(result, str):
            summary.failed[slide.slide_id] = result
            logger.error("%s: %s", slide.slide_path, result)
            return
        out_dir = out_root / slide.slide_id
        matrix = result.astype(np.float16) if settings.float16 else result
        record = {
            **(run_record or {}),
            "settings": new,
            "n_tiles_requested": settings.n_tiles,
            "slide_path": str(slide.slide_path),
            "slide_id": slide.slide_id,
            "coords_path": str(slide.coords_path or out_dir / COORDS_NAME),
            "n_tiles_available": int(len(coords[mine[local]])),
            "n_tiles": int(len(result)),
            "shape": list(matrix.shape),
            "dtype": str(matrix.dtype),
            "output_format": settings.output_format,
            "files": list(OUTPUT_FORMATS[settings.output_format]),
            # not in "settings": the device path gives the CPU path's pixels within JPEG
            # decoder tolerance (docs/extraction.md#jpeg-decoding-on-the-gpu)
            "decode": settings.decode,
            "decoder": "cpu",
        }
        how = decoders.get(local, SlideDecoder(fallback="no tile"))
        if jpeg_device is not None:
            record.update(how.record())
        io.write_json(out_dir / RECORD_NAME, record)
        if settings.output_format in ("h5", "both"):
            try:
                _write_h5(out_dir / H5_NAME, matrix, slide, new, str(new["extractor"]),
                          settings.default_mpp)
            except Exception as exc:  # the slide fails, the others go on
                summary.failed[slide.slide_id] = f"writing {H5_NAME}: {_describe(exc)}"
                logger.error("%s: %s", slide.slide_path, summary.failed[slide.slide_id])
                return
        if settings.output_format in ("npy", "both"):
            io.save_npy(out_dir / FEATURES_NAME, matrix)  # last: its presence means "done"
        if not dist.enabled:  # under torchrun rank 0 owns the locks and frees them at the end
            locks.release(out_dir / LOCK_NAME)
        summary.done.append(slide.slide_id)
        summary.n_tiles += int(len(result))
        if jpeg_device is not None:
            summary.decoders[slide.slide_id] = how

    jobs = [(slides[i].slide_path, selected[i]) for i in mine]
    extract_from_coords(jobs, extractor, tile_size, settings.batch_size, settings.num_workers,
                        progress=settings.progress and dist.is_main, on_slide_done=write,
                        desc=f"extract {len(jobs)} slides", reader=settings.reader,
                        stain=settings.stain_norm, jpeg_device=jpeg_device,
                        decoders=decoders)
    summary.seconds = time.perf_counter() - t0

    # 4. Rank 0 gathers and writes the run files.
    gathered = dist_utils.all_gather_objects(dist, summary)
    if dist.is_main:
        summary = _merge(gathered, out_root)
        summary.seconds = time.perf_counter() - t0
        _write_params(out_root, run_record, new, slides, summary)
        _write_failures(out_root, summary.failed, slides, summary.held)
    return summary


def _write_h5(path: Path, matrix: np.ndarray, slide: SlideInput, new: dict, encoder: str,
              default_mpp: float | None) -> None:
    """Write a slide's (N, 3+D) matrix as a TRIDENT-layout h5 (atomically): ``features``
    (N, D), ``coords`` (N, 2) level-0 ``(x, y)`` of each tile's top-left corner, and the
    attributes TRIDENT writes plus the DeepZoom level (so reading it back is exact)."""
    from rl_benchmarks.datasets.h5_features import (
        DEEPZOOM_LEVEL_ATTR,
        deepzoom_to_level0,
        write_h5_features,
    )
    from rl_benchmarks.slides.geometry import deepzoom_level_count, level_downsample
    from rl_benchmarks.slides.openslide_io import open_slide

    with open_slide(slide.slide_path, default_mpp=default_mpp) as info:
        dims, mpp0 = tuple(info.dimensions), float(info.mpp)
    tile_size = int(new["tile_size"])
    dz = matrix[:, :3].astype(np.int64)
    level = int(dz[0, 0]) if len(dz) else -1
    ds = level_downsample(level, deepzoom_level_count(*dims)) if len(dz) else 1
    write_h5_features(path, matrix[:, 3:], deepzoom_to_level0(dz, tile_size, dims), {
        "patch_size": tile_size,
        "patch_size_level0": tile_size * ds,
        "level0_magnification": 10.0 / mpp0,  # TRIDENT's convention: 0.25 µm/px = 40x
        "target_magnification": 10.0 / (mpp0 * ds),
        "overlap": 0,
        "name": slide.slide_id,
        "encoder": encoder,
        "level0_width": dims[0],
        "level0_height": dims[1],
        "mpp": mpp0,
        DEEPZOOM_LEVEL_ATTR: level,
        "deepzoom_tile_size": tile_size,
        "coords_format": "level-0 (x, y) of each tile's top-left corner",
    })


def _write_params(out_root: Path, run_record: dict[str, Any] | None, new: dict,
                  slides: Sequence[SlideInput], summary: ExtractionSummary) -> None:
    """``extraction_params.json``: the run's record, its settings and its slides (written
    at the start, so a concurrent run with other settings sees them, and at the end)."""
    io.write_json(out_root / PARAMS_NAME, {
        **(run_record or {}), "settings": new,
        "slides": [str(s.slide_path) for s in slides],
        "legacy_slides": sorted(summary.legacy),
    })


def _all_failed(dist: dist_utils.DistInfo, summary: ExtractionSummary) -> set[str]:
    failed: set[str] = set()
    for part in dist_utils.all_gather_objects(dist, sorted(summary.failed)):
        failed.update(part)
    return failed


def _merge(parts: list[ExtractionSummary], out_root: Path) -> ExtractionSummary:
    merged = ExtractionSummary(output_dir=str(out_root))
    for p in parts:
        merged.done += p.done
        merged.failed.update(p.failed)
        merged.n_tiles += p.n_tiles
        merged.decoders.update(p.decoders)
    merged.skipped = parts[0].skipped
    merged.legacy = parts[0].legacy
    merged.held = parts[0].held
    return merged


def _write_failures(out_root: Path, failed: dict[str, str], slides: Sequence[SlideInput],
                    held: dict[str, str] | None = None) -> None:
    """``failures.csv``: this run's failures, plus the rows an earlier ``failures.csv``
    holds for slides another live run is working on (their outcome is that run's)."""
    paths = {s.slide_id: str(s.slide_path) for s in slides}
    rows = [{"slide": paths.get(k, k), "slide_id": k, "error": v}
            for k, v in sorted(failed.items())]
    previous = out_root / FAILURES_NAME
    if held and previous.is_file():
        try:
            old = pd.read_csv(previous, dtype=str, keep_default_na=False)
            rows += [r for r in old.to_dict("records") if r.get("slide_id") in held
                     and r.get("slide_id") not in failed]
        except (OSError, ValueError, pd.errors.ParserError):
            pass
    frame = pd.DataFrame(rows, columns=["slide", "slide_id", "error"])
    io.write_csv(out_root / FAILURES_NAME, frame, index=False)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
