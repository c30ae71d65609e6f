"""DICOM-WSI: group instance files into series (one series = one slide) and check that a
series can be tiled.

Why: a DICOM whole slide is a *folder of instances*: one or more VOLUME instances (the
pyramid levels) plus LABEL, OVERVIEW and THUMBNAIL pictures, all sharing one
``SeriesInstanceUID``. Listing ``*.dcm`` files as slides would tile every picture as a
slide of its own. Here headers are read with pydicom (``stop_before_pixels``: no pixel
data is read) and grouped by series; pixels are read by OpenSlide 4, which opens a whole
series given any one of its instance files (it looks for the series' other instances in
the same folder), so a DICOM-WSI series tiles exactly as the SVS it was converted from.

Non-conformant files (no ``ImageType``: the flavor VOLUME/LABEL/... is unknown) are
refused with one line naming the missing attributes, see docs/slides.md#slide-formats for
why there is no fallback reader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rl_benchmarks.slides.errors import NotASlideError, SlideError

DICOM_SUFFIX = ".dcm"
FLAVORS = ("VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL")
"""``ImageType`` value 3 of a VL Whole Slide Microscopy instance; only VOLUME is tiled."""
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
"""VL Whole Slide Microscopy Image Storage."""


@dataclass(frozen=True)
class DicomInstance:
    """The header fields of one instance file that grouping and checking need."""

    path: Path
    series_uid: str
    flavor: str
    """VOLUME, LABEL, OVERVIEW, THUMBNAIL, or "" when the file has no ImageType."""
    container_id: str
    width: int
    """TotalPixelMatrixColumns (0 when absent)."""
    height: int
    missing: tuple[str, ...]
    """Attributes a conformant DICOM-WSI instance has and this one lacks."""


@dataclass(frozen=True)
class DicomSeries:
    """The instances of one ``SeriesInstanceUID`` found in one folder."""

    uid: str
    folder: Path
    instances: tuple[DicomInstance, ...]

    @property
    def volumes(self) -> tuple[DicomInstance, ...]:
        """The VOLUME instances (pyramid levels), largest first."""
        vols = [i for i in self.instances if i.flavor == "VOLUME"]
        return tuple(sorted(vols, key=lambda i: (-i.width * i.height, str(i.path))))

    @property
    def container_id(self) -> str:
        """``ContainerIdentifier`` (the slide's barcode), "" when absent."""
        return next((i.container_id for i in self.instances if i.container_id), "")

    @property
    def main_file(self) -> Path:
        """The file OpenSlide is given: the largest VOLUME instance, else the first file."""
        vols = self.volumes
        return vols[0].path if vols else min(i.path for i in self.instances)


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or a file without suffix that holds the ``DICM`` magic (DICOM
    files from PACS exports often have no extension)."""
    if not path.is_file():
        return False
    if path.suffix.lower() == DICOM_SUFFIX:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_instance(path: str | os.PathLike) -> DicomInstance:
    """Header of one instance file (no pixel data read); NotASlideError naming the file
    when pydicom cannot parse it."""
    import warnings

    with warnings.catch_warnings():  # over-long UIDs/names of old converters: harmless
        warnings.simplefilter("ignore", UserWarning)
        return _read_instance(Path(path))


def _read_instance(path: Path) -> DicomInstance:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # pydicom raises several types for non-DICOM or truncated files
        raise NotASlideError(path, f"not a DICOM file pydicom can read ({err})") from None
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    flavor = image_type[2] if len(image_type) > 2 else ""
    missing = [name for name in ("SeriesInstanceUID", "ImageType", "DimensionOrganizationType")
               if not ds.get(name)]
    if flavor in ("", "VOLUME") and not _has_pixel_spacing(ds):
        missing.append("PixelSpacing (SharedFunctionalGroupsSequence)")
    return DicomInstance(
        path=path, series_uid=uid, flavor=flavor,
        container_id=str(ds.get("ContainerIdentifier", "") or "").strip(),
        width=int(ds.get("TotalPixelMatrixColumns", 0) or 0),
        height=int(ds.get("TotalPixelMatrixRows", 0) or 0),
        missing=tuple(missing),
    )


def _has_pixel_spacing(ds) -> bool:
    for group in ds.get("SharedFunctionalGroupsSequence") or []:
        for measures in group.get("PixelMeasuresSequence") or []:
            if measures.get("PixelSpacing"):
                return True
    return False


def group_instances(instances: list[DicomInstance]) -> list[DicomSeries]:
    """Series of ``instances`` by (folder, ``SeriesInstanceUID``), in file order. A file
    without a SeriesInstanceUID is a series of its own (keyed by its path)."""
    groups: dict[tuple[Path, str], list[DicomInstance]] = {}
    for inst in sorted(instances, key=lambda i: str(i.path)):
        key = (inst.path.parent, inst.series_uid or f"file:{inst.path}")
        groups.setdefault(key, []).append(inst)
    return [DicomSeries(uid, folder, tuple(items)) for (folder, uid), items in groups.items()]


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder`` (sorted)."""
    return sorted(p for p in folder.iterdir() if is_dicom_file(p))


def scan_folder(folder: str | os.PathLike) -> tuple[list[DicomSeries], list[SlideError]]:
    """Series of the DICOM files directly in ``folder``, and one error per file that
    cannot be parsed (those files are left out of the series)."""
    series, errors = [], []
    instances = []
    for path in dicom_files(Path(folder)):
        try:
            instances.append(read_instance(path))
        except SlideError as err:
            errors.append(err)
    series = group_instances(instances)
    return series, errors


def series_of(path: str | os.PathLike) -> DicomSeries:
    """The series of instance file ``path``: its own series among the DICOM files of its
    folder (headers only)."""
    path = Path(path)
    first = read_instance(path)
    if not first.series_uid:
        return DicomSeries(f"file:{path}", path.parent, (first,))
    same = [first]
    for other in dicom_files(path.parent):
        if other == path:
            continue
        try:
            inst = read_instance(other)
        except SlideError:
            continue
        if inst.series_uid == first.series_uid:
            same.append(inst)
    return group_instances(same)[0]


def check_series(series: DicomSeries, shown: Path) -> DicomInstance:
    """The VOLUME instance to open (the largest), or a one-line :class:`NotASlideError`.

    ``shown`` is the path named in the error (the slide as listed: its folder or file).
    Refused: a non-conformant instance (no ImageType: its flavor, and with no
    DimensionOrganizationType and no pixel spacing its frame layout and mpp, are unknown),
    and a series without a VOLUME instance (only label/overview/thumbnail pictures).
    """
    for inst in series.instances:
        if "ImageType" in inst.missing or "SeriesInstanceUID" in inst.missing:
            raise NotASlideError(
                inst.path,
                "non-conformant DICOM-WSI: no " + ", no ".join(inst.missing)
                + "; its tile order and pixel size are unknown (OpenSlide and wsidicom refuse it "
                "too): convert it to conformant DICOM-WSI (e.g. with wsidicomizer) or to a "
                "pyramidal TIFF",
            )
    vols = series.volumes
    if not vols:
        kinds = ", ".join(sorted({i.flavor for i in series.instances}))
        raise NotASlideError(
            shown,
            f"DICOM series {series.uid} has no VOLUME instance (only {kinds}): nothing to tile",
        )
    return vols[0]


def resolve(path: str | os.PathLike) -> tuple[DicomSeries, DicomInstance]:
    """The series a DICOM slide path stands for (a folder holding one series, or one of
    its instance files) and its VOLUME instance; a one-line :class:`NotASlideError`
    otherwise (naming the folder when the folder is the slide)."""
    path = Path(path)
    if path.is_dir():
        series, errors = scan_folder(path)
        if not series:
            if errors:
                raise errors[0]
            raise NotASlideError(path, "a folder without DICOM files (a DICOM slide is a folder "
                                       "of .dcm instances)")
        if len(series) > 1:
            raise NotASlideError(
                path, f"holds {len(series)} DICOM series; give one instance file of the series "
                      f"wanted, or list the folder with rlbench tile (one slide per series)")
        return series[0], check_series(series[0], path)
    one = series_of(path)
    return one, check_series(one, path)


def safe_slide_name(text: str) -> str:
    """``text`` usable as a folder name (characters a file system refuses become ``-``)."""
    from rl_benchmarks.utils.safe_names import safe_name

    try:
        return safe_name(text)
    except ValueError:
        return "dicom-series"


@dataclass(frozen=True)
class ListedSeries:
    """A DICOM series as a slide input: the path to give the readers and its name."""

    path: Path
    """The folder when it holds this series only, else the series' main instance file."""
    name: str
    """The folder's name, or the ContainerIdentifier when the folder holds several series."""
    series: DicomSeries | None
    """None when the file could not be parsed (the path then fails when opened)."""


def list_series(paths: list[Path],
                cache: dict[Path, tuple[list[DicomSeries], list[SlideError]]] | None = None,
                ) -> list[ListedSeries]:
    """Slides (one per series) of DICOM inputs: folders (every series in them) and
    instance files (the series they belong to, found among their folder's files).

    Instances of one series listed several times give one slide. A folder holding one
    series is the slide (path = folder, name = folder name); in a folder holding several,
    each series is named by its ContainerIdentifier (made unique with the
    SeriesInstanceUID when two series share one or it is absent). Unreadable files are
    listed as they are, so that opening them gives the one-line error. ``cache`` (folder ->
    :func:`scan_folder` result) lets a caller listing many files of one folder read each
    header once.
    """
    cache = {} if cache is None else cache
    failed: list[ListedSeries] = []
    wanted: dict[Path, set[str] | None] = {}  # folder -> series uids listed (None: all)
    for p in paths:
        if p.is_dir():
            wanted[p] = None
            continue
        known = cache.get(p.parent)
        inst = next((i for s in known[0] for i in s.instances if i.path == p), None) if known else None
        if inst is None:
            try:
                inst = read_instance(p)
            except SlideError:
                failed.append(ListedSeries(p, p.name, None))
                continue
        uids = wanted.setdefault(p.parent, set())
        if uids is not None:
            uids.add(inst.series_uid or f"file:{p}")
    out: list[ListedSeries] = []
    for folder, uids in wanted.items():
        if folder not in cache:
            cache[folder] = scan_folder(folder)
        series, errors = cache[folder]
        if uids is None:
            failed += [ListedSeries(Path(e.path), Path(e.path).name, None) for e in errors]
        if not series:  # only unreadable files: each listed (above) to fail with its error
            continue
        names = _series_names(folder, series)
        for s in series:
            if uids is not None and s.uid not in uids:
                continue
            if len(series) == 1:
                out.append(ListedSeries(folder, folder.name, s))
            else:
                out.append(ListedSeries(s.main_file, names[s.uid], s))
    return out + failed


def _series_names(folder: Path, series: list[DicomSeries]) -> dict[str, str]:
    ids = [s.container_id for s in series]
    names = {}
    for s in series:
        cid = s.container_id
        unique = bool(cid) and ids.count(cid) == 1
        names[s.uid] = safe_slide_name(cid if unique else f"{cid or folder.name}_{s.uid}")
    return names
