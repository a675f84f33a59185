"""Finding and checking DICOM files, without ever loading pixel data.

A study can be many gigabytes, so every file is read in two cheap passes:

1. pydicom parses the header only (``stop_before_pixels``; values over 64 KiB are deferred,
   never read), which gives the UIDs and the descriptive attributes of :class:`DicomFile`;
2. a structure walk reads only the 8–12 byte element headers of the top-level data set and
   seeks over every value. It proves that each declared length, and in particular the Pixel
   Data's, ends inside the file. pydicom itself reads a truncated file without complaint,
   handing back a short or partial data set.

Problems become :class:`~medmesh.errors.DicomError` with a fixed, PHI-free message (see
:data:`REASONS`); the file's path is on ``error.path``, never in the message, since folder
names can carry patient names. pydicom's own warnings are swallowed while reading because some
quote attribute values.

>>> for item in scan(Path("/media/cdrom"), errors="collect"):           # doctest: +SKIP
...     match item:
...         case DicomFile(): print(item.modality, item.sop_instance_uid)
...         case DicomFailure(): print("bad file:", item.reason)
...         case DicomSkipped(): print("skipped:", item.note)
>>> studies = group_studies(f for f in scan(folder))                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Literal, TypeVar, overload

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medmesh.errors import DicomError

__all__ = [
    "REASONS",
    "DicomFailure",
    "DicomFile",
    "DicomSkipped",
    "Series",
    "Study",
    "check",
    "group_studies",
    "scan",
]

#: Every reason :func:`check` gives, fixed texts without PHI (``missing <keyword>`` for UIDs).
REASONS: Final = (
    "not a DICOM file",
    "not a readable DICOM file",
    "truncated: pixel data ends after the end of the file",
    "truncated: a data element ends after the end of the file",
    "truncated: the image has no pixel data",
    "a DICOMDIR is a media directory, not an instance",
    "missing StudyInstanceUID",
    "missing SeriesInstanceUID",
    "missing SOPInstanceUID",
    "missing SOPClassUID",
)

_NOT_DICOM, _UNREADABLE, _TRUNCATED_PIXELS, _TRUNCATED, _NO_PIXELS, _DICOMDIR = REASONS[:6]

# Values longer than this are skipped over by pydicom (only their offset is kept): large LUTs,
# waveforms or icon images in the header cost a seek, not memory.
_DEFER_SIZE: Final = 64 * 1024

_MEDIA_STORAGE_DIRECTORY: Final = "1.2.840.10008.1.3.10"
_DEFLATED: Final = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"})

# Companion files on imaging CDs and exports that are never DICOM; scan() skips them by name.
_NON_DICOM_SUFFIXES: Final = frozenset(
    {
        ".bat", ".css", ".dll", ".exe", ".gif", ".htm", ".html", ".ico", ".inf", ".ini",
        ".jar", ".jpeg", ".jpg", ".js", ".json", ".log", ".md", ".pdf", ".png", ".rtf",
        ".sh", ".txt", ".xml", ".zip",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class DicomFile:
    """One DICOM instance on disk: its identity and the attributes an ImagingStudy needs.

    Strings are stripped and ``None`` when absent or empty; dates and times are kept as
    written (DICOM DA ``YYYYMMDD``, TM ``HHMMSS.FFFFFF``). ``patient_id`` and
    ``patient_name`` are here for matching a study to a patient in memory: they are left out
    of ``repr()`` and must never be logged.
    """

    path: Path
    size: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str | None = None
    modality: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    study_date: str | None = None
    study_time: str | None = None
    timezone_offset: str | None = None  # (0008,0201) "+HHMM"/"-HHMM", for study_time
    study_description: str | None = None
    series_description: str | None = None
    body_part: str | None = None
    number_of_frames: int | None = None
    patient_id: str | None = field(default=None, repr=False)
    patient_name: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class DicomFailure:
    """A file that is not a usable DICOM instance; ``reason`` is one of :data:`REASONS`."""

    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class DicomSkipped:
    """A file :func:`scan` passed over on purpose (a DICOMDIR, a ``.txt`` on a CD...)."""

    path: Path
    note: str


@dataclass(frozen=True, slots=True)
class Series:
    """The instances of one series, ordered by instance number then SOP Instance UID."""

    uid: str
    number: int | None
    modality: str | None
    description: str | None
    body_part: str | None
    instances: tuple[DicomFile, ...]


@dataclass(frozen=True, slots=True)
class Study:
    """One study, its series ordered by series number then UID.

    Study-level values come from the first instance that has them. ``duplicates`` lists files
    whose SOP Instance UID was already seen in this study; they are not in ``series``.
    """

    uid: str
    date: str | None
    time: str | None
    timezone_offset: str | None
    description: str | None
    series: tuple[Series, ...]
    duplicates: tuple[Path, ...] = ()

    @property
    def number_of_series(self) -> int:
        return len(self.series)

    @property
    def number_of_instances(self) -> int:
        return sum(len(s.instances) for s in self.series)

    @property
    def modalities(self) -> list[str]:
        """Distinct series modalities, in series order."""
        return list(dict.fromkeys(s.modality for s in self.series if s.modality))

    @property
    def size(self) -> int:
        """Bytes on disk over every instance."""
        return sum(f.size for s in self.series for f in s.instances)


# -- reading ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Drop pydicom's warnings: some quote values (a date, a name) that must not reach logs.

    ``warnings.catch_warnings`` swaps process-wide state; reading from many threads at once
    can lose or leak a warning, never a value into a message of ours.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def check(path: Path | str) -> DicomFile:
    """Read one file's header and check it is a complete DICOM instance.

    Raises :class:`~medmesh.errors.DicomError` (with ``path`` set) for a file that is not
    DICOM, is truncated, is a DICOMDIR or lacks its Study/Series/SOP Instance or SOP Class
    UID. Pixel data is never read.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fp:
            return _check_open(fp, path, size)
    except OSError as exc:
        raise DicomError(_UNREADABLE, path=path) from exc


def _check_open(fp: BinaryIO, path: Path, size: int) -> DicomFile:
    ds, part10 = _read_header(fp, path)
    meta = getattr(ds, "file_meta", None) or Dataset()
    if (
        meta.get("MediaStorageSOPClassUID") == _MEDIA_STORAGE_DIRECTORY
        or "DirectoryRecordSequence" in ds
    ):
        raise DicomError(_DICOMDIR, path=path)
    transfer_syntax = _text(meta.get("TransferSyntaxUID"))
    implicit, little = ds.original_encoding
    if transfer_syntax not in _DEFLATED and implicit is not None and little is not None:
        # (a deflated data set cannot be walked in place)
        start = _dataset_start(fp) if part10 else 0
        has_pixels = _check_structure(fp, start, size, implicit=implicit, little=little, path=path)
        # An Image Pixel module without its Pixel Data: the file ends where the pixels begin.
        tags = set(ds.keys())
        if has_pixels is False and tags >= _IMAGE_PIXEL_MODULE and _PIXEL_PROVIDER not in tags:
            raise DicomError(_NO_PIXELS, path=path)

    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = _text(ds.get(keyword))
        if value is None and keyword == "SOPClassUID":
            value = _text(meta.get("MediaStorageSOPClassUID"))
        if value is None:
            raise DicomError(f"missing {keyword}", path=path)
        uids[keyword] = value
    return DicomFile(
        path=path,
        size=size,
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        transfer_syntax=transfer_syntax,
        modality=_text(ds.get("Modality")),
        series_number=_int(ds.get("SeriesNumber")),
        instance_number=_int(ds.get("InstanceNumber")),
        study_date=_text(ds.get("StudyDate")),
        study_time=_text(ds.get("StudyTime")),
        timezone_offset=_text(ds.get("TimezoneOffsetFromUTC")),
        study_description=_text(ds.get("StudyDescription")),
        series_description=_text(ds.get("SeriesDescription")),
        body_part=_text(ds.get("BodyPartExamined")),
        number_of_frames=_int(ds.get("NumberOfFrames")),
        patient_id=_text(ds.get("PatientID")),
        patient_name=_text(ds.get("PatientName")),
    )


def _read_header(fp: BinaryIO, path: Path) -> tuple[Dataset, bool]:
    """Parse everything before the pixel data; ``part10`` is whether the file has a preamble."""
    fp.seek(128)
    part10 = fp.read(4) == b"DICM"
    fp.seek(0)
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(
                fp, defer_size=_DEFER_SIZE, stop_before_pixels=True, force=not part10
            )
            # Values are decoded lazily: decode the ones we read now, inside the quiet block.
            for keyword in _KEYWORDS_READ:
                ds.get(keyword)
    except InvalidDicomError as exc:
        raise DicomError(_NOT_DICOM, path=path) from exc
    except Exception as exc:  # pydicom raises many types on garbage (struct, Unicode, ...)
        raise DicomError(_NOT_DICOM if not part10 else _UNREADABLE, path=path) from exc
    # Without a preamble pydicom parses anything (force=True): only a data set that names its
    # SOP Class is taken for a DICOM instance.
    if not part10 and "SOPClassUID" not in ds:
        raise DicomError(_NOT_DICOM, path=path)
    if len(ds) == 0:  # a preamble and file meta, and nothing after them
        raise DicomError(_UNREADABLE, path=path)
    return ds, part10


_KEYWORDS_READ: Final = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
    "SeriesNumber", "InstanceNumber", "StudyDate", "StudyTime", "TimezoneOffsetFromUTC",
    "StudyDescription", "SeriesDescription", "BodyPartExamined", "NumberOfFrames", "PatientID",
    "PatientName",
)  # fmt: skip


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip().rstrip("\x00").strip()
    return text or None


def _int(value: object) -> int | None:
    """An IS (or int) value; None when absent, empty, multi-valued or not an integer."""
    if isinstance(value, int):  # pydicom's IS is an int subclass
        return int(value)
    if isinstance(value, str | float):
        try:
            return int(value)
        except (ValueError, OverflowError):
            return None
    return None


# -- structure walk --------------------------------------------------------------------------

_UNDEFINED: Final = 0xFFFFFFFF
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQUENCE_END: Final = 0xFFFEE0DD
_PIXEL_TAGS: Final = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
# Explicit VR encodings with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_MAX_DEPTH: Final = 64
# Rows, Columns, Bits Allocated: the Image Pixel module, where Pixel Data is required unless
# a Pixel Data Provider URL (0028,7FE0) points elsewhere.
_IMAGE_PIXEL_MODULE: Final = frozenset({0x00280010, 0x00280011, 0x00280100})
_PIXEL_PROVIDER: Final = 0x00287FE0


class _Truncated(Exception):
    pass


class _Malformed(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Element:
    tag: int
    start: int  # offset of the element's first byte
    end: int  # offset just past its value


def _dataset_start(fp: BinaryIO) -> int:
    """Offset of the data set in a Part-10 file: after the explicit-LE group 0002."""
    pos = 132
    while True:
        fp.seek(pos)
        head = fp.read(8)
        if len(head) < 8:
            return pos
        (group,) = struct.unpack("<H", head[:2])
        if group != 0x0002:
            return pos
        if head[4:6] in _LONG_VRS:
            more = fp.read(4)
            if len(more) < 4:
                return pos
            pos += 12 + struct.unpack("<I", more)[0]
        else:
            pos += 8 + struct.unpack("<H", head[6:8])[0]


def _check_structure(
    fp: BinaryIO, start: int, size: int, *, implicit: bool, little: bool, path: Path
) -> bool | None:
    """Raise DicomError if any top-level element's declared extent runs past the file end.

    Returns whether the data set has pixel data, or None when the walk cannot follow the
    layout (pydicom guessed the encoding of a malformed file): that is left to pydicom, which
    read the header; the walk only adds the length check.
    """
    has_pixels = False
    try:
        for element in _walk_elements(fp, start, size, implicit=implicit, little=little):
            has_pixels = has_pixels or element.tag in _PIXEL_TAGS
    except _Truncated as exc:
        pixel = bool(exc.args) and exc.args[0] in _PIXEL_TAGS
        raise DicomError(_TRUNCATED_PIXELS if pixel else _TRUNCATED, path=path) from None
    except _Malformed:
        return None
    return has_pixels


def _walk_elements(
    fp: BinaryIO, start: int, size: int, *, implicit: bool, little: bool
) -> Iterator[_Element]:
    """Yield the top-level elements from ``start``, reading headers only.

    Raises ``_Truncated(tag)`` if an element (or its header) ends past ``size`` and
    ``_Malformed`` if the bytes are not a data set in this encoding.
    """
    pos = start
    while pos < size:
        tag = -1
        try:
            tag, vr, length, header = _element_header(fp, pos, implicit=implicit, little=little)
            value = pos + header
            if length == _UNDEFINED:
                un = vr == b"UN"  # UN of undefined length holds an implicit VR LE sequence
                end = _skip_items(
                    fp, value, size, implicit=implicit or un, little=little or un, depth=0
                )
            else:
                end = value + length
                if end > size:
                    raise _Truncated(tag)
        except _Truncated:
            raise _Truncated(tag) from None
        yield _Element(tag, pos, end)
        pos = end


def _read_exact(fp: BinaryIO, pos: int, n: int) -> bytes:
    fp.seek(pos)
    data = fp.read(n)
    if len(data) < n:
        raise _Truncated()
    return data


def _element_header(
    fp: BinaryIO, pos: int, *, implicit: bool, little: bool
) -> tuple[int, bytes | None, int, int]:
    """(tag, explicit VR or None, value length, header size) of the element at ``pos``."""
    order = "<" if little else ">"
    head = _read_exact(fp, pos, 8)
    group, element = struct.unpack(order + "HH", head[:4])
    tag = group << 16 | element
    if group == 0xFFFE:
        raise _Malformed()
    if implicit:
        return tag, None, struct.unpack(order + "I", head[4:8])[0], 8
    vr = head[4:6]
    if not (vr.isalpha() and vr.isupper()):
        raise _Malformed()
    if vr in _LONG_VRS:
        return tag, vr, struct.unpack(order + "I", _read_exact(fp, pos + 8, 4))[0], 12
    return tag, vr, struct.unpack(order + "H", head[6:8])[0], 8


def _item_header(fp: BinaryIO, pos: int, little: bool) -> tuple[int, int]:
    order = "<" if little else ">"
    group, element, length = struct.unpack(order + "HHI", _read_exact(fp, pos, 8))
    return group << 16 | element, length


def _skip_items(
    fp: BinaryIO, pos: int, size: int, *, implicit: bool, little: bool, depth: int
) -> int:
    """Skip the items of an undefined-length sequence (or encapsulated pixel data)."""
    if depth > _MAX_DEPTH:
        raise _Malformed()
    while True:
        tag, length = _item_header(fp, pos, little)
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Malformed()
        if length == _UNDEFINED:
            pos = _skip_item_elements(
                fp, pos, size, implicit=implicit, little=little, depth=depth + 1
            )
        else:
            pos += length
            if pos > size:
                raise _Truncated()


def _skip_item_elements(
    fp: BinaryIO, pos: int, size: int, *, implicit: bool, little: bool, depth: int
) -> int:
    """Skip the elements of an undefined-length item, through its Item Delimitation Item."""
    while True:
        tag, _ = _item_header(fp, pos, little)
        if tag == _ITEM_END:
            return pos + 8
        tag, vr, length, header = _element_header(fp, pos, implicit=implicit, little=little)
        pos += header
        if length == _UNDEFINED:
            un = vr == b"UN"
            pos = _skip_items(
                fp, pos, size, implicit=implicit or un, little=little or un, depth=depth + 1
            )
        else:
            pos += length
            if pos > size:
                raise _Truncated()


# -- scanning --------------------------------------------------------------------------------


@overload
def scan(path: Path | str, *, errors: Literal["raise"] = "raise") -> Iterator[DicomFile]: ...
@overload
def scan(
    path: Path | str, *, errors: Literal["collect"]
) -> Iterator[DicomFile | DicomFailure | DicomSkipped]: ...
def scan(
    path: Path | str, *, errors: Literal["raise", "collect"] = "raise"
) -> Iterator[DicomFile | DicomFailure | DicomSkipped]:
    """Yield the DICOM instances in a file or folder tree, in sorted, repeatable order.

    Hidden files, DICOMDIRs and companion files known by their suffix (``.txt``, ``.html``,
    ``.exe``...) are skipped. With ``errors="raise"`` (the default) skipped files are passed
    over silently and the first bad file raises :class:`~medmesh.errors.DicomError`; with
    ``errors="collect"`` every file yields exactly one :class:`DicomFile`,
    :class:`DicomFailure` or :class:`DicomSkipped`. Symlinked folders are not followed.
    """
    if errors not in ("raise", "collect"):
        raise ValueError("errors must be 'raise' or 'collect'")
    for file in _walk(Path(path)):
        note = _skip_note(file)
        if note is None:
            try:
                yield check(file)
                continue
            except DicomError as exc:
                if exc.message != _DICOMDIR:
                    if errors == "raise":
                        raise
                    yield DicomFailure(file, exc.message)
                    continue
                note = "DICOMDIR: a media directory, not an instance"
        if errors == "collect":
            yield DicomSkipped(file, note)


def _walk(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        if not root.exists():
            raise DicomError("no such file or folder", path=root)
        yield root
        return
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            yield Path(folder, name)


def _skip_note(path: Path) -> str | None:
    if path.name.startswith("."):
        return "hidden file"
    if path.name.upper() == "DICOMDIR":
        return "DICOMDIR: a media directory, not an instance"
    if path.suffix.lower() in _NON_DICOM_SUFFIXES:
        return f"not DICOM by its name ({path.suffix.lower()})"
    return None


# -- grouping --------------------------------------------------------------------------------


def group_studies(files: Iterable[DicomFile]) -> dict[str, Study]:
    """Group instances into studies (by StudyInstanceUID, in UID order), then series.

    A second file with a SOP Instance UID already seen in the same study is listed in
    ``Study.duplicates`` rather than counted twice.
    """
    by_study: dict[str, dict[str, list[DicomFile]]] = {}
    for f in files:
        by_study.setdefault(f.study_uid, {}).setdefault(f.series_uid, []).append(f)
    return {uid: _study(uid, by_study[uid]) for uid in sorted(by_study)}


def _instance_key(f: DicomFile) -> tuple[bool, int, str, str]:
    number = f.instance_number
    return (number is None, number or 0, f.sop_instance_uid, str(f.path))


def _study(uid: str, series_files: dict[str, list[DicomFile]]) -> Study:
    seen: set[str] = set()
    duplicates: list[Path] = []
    series: list[Series] = []
    for series_uid, members in series_files.items():
        instances = []
        for f in sorted(members, key=_instance_key):
            if f.sop_instance_uid in seen:
                duplicates.append(f.path)
                continue
            seen.add(f.sop_instance_uid)
            instances.append(f)
        if not instances:
            continue
        series.append(
            Series(
                uid=series_uid,
                number=_first(f.series_number for f in instances),
                modality=_first(f.modality for f in instances),
                description=_first(f.series_description for f in instances),
                body_part=_first(f.body_part for f in instances),
                instances=tuple(instances),
            )
        )
    series.sort(key=lambda s: (s.number is None, s.number or 0, s.uid))
    ordered = [f for s in series for f in s.instances]
    return Study(
        uid=uid,
        date=_first(f.study_date for f in ordered),
        time=_first(f.study_time for f in ordered),
        timezone_offset=_first(f.timezone_offset for f in ordered),
        description=_first(f.study_description for f in ordered),
        series=tuple(series),
        duplicates=tuple(duplicates),
    )


_T = TypeVar("_T")


def _first(values: Iterable[_T | None]) -> _T | None:
    return next((v for v in values if v is not None), None)
