"""ImagingStudy instances linked to their records by CID; study ids; merging re-imports."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pydicom
import pytest

from medmesh.interop.dicom import (
    RECORD_CID_EXTENSION,
    DicomFile,
    Study,
    group_studies,
    imaging_study,
    record_cids,
    scan,
    study_resource_id,
)
from medmesh.interop.dicom.study import merge_imaging_studies, study_uid_of
from medmesh.interop.fhir.outcome import FhirError
from medmesh.interop.fhir.validation import validate_resource

FILES = Path(pydicom.data.__file__).parent / "test_files"
CID_A = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
CID_B = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def study_of(*paths: Path) -> Study:
    files = [f for p in paths for f in scan(p, errors="collect") if isinstance(f, DicomFile)]
    (study,) = group_studies(files).values()
    return study


def two_instance_study(tmp_path: Path) -> Study:
    """CT_small and a copy of it with another SOP Instance UID (same series)."""
    shutil.copy(FILES / "CT_small.dcm", tmp_path / "a.dcm")
    ds = pydicom.dcmread(FILES / "CT_small.dcm")
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 2
    ds.save_as(tmp_path / "b.dcm")
    return study_of(tmp_path)


def test_record_cids_round_trip_and_the_extension_validates(tmp_path: Path) -> None:
    study = two_instance_study(tmp_path)
    first, _second = study.series[0].instances
    resource = imaging_study(
        study,
        patient_ref="Patient/p1",
        study_id=study_resource_id(study.uid),
        record_cids={first.sop_instance_uid: CID_A},  # the second has no record
    )
    validate_resource(resource)  # the extension is valid FHIR (ext-1, url, valueString)
    assert record_cids(resource) == {(first.series_uid, first.sop_instance_uid): CID_A}
    instance = resource["series"][0]["instance"][0]
    assert instance["extension"] == [{"url": RECORD_CID_EXTENSION, "valueString": CID_A}]
    assert "extension" not in resource["series"][0]["instance"][1]
    assert study_uid_of(resource) == study.uid


def test_an_extension_with_two_values_is_refused(tmp_path: Path) -> None:
    study = study_of(FILES / "CT_small.dcm")
    resource = imaging_study(study, patient_ref="Patient/p1", record_cids={
        study.series[0].instances[0].sop_instance_uid: CID_A})  # fmt: skip
    resource["series"][0]["instance"][0]["extension"][0]["extension"] = [
        {"url": "x", "valueString": "y"}
    ]
    with pytest.raises(FhirError):
        validate_resource(resource)


def test_study_resource_id_is_a_fhir_id_without_the_uid() -> None:
    uid = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    sid = study_resource_id(uid)
    assert sid == study_resource_id(uid + " ") and sid != study_resource_id(uid + "1")
    assert sid.startswith("dcm-") and len(sid) == 36 and uid not in sid
    validate_resource({"resourceType": "ImagingStudy", "id": sid, "status": "available",
                       "subject": {"reference": "Patient/p1"}})  # fmt: skip


def test_merge_keeps_earlier_instances_and_other_elements(tmp_path: Path) -> None:
    study = two_instance_study(tmp_path)
    first, second = study.series[0].instances
    sid = study_resource_id(study.uid)
    only_first = dataclasses.replace(
        study, series=(dataclasses.replace(study.series[0], instances=(first,)),)
    )
    only_second = dataclasses.replace(
        study, series=(dataclasses.replace(study.series[0], instances=(second,)),)
    )
    old = imaging_study(only_first, patient_ref="Patient/p1", study_id=sid,
                        record_cids={first.sop_instance_uid: CID_A})  # fmt: skip
    old["note"] = [{"text": "added by a FHIR client"}]
    old["meta"] = {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"}
    new = imaging_study(only_second, patient_ref="Patient/p1", study_id=sid,
                        record_cids={second.sop_instance_uid: CID_B})  # fmt: skip
    merged = merge_imaging_studies(old, new)
    validate_resource(merged)
    assert "meta" not in merged and merged["note"] == old["note"]
    assert merged["numberOfSeries"] == 1 and merged["numberOfInstances"] == 2
    assert merged["series"][0]["numberOfInstances"] == 2
    assert record_cids(merged) == {
        (first.series_uid, first.sop_instance_uid): CID_A,
        (second.series_uid, second.sop_instance_uid): CID_B,
    }
    assert [m["code"] for m in merged["modality"]] == ["CT"]
    # importing another study's series into it adds a series and its modality
    mr = imaging_study(study_of(FILES / "MR_small.dcm"), patient_ref="Patient/p1", study_id=sid)
    both = merge_imaging_studies(merged, mr)
    assert both["numberOfSeries"] == 2 and both["numberOfInstances"] == 3
    assert [m["code"] for m in both["modality"]] == ["CT", "MR"]
