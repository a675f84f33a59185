"""What an upload becomes: valid FHIR resources (or a Bundle's) as records of their kind, a
file as a document; invalid FHIR is refused with every issue and nothing to store."""

from __future__ import annotations

import json

import pytest

from medmesh.errors import InvalidInputError
from medmesh.portal.patient import UploadRefused, parse_upload

OBS = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
    "valueQuantity": {"value": 72, "unit": "/min"},
}


def test_a_resource_becomes_one_record_of_its_kind_with_an_id() -> None:
    ((data, kind),) = parse_upload(json.dumps(OBS).encode(), "hr.json")
    stored = json.loads(data)
    assert kind == "fhir:Observation" and stored["id"] and stored["valueQuantity"]["value"] == 72


def test_a_bundle_becomes_one_record_per_resource() -> None:
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": OBS}, {"resource": {**OBS, "id": "keep-me"}}]}  # fmt: skip
    items = parse_upload(json.dumps(bundle).encode())
    assert [k for _, k in items] == ["fhir:Observation"] * 2
    assert json.loads(items[1][0])["id"] == "keep-me"


def test_invalid_fhir_lists_every_issue() -> None:
    bad = {**OBS, "status": "bogus"}
    del bad["code"]
    with pytest.raises(UploadRefused) as info:
        parse_upload(json.dumps(bad).encode(), "bad.json")
    paths = [p for issue in info.value.issues for p in issue.expression]
    assert any("status" in p for p in paths) and any("code" in p for p in paths)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": OBS}, {"resource": bad}],
    }
    with pytest.raises(UploadRefused) as info:
        parse_upload(json.dumps(bundle).encode())
    assert all(
        p.startswith("Bundle.entry[1].resource") for i in info.value.issues for p in i.expression
    )


def test_broken_json_and_json_without_a_type_are_refused() -> None:
    with pytest.raises(UploadRefused):
        parse_upload(b'{"resourceType": "Observation",', "x.json")
    with pytest.raises(UploadRefused):
        parse_upload(b'{"hello": 1}', "x.json")


def test_other_files_are_documents_and_empty_ones_are_refused() -> None:
    assert parse_upload(b"%PDF-1.7 ...", "letter.pdf") == [(b"%PDF-1.7 ...", "document")]
    with pytest.raises(InvalidInputError):
        parse_upload(b"", "empty.txt")


def test_a_dicom_instance_is_stored_as_an_image_and_a_broken_one_refused() -> None:
    from pathlib import Path

    from pydicom.data import get_testdata_file

    whole = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert parse_upload(whole, "ct.dcm") == [(whole, "dicom:instance")]
    assert parse_upload(whole, "no-extension") == [(whole, "dicom:instance")]  # the DICM mark
    for bad, name in (
        (whole[: len(whole) // 2], "ct.dcm"),  # truncated in the pixel data
        (whole[:200], "scan"),  # marked DICM, nothing after the file meta
        (b"just some text\n" * 20, "scan.dcm"),  # named as DICOM, is not
    ):
        with pytest.raises(InvalidInputError) as info:
            parse_upload(bad, name)
        assert "not a whole, valid DICOM instance" in info.value.message
