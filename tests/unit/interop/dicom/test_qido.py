"""QIDO-RS queries parsed exactly (or refused) and ImagingStudy resources as DICOM JSON."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom
import pytest

from medmesh.errors import InvalidInputError
from medmesh.interop.dicom import DicomFile, group_studies, imaging_study, scan
from medmesh.interop.dicom.qido import (
    MAX_LIMIT,
    QidoQuery,
    dicomweb_base,
    instance_attributes,
    parse_qido,
    series_attributes,
    study_attributes,
)
from medmesh.interop.dicom.study import DCM_SYSTEM, study_resource_id
from medmesh.interop.dicom.web import _accepts_dicom, to_query
from medmesh.interop.fhir.params import date_range

FILES = Path(pydicom.data.__file__).parent / "test_files"
BASE = "http://gw/dicomweb"


def ct_resource() -> dict[str, object]:
    files = [f for f in scan(FILES / "CT_small.dcm", errors="collect") if isinstance(f, DicomFile)]
    (study,) = group_studies(files).values()
    return imaging_study(study, patient_ref="Patient/p1", study_id=study_resource_id(study.uid))


def test_parse_matching_keys_by_keyword_and_tag() -> None:
    q = parse_qido(
        [
            ("PatientID", "p-1"),
            ("00080020", "20040101-20041231"),
            ("ModalitiesInStudy", "CT\\MR"),
            ("StudyInstanceUID", "1.2.3,1.2.4"),
            ("limit", "5"),
            ("offset", "10"),
            ("includefield", "all"),
            ("fuzzymatching", "false"),
        ]
    )
    assert q == QidoQuery(
        patient_id="p-1",
        date_from=dt.date(2004, 1, 1),
        date_to=dt.date(2004, 12, 31),
        modalities=("CT", "MR"),
        study_uids=("1.2.3", "1.2.4"),
        limit=5,
        offset=10,
    )


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("20040119", dt.date(2004, 1, 19), dt.date(2004, 1, 19)),
        ("20040119-", dt.date(2004, 1, 19), None),
        ("-20040119", None, dt.date(2004, 1, 19)),
    ],
)
def test_study_date_forms(value: str, low: dt.date | None, high: dt.date | None) -> None:
    q = parse_qido([("StudyDate", value)])
    assert (q.date_from, q.date_to) == (low, high)


@pytest.mark.parametrize(
    "items",
    [
        [("PatientName", "Doe^John")],  # not a supported key: never silently ignored
        [("PatientID", "p*")],  # wildcards
        [("PatientID", "a b")],  # not a FHIR id
        [("StudyDate", "2004-01-19")],
        [("StudyDate", "20040230")],
        [("StudyDate", "20050101-20040101")],
        [("StudyDate", "-")],
        [("ModalitiesInStudy", "ct")],
        [("StudyInstanceUID", "1.2.x")],
        [("limit", str(MAX_LIMIT + 1))],
        [("offset", "-1")],
        [("fuzzymatching", "true")],
        [("PatientID", "a"), ("00100020", "b")],
    ],
)
def test_refused_queries(items: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidInputError):
        parse_qido(items)


def test_empty_value_is_universal_matching() -> None:
    assert parse_qido([("PatientID", ""), ("StudyDate", "")]) == QidoQuery()


def test_query_maps_onto_the_fhir_index() -> None:
    q = parse_qido(
        [
            ("PatientID", "p1"),
            ("StudyDate", "20040119"),
            ("ModalitiesInStudy", "CT"),
            ("StudyInstanceUID", "1.2.3"),
            ("limit", "7"),
            ("offset", "2"),
        ]
    )
    query = to_query(q)
    assert query.type == "ImagingStudy"
    assert query.refs == [("patient", ["Patient/p1"])]
    assert query.ids == [study_resource_id("1.2.3")]
    assert query.tokens == [("modality", [f"{DCM_SYSTEM}|CT"])]
    day = date_range("2004-01-19")
    assert query.dates == [("started", "ge", day), ("started", "le", day)]
    assert (query.count, query.offset) == (7, 2)


def test_study_series_and_instance_attributes() -> None:
    resource = ct_resource()
    ds = pydicom.dcmread(FILES / "CT_small.dcm", stop_before_pixels=True)
    study = study_attributes(resource, BASE)
    assert study["0020000D"] == {"vr": "UI", "Value": [ds.StudyInstanceUID]}
    assert study["00080020"] == {"vr": "DA", "Value": [ds.StudyDate]}
    assert study["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert study["00100020"] == {"vr": "LO", "Value": ["p1"]}  # the FHIR Patient id
    assert study["00201206"]["Value"] == [1] and study["00201208"]["Value"] == [1]
    assert study["00081190"]["Value"] == [f"{BASE}/studies/{ds.StudyInstanceUID}"]
    # no name or DICOM patient id from the header
    text = repr(study)
    assert str(ds.PatientName) not in text and ds.PatientID not in text

    (series,) = resource["series"]  # type: ignore[misc]
    s = series_attributes(resource, series, BASE)
    assert s["0020000E"]["Value"] == [ds.SeriesInstanceUID]
    assert s["00080060"]["Value"] == ["CT"]
    assert s["00201209"]["Value"] == [1]
    i = instance_attributes(resource, series, series["instance"][0], BASE)
    assert i["00080018"]["Value"] == [ds.SOPInstanceUID]
    assert i["00080016"]["Value"] == [ds.SOPClassUID]
    assert i["00081190"]["Value"][0].endswith(
        f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )


def test_study_time_keeps_the_local_time_written() -> None:
    resource = {**ct_resource(), "started": "2004-01-19T07:27:30.5+01:00"}
    attrs = study_attributes(resource, BASE)
    assert attrs["00080020"]["Value"] == ["20040119"]
    assert attrs["00080030"]["Value"] == ["072730.5"]
    no_date = study_attributes({**resource, "started": None}, BASE)
    assert no_date["00080020"] == {"vr": "DA"}  # present, empty: known unknown


def test_dicomweb_base() -> None:
    assert dicomweb_base("http://h:7700/fhir/") == "http://h:7700/dicomweb"
    with pytest.raises(InvalidInputError):
        dicomweb_base("http://h:7700/r4")


@pytest.mark.parametrize(
    ("accept", "ok"),
    [
        (None, True),
        ("*/*", True),
        ('multipart/related; type="application/dicom"', True),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', True),
        (
            "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50",
            False,
        ),
        ("application/dicom+json", False),
        ('multipart/related; type="image/jpeg"', False),
        ("application/json, multipart/*;q=0.5", True),
        ("multipart/*;q=0", False),
    ],
)
def test_accept_negotiation(accept: str | None, ok: bool) -> None:
    assert _accepts_dicom(accept) is ok
