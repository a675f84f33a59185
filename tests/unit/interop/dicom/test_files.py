"""Finding and checking DICOM files: what is refused, with which message, at what memory cost."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medmesh.errors import DicomError, InvalidInputError
from medmesh.interop import dicom
from medmesh.interop.dicom import (
    DicomFailure,
    DicomFile,
    DicomSkipped,
    check,
    group_studies,
    scan,
)
from medmesh.interop.dicom.files import REASONS

DATA = Path(pydicom.data.__file__).parent
FILES = DATA / "test_files"
PIXEL_TRUNCATED = "truncated: pixel data ends after the end of the file"


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def cut_in_pixel_data(path: Path) -> bytes:
    """The file's bytes, cut halfway through the pixel data."""
    with path.open("rb") as fp:
        pydicom.dcmread(fp, stop_before_pixels=True)
        start = fp.tell()  # pydicom stops at the Pixel Data element
    data = path.read_bytes()
    return data[: start + (len(data) - start) // 2]


def assert_phi_free(error: DicomError, ds: Dataset, path: Path) -> None:
    message = str(error)
    assert message in REASONS
    for secret in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
        if secret:
            assert secret not in message
    assert str(path) not in message and path.name not in message
    assert error.path == path


# -- check ----------------------------------------------------------------------------------------


def test_check_reads_the_header() -> None:
    info = check(FILES / "CT_small.dcm")
    ds = read(FILES / "CT_small.dcm")
    assert info.study_uid == ds.StudyInstanceUID
    assert info.series_uid == ds.SeriesInstanceUID
    assert info.sop_instance_uid == ds.SOPInstanceUID
    assert info.sop_class_uid == ds.SOPClassUID
    assert info.modality == "CT"
    assert info.series_number == ds.SeriesNumber and info.instance_number == ds.InstanceNumber
    assert (info.study_date, info.study_time) == (ds.StudyDate, ds.StudyTime)
    assert info.timezone_offset == "-0500"
    assert info.transfer_syntax == ExplicitVRLittleEndian
    assert info.size == (FILES / "CT_small.dcm").stat().st_size
    assert info.patient_name == str(ds.PatientName)


def test_patient_fields_stay_out_of_repr() -> None:
    info = check(FILES / "CT_small.dcm")
    assert info.patient_name and info.patient_id
    assert info.patient_name not in repr(info) and info.patient_id not in repr(info)


def test_a_file_without_preamble_is_accepted_when_it_is_a_data_set() -> None:
    info = check(FILES / "rtstruct.dcm")  # no 128-byte preamble, no file meta
    assert info.modality == "RTSTRUCT" and info.transfer_syntax is None


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is a README\n", os.urandom(4096), b"\x00" * 128 + b"DICM"],
    ids=["empty", "text", "random", "preamble-only"],
)
def test_not_dicom(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "file.dcm"
    path.write_bytes(content)
    with pytest.raises(DicomError) as info:
        check(path)
    assert str(info.value) in ("not a DICOM file", "not a readable DICOM file")
    assert isinstance(info.value, InvalidInputError) and isinstance(info.value, ValueError)
    assert info.value.code == "invalid_dicom" and info.value.path == path


@pytest.mark.parametrize(
    "name", ["MR_small.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"]
)
def test_truncated_pixel_data(name: str, tmp_path: Path) -> None:
    # Prepare: native, encapsulated (undefined length), big-endian and implicit VR pixel data
    path = tmp_path / "cut"
    path.write_bytes(cut_in_pixel_data(FILES / name))
    # Execute
    with pytest.raises(DicomError) as info:
        check(path)
    # Assert
    assert str(info.value) == PIXEL_TRUNCATED
    assert_phi_free(info.value, read(FILES / name), path)


def test_pydicoms_own_truncated_files() -> None:
    with pytest.raises(DicomError, match=r"^truncated: pixel data"):
        check(FILES / "MR_truncated.dcm")
    with pytest.raises(DicomError, match=r"^truncated: a data element"):
        check(FILES / "rtplan_truncated.dcm")  # cut inside a sequence; no pixel data


def test_truncated_anywhere(tmp_path: Path) -> None:
    """Cut at any byte: refused as truncated, or missing a UID or its pixel data.

    A cut exactly between two elements before the Image Pixel module leaves a data set that
    is complete as far as the bytes go; telling it from a non-image needs the IOD, so it
    passes. Every 37th byte hits one such boundary in MR_small.
    """
    data = (FILES / "MR_small.dcm").read_bytes()
    path = tmp_path / "cut"
    reasons, accepted = set(), []
    for size in range(0, len(data) - 1, 37):
        path.write_bytes(data[:size])
        try:
            accepted.append(check(path))
        except DicomError as exc:
            reasons.add(str(exc))
    assert reasons <= set(REASONS)
    assert len(accepted) <= 1 and all(f.number_of_frames is None for f in accepted)
    assert {PIXEL_TRUNCATED, "truncated: a data element ends after the end of the file"} <= reasons
    # the Data Set Trailing Padding after the pixel data, cut by one byte
    path.write_bytes(data[:-1])
    with pytest.raises(DicomError, match=r"^truncated: a data element"):
        check(path)


def test_cut_where_the_pixel_data_begins(tmp_path: Path) -> None:
    with (FILES / "MR_small.dcm").open("rb") as fp:
        pydicom.dcmread(fp, stop_before_pixels=True)
        start = fp.tell()
    path = tmp_path / "cut"
    path.write_bytes((FILES / "MR_small.dcm").read_bytes()[:start])
    with pytest.raises(DicomError, match=r"^truncated: the image has no pixel data$"):
        check(path)


@pytest.mark.parametrize(
    "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
)
def test_missing_uid(keyword: str, tmp_path: Path) -> None:
    ds = read(FILES / "CT_small.dcm")
    delattr(ds, keyword)
    if keyword == "SOPClassUID":
        del ds.file_meta.MediaStorageSOPClassUID
    path = tmp_path / "x.dcm"
    ds.save_as(path)
    with pytest.raises(DicomError) as info:
        check(path)
    assert str(info.value) == f"missing {keyword}"
    assert_phi_free(info.value, ds, path)


def test_empty_uid_counts_as_missing(tmp_path: Path) -> None:
    ds = read(FILES / "CT_small.dcm")
    ds.SeriesInstanceUID = ""
    ds.save_as(tmp_path / "x.dcm")
    with pytest.raises(DicomError, match=r"^missing SeriesInstanceUID$"):
        check(tmp_path / "x.dcm")


def test_sop_class_falls_back_to_the_file_meta(tmp_path: Path) -> None:
    ds = read(FILES / "CT_small.dcm")
    del ds.SOPClassUID
    ds.save_as(tmp_path / "x.dcm")
    assert check(tmp_path / "x.dcm").sop_class_uid == ds.file_meta.MediaStorageSOPClassUID


def test_dicomdir_is_not_an_instance() -> None:
    with pytest.raises(DicomError, match="DICOMDIR"):
        check(FILES / "dicomdirtests/DICOMDIR")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DicomError):
        check(tmp_path / "nothing")
    with pytest.raises(DicomError, match="no such file"):
        list(scan(tmp_path / "nothing"))


# -- scan -----------------------------------------------------------------------------------------


def _cd(tmp_path: Path) -> Path:
    """A folder laid out like an imaging CD, with a bad file."""
    root = tmp_path / "cd"
    shutil.copytree(FILES / "dicomdirtests/98892003", root / "DICOM")
    shutil.copy(FILES / "dicomdirtests/DICOMDIR", root / "DICOMDIR")
    shutil.copy(FILES / "CT_small.dcm", root / "ct")
    (root / "README.TXT").write_text("open viewer.exe")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "broken").write_bytes(cut_in_pixel_data(FILES / "MR_small.dcm"))
    return root


def test_scan_collects_every_file_once(tmp_path: Path) -> None:
    root = _cd(tmp_path)
    items = list(scan(root, errors="collect"))
    paths = [i.path for i in items]
    assert paths == sorted(paths, key=lambda p: (p.parent != root, str(p)))  # files, then dirs
    assert len(paths) == len(set(paths)) == sum(1 for p in root.rglob("*") if p.is_file())
    kinds = {i.path.name: type(i) for i in items}
    assert kinds["DICOMDIR"] is DicomSkipped
    assert kinds["README.TXT"] is DicomSkipped and kinds[".DS_Store"] is DicomSkipped
    assert kinds["ct"] is DicomFile
    assert [i for i in items if isinstance(i, DicomFailure)] == [
        DicomFailure(root / "broken", PIXEL_TRUNCATED)
    ]
    assert sum(isinstance(i, DicomFile) for i in items) == 1 + len(list(root.glob("DICOM/*/*")))
    assert items == list(scan(root, errors="collect"))  # repeatable


def test_scan_raises_on_the_first_bad_file(tmp_path: Path) -> None:
    root = _cd(tmp_path)
    with pytest.raises(DicomError) as info:
        list(scan(root))
    assert info.value.path == root / "broken"
    (root / "broken").unlink()
    files = list(scan(root))  # skipped files pass silently
    assert all(isinstance(f, DicomFile) for f in files)
    assert len(files) == 1 + len(list(root.glob("DICOM/*/*")))


def test_scan_a_single_file() -> None:
    assert [f.path for f in scan(FILES / "CT_small.dcm")] == [FILES / "CT_small.dcm"]


def test_scan_rejects_an_unknown_errors_mode() -> None:
    with pytest.raises(ValueError, match="errors"):
        list(scan(FILES, errors="ignore"))  # type: ignore[call-overload]


def test_scan_every_pydicom_file_without_warnings() -> None:
    # Prepare: pytest turns warnings into errors; the library must not let pydicom's through
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Execute
        items = list(scan(DATA, errors="collect"))
    # Assert
    reasons = {i.reason for i in items if isinstance(i, DicomFailure)}
    assert reasons <= set(REASONS)
    assert PIXEL_TRUNCATED in reasons
    assert sum(isinstance(i, DicomFile) for i in items) > 150


def _big_file(path: Path, size: int = 50_000_000) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1143.8.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1143.8"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1143.8.0"
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 500, 500, size // 500_000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(size)
    ds.save_as(path, enforce_file_format=True)


def test_scan_does_not_read_pixel_data(tmp_path: Path) -> None:
    # Prepare: ~50 MB of uncompressed pixel data
    path = tmp_path / "big.dcm"
    _big_file(path)
    assert path.stat().st_size > 50_000_000
    # Execute
    tracemalloc.start()
    try:
        files = list(scan(tmp_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Assert
    assert peak < 5_000_000, f"peak {peak} bytes: pixel data was loaded"
    assert [f.number_of_frames for f in files] == [100]
    # and one byte less is a truncated file
    with open(path, "r+b") as fp:
        fp.truncate(path.stat().st_size - 1)
    with pytest.raises(DicomError, match=r"^truncated: pixel data"):
        check(path)


# -- grouping -------------------------------------------------------------------------------------


def test_group_studies_counts_like_pydicom() -> None:
    # Prepare
    root = FILES / "dicomdirtests"
    files = [f for f in scan(root, errors="collect") if isinstance(f, DicomFile)]
    expected: dict[str, dict[str, set[str]]] = {}
    for p in root.rglob("*"):
        if p.is_file() and "DICOMDIR" not in p.name and p.suffix != ".txt" and p.name != "README":
            ds = read(p)
            series = expected.setdefault(ds.StudyInstanceUID, {})
            series.setdefault(ds.SeriesInstanceUID, set()).add(ds.SOPInstanceUID)
    # Execute
    studies = group_studies(files)
    # Assert
    assert list(studies) == sorted(expected)
    for uid, study in studies.items():
        assert {s.uid: {f.sop_instance_uid for f in s.instances} for s in study.series} == (
            expected[uid]
        )
        assert study.number_of_series == len(expected[uid])
        assert study.number_of_instances == sum(len(v) for v in expected[uid].values())
        numbers = [s.number for s in study.series]
        assert numbers == sorted(numbers, key=lambda n: (n is None, n or 0))
        for series in study.series:
            order = [(f.instance_number or 0) for f in series.instances]
            assert order == sorted(order)
        assert study.modalities and study.size > 0


def test_group_studies_drops_duplicate_instances(tmp_path: Path) -> None:
    shutil.copy(FILES / "CT_small.dcm", tmp_path / "a")
    shutil.copy(FILES / "CT_small.dcm", tmp_path / "b")
    (study,) = group_studies(scan(tmp_path)).values()
    assert study.number_of_instances == 1
    assert study.duplicates == (tmp_path / "b",)


# -- the package surface --------------------------------------------------------------------------


def test_package_exports_resolve_lazily() -> None:
    for name in dicom.__all__:
        assert getattr(dicom, name) is not None
    with pytest.raises(AttributeError):
        _ = dicom.no_such_thing  # type: ignore[attr-defined]
    code = "import sys, medmesh.interop.dicom; assert 'pydicom' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reasons_are_plain_text() -> None:
    for reason in REASONS:
        assert re.fullmatch(r"[A-Za-z: ,]+", reason)
