"""ImagingStudy resources: valid R4B, right counts, no PHI beyond what ImagingStudy carries."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pydicom
import pytest
from fhir.resources.R4B.imagingstudy import ImagingStudy

from medmesh.errors import InvalidInputError
from medmesh.interop.dicom import (
    Deidentifier,
    DicomFile,
    Study,
    group_studies,
    imaging_study,
    scan,
)
from medmesh.interop.dicom.study import (
    BODY_PART_CODES,
    DCM_SYSTEM,
    SNOMED_SYSTEM,
    body_site_coding,
    fhir_datetime,
)

DATA = Path(pydicom.data.__file__).parent
FILES = DATA / "test_files"


def studies_in(path: Path) -> dict[str, Study]:
    return group_studies(f for f in scan(path, errors="collect") if isinstance(f, DicomFile))


def validate(resource: dict[str, object]) -> ImagingStudy:
    return ImagingStudy.model_validate(resource)


def test_every_pydicom_study_is_a_valid_imaging_study() -> None:
    # Prepare
    files = [f for f in scan(DATA, errors="collect") if isinstance(f, DicomFile)]
    studies = group_studies(files)
    assert len(studies) > 20
    # Execute / Assert
    for study in studies.values():
        resource = imaging_study(study, patient_ref="Patient/p1", endpoint_ref="Endpoint/wado")
        model = validate(resource)
        assert model.status == "available"
        assert model.subject.reference == "Patient/p1"
        assert model.numberOfSeries == len(model.series or []) == study.number_of_series
        assert model.numberOfInstances == study.number_of_instances
        assert model.numberOfInstances == sum(len(s.instance or []) for s in model.series or [])
        assert model.identifier[0].system == "urn:dicom:uid"
        assert model.identifier[0].value == f"urn:oid:{study.uid}"
        for series, source in zip(model.series or [], study.series, strict=True):
            assert series.uid == source.uid
            assert series.modality.system == DCM_SYSTEM
            assert series.numberOfInstances == len(source.instances)
            for instance, f in zip(series.instance or [], source.instances, strict=True):
                assert instance.uid == f.sop_instance_uid
                assert instance.sopClass.system == "urn:ietf:rfc:3986"
                assert instance.sopClass.code == f"urn:oid:{f.sop_class_uid}"
    instances = {f.sop_instance_uid for f in files}
    assert sum(s.number_of_instances for s in studies.values()) == len(instances)


def test_studies_counted_independently() -> None:
    # Prepare: count with pydicom alone (two studies: CR with 3 series, CT with 1)
    root = FILES / "dicomdirtests/77654033"
    expected: dict[str, dict[str, set[str]]] = {}
    modalities: dict[str, set[str]] = {}
    for p in root.rglob("*"):
        if p.is_file():
            ds = pydicom.dcmread(p)
            study = expected.setdefault(ds.StudyInstanceUID, {})
            study.setdefault(ds.SeriesInstanceUID, set()).add(ds.SOPInstanceUID)
            modalities.setdefault(ds.StudyInstanceUID, set()).add(ds.Modality)
    # Execute
    resources = {
        uid: imaging_study(study, patient_ref="Patient/p1", study_id="s-1")
        for uid, study in studies_in(root).items()
    }
    # Assert
    assert set(resources) == set(expected) and len(resources) == 2
    for uid, resource in resources.items():
        validate(resource)
        assert resource["id"] == "s-1"
        assert resource["numberOfSeries"] == len(expected[uid])
        assert resource["numberOfInstances"] == sum(len(v) for v in expected[uid].values())
        assert {m["code"] for m in resource["modality"]} == modalities[uid]
        assert {s["uid"]: len(s["instance"]) for s in resource["series"]} == {
            k: len(v) for k, v in expected[uid].items()
        }
    assert sorted(r["numberOfSeries"] for r in resources.values()) == [1, 3]


def test_started_uses_the_timezone_offset() -> None:
    (study,) = studies_in(FILES / "CT_small.dcm").values()
    resource = imaging_study(study, patient_ref="Patient/p1")
    assert resource["started"] == "2004-01-19T07:27:30-05:00"  # (0008,0201) is -0500
    assert validate(resource).started is not None


def test_started_is_a_date_without_a_zone_unless_one_is_given(tmp_path: Path) -> None:
    ds = pydicom.dcmread(FILES / "CT_small.dcm")
    del ds.TimezoneOffsetFromUTC
    ds.save_as(tmp_path / "x.dcm")
    (study,) = studies_in(tmp_path).values()
    assert imaging_study(study, patient_ref="Patient/p1")["started"] == "2004-01-19"
    utc = imaging_study(study, patient_ref="Patient/p1", tz=dt.UTC)
    assert utc["started"] == "2004-01-19T07:27:30+00:00"
    validate(utc)


@pytest.mark.parametrize(
    ("date", "time", "offset", "expected"),
    [
        ("20040119", "072730.5", "+0100", "2004-01-19T07:27:30.500000+01:00"),
        ("20040119", "0727", "+0000", "2004-01-19T07:27:00+00:00"),
        ("20040119", "07:27:30", "-0330", "2004-01-19T07:27:30-03:30"),
        ("20040119", None, "+0100", "2004-01-19"),
        ("20040119", "garbage", "+0100", "2004-01-19"),
        ("20040119", "072730", "+9999", "2004-01-19"),
        ("20040230", "072730", "+0100", None),
        ("2004", None, None, None),
        (None, "072730", "+0100", None),
    ],
)
def test_fhir_datetime(
    date: str | None, time: str | None, offset: str | None, expected: str | None
) -> None:
    assert fhir_datetime(date, time, offset) == expected


def test_body_site_codes() -> None:
    assert body_site_coding("CHEST") == {
        "system": SNOMED_SYSTEM,
        "code": "816094009",
        "display": "Chest",
    }
    assert body_site_coding("whole body")["code"] == BODY_PART_CODES["WHOLEBODY"][0]  # type: ignore[index]
    assert body_site_coding("BRAINSTEM") == {"display": "BRAINSTEM"}  # not a defined term
    assert body_site_coding(None) is None
    (study,) = studies_in(FILES / "JPEG2000.dcm").values()  # Body Part Examined: WHOLE BODY
    resource = imaging_study(study, patient_ref="Patient/p1")
    validate(resource)
    assert resource["series"][0]["bodySite"]["display"] == "Entire body"


def test_no_patient_identity_in_the_resource() -> None:
    for path in (FILES / "CT_small.dcm", FILES / "MR_small.dcm", FILES / "dicomdirtests"):
        for study in studies_in(path).values():
            text = json.dumps(imaging_study(study, patient_ref="Patient/p1"))
            for f in (f for s in study.series for f in s.instances):
                for secret in (f.patient_name, f.patient_id):
                    if secret and len(secret) > 3:
                        assert secret not in text


def test_bad_references_are_refused() -> None:
    (study,) = studies_in(FILES / "CT_small.dcm").values()
    with pytest.raises(InvalidInputError):
        imaging_study(study, patient_ref=" ")
    with pytest.raises(InvalidInputError):
        imaging_study(study, patient_ref="Patient/p1", study_id="not valid!")


def test_missing_modality_and_negative_numbers(tmp_path: Path) -> None:
    ds = pydicom.dcmread(FILES / "CT_small.dcm")
    del ds.Modality
    ds.SeriesNumber = -1
    ds.InstanceNumber = -3
    ds.save_as(tmp_path / "x.dcm")
    (study,) = studies_in(tmp_path).values()
    resource = imaging_study(study, patient_ref="Patient/p1")
    validate(resource)
    series = resource["series"][0]
    assert series["modality"]["code"] == "OT" and "number" not in series
    assert "number" not in series["instance"][0]


def test_imaging_study_of_a_deidentified_study(tmp_path: Path) -> None:
    # Prepare: de-identify a study's files in one run
    src = FILES / "dicomdirtests/98892001"  # one CT study, two series
    out = tmp_path / "out"
    out.mkdir()
    run = Deidentifier(uid_salt=b"sixteen bytes of salt")
    originals = list(scan(src))
    for f in originals:
        run.file(f.path, out / f"{run.uid(f.sop_instance_uid)}.dcm")
    # Execute
    (before,) = group_studies(originals).values()
    (after,) = studies_in(out).values()
    resource = imaging_study(after, patient_ref="Patient/anonymous")
    # Assert
    validate(resource)
    assert after.uid == run.uid(before.uid)
    assert after.number_of_series == before.number_of_series
    assert after.number_of_instances == before.number_of_instances
    assert "started" not in resource  # Study Date and Time are Z: empty
    assert "description" not in resource  # Study Description is X
    assert all("description" not in s for s in resource["series"])
    assert {s["uid"] for s in resource["series"]} == {run.uid(s.uid) for s in before.series}
    shutil.rmtree(out)
