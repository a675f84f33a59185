"""DICOM end to end: ``medmesh dicom import`` / ``export`` against a gateway with DICOMweb.

The harness of ``test_fhir_api`` (a real Anvil, real storage nodes, the gateway on uvicorn):
the hospital's home points at it, and the command line runs in-process as the hospital. The
patient has granted the hospital TREATMENT and CONTRIBUTE for all records.
"""

from __future__ import annotations

import email
import email.policy
import json
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from typer.testing import CliRunner, Result

from medmesh.cli.app import app
from medmesh.identity import save_wallet
from medmesh.interop.dicom import study_resource_id
from medmesh.ledger.contracts import Purpose, Scope, kind_tag
from medmesh.storage.cid import Cid
from tests.integration.interop.test_fhir_api import FHIR_JSON, FOREVER, World, _patient
from tests.integration.interop.test_fhir_api import world as world  # the fixture (own module)

FILES = Path(pydicom.data.__file__).parent / "test_files"
CT = FILES / "CT_small.dcm"
MR = FILES / "MR_small.dcm"
PASS = "dicom test passphrase"
DICOM_JSON = "application/dicom+json"
INSTANCE_TAG = kind_tag("dicom:instance")
STUDY_TAG = kind_tag("fhir:ImagingStudy")


def uid(path: Path, keyword: str) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True)[keyword].value)


def medmesh(home: Path, *args: str) -> Result:
    return CliRunner().invoke(
        app, ["--home", str(home), *args], env={"MEDMESH_PASSPHRASE": PASS}, catch_exceptions=False
    )


def bad_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scan-notes.bin").write_bytes(b"\x00\x01 definitely not DICOM " * 40)
    data = CT.read_bytes()
    (folder / "cut.dcm").write_bytes(data[: len(data) // 2])  # truncated in the pixel data


def records_of(world: World, tag: bytes | None = None) -> list[Any]:
    indexer = world.service.repo.keeper.indexer
    indexer.sync()
    rows = indexer.records(world.patient.address, include_history=True)
    return [r for r in rows if tag is None or r.kind == tag]


def auth(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


@pytest.fixture(scope="module")
def home(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hospital's home, pointing at the harness's chain and storage nodes."""
    home = tmp_path_factory.mktemp("hospital-home")
    save_wallet(world.hospital, home / "wallet.json", PASS, scrypt_n=2**10)
    config = {
        "nodes": world.cluster.urls,
        "k": 2,
        "n": 3,
        "rpc_url": world.rpc_url,
        "chain_id": int(world.service.repo.ledger.chain_id),
    }
    (home / "config.json").write_text(json.dumps(config))
    shutil.copy(world.root / "addresses.json", home / "addresses.json")
    return home


@pytest.fixture(scope="module")
def token(world: World) -> str:
    return world.token()


@pytest.fixture(scope="module")
def patient_id(world: World, token: str) -> str:
    r = requests.post(
        f"{world.url}/Patient",
        json=_patient(world, world.patient),
        headers=auth(token, **{"Content-Type": FHIR_JSON}),
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def dicomweb(world: World) -> str:
    return world.url.removesuffix("/fhir") + "/dicomweb"


@pytest.fixture(scope="module")
def imported(
    world: World, home: Path, patient_id: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """CT_small and MR_small (in a subfolder), next to a non-DICOM and a truncated file."""
    folder = tmp_path_factory.mktemp("scans")
    shutil.copy(CT, folder / "ct.dcm")
    (folder / "more").mkdir()
    shutil.copy(MR, folder / "more" / "mr")
    bad_files(folder / "more")
    before = len(records_of(world))
    result = medmesh(
        home, "dicom", "import", str(folder), "--subject", f"Patient/{patient_id}",
        "--fhir", world.url, "--json",
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # two files refused, the rest imported
    summary = json.loads(result.stdout)
    return {"summary": summary, "before": before, "folder": folder, "stderr": result.stderr}


def test_bad_files_are_refused_and_nothing_is_stored(
    world: World, home: Path, patient_id: str, tmp_path: Path
) -> None:
    # Prepare
    bad_files(tmp_path / "bad")
    anchored = len(records_of(world))
    indexed = world.service.index.count()
    # Execute
    result = medmesh(
        home, "dicom", "import", str(tmp_path / "bad"), "--subject", f"Patient/{patient_id}",
        "--fhir", world.url,
    )  # fmt: skip
    # Assert
    assert result.exit_code == 1, result.output
    assert "scan-notes.bin: not a DICOM file" in result.stderr
    assert "cut.dcm: truncated: pixel data ends after the end of the file" in result.stderr
    assert len(records_of(world)) == anchored  # no record anchored for the patient
    assert world.service.index.count() == indexed


def test_import_stores_instances_and_links_them_from_imaging_studies(
    world: World, imported: dict[str, Any], token: str, patient_id: str
) -> None:
    summary = imported["summary"]
    assert summary["studies"] == 2 and summary["series"] == 2 and summary["instances"] == 2
    assert summary["bytes"] == CT.stat().st_size + MR.stat().st_size
    assert {Path(f["path"]).name for f in summary["failures"]} == {"scan-notes.bin", "cut.dcm"}
    assert "scan-notes.bin" in imported["stderr"] and "cut.dcm" in imported["stderr"]
    # exactly two instance records and two ImagingStudy records were anchored
    rows = records_of(world)
    assert len(rows) == imported["before"] + 4
    instances = records_of(world, INSTANCE_TAG)
    assert len(instances) == 2
    anchored = {str(Cid.from_bytes(r.cid)) for r in instances}
    for path in (CT, MR):
        study = uid(path, "StudyInstanceUID")
        r = requests.get(
            f"{world.url}/ImagingStudy/{study_resource_id(study)}", headers=auth(token), timeout=10
        )
        assert r.status_code == 200, r.text
        resource = r.json()
        assert resource["subject"] == {"reference": f"Patient/{patient_id}"}
        assert resource["identifier"][0]["value"] == f"urn:oid:{study}"
        (series,) = resource["series"]
        (instance,) = series["instance"]
        assert instance["uid"] == uid(path, "SOPInstanceUID")
        (ext,) = instance["extension"]
        assert ext["url"] == "https://medmesh.dev/fhir/StructureDefinition/record-cid"
        assert ext["valueString"] in anchored


def test_import_again_stores_nothing_new(
    world: World, home: Path, imported: dict[str, Any], patient_id: str, tmp_path: Path
) -> None:
    shutil.copy(CT, tmp_path / "ct.dcm")
    shutil.copy(MR, tmp_path / "mr.dcm")
    anchored = len(records_of(world))
    result = medmesh(
        home, "dicom", "import", str(tmp_path), "--subject", f"Patient/{patient_id}",
        "--fhir", world.url, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["instances"] == 0 and summary["already_stored"] == 2
    assert summary["studies"] == 2
    assert len(records_of(world)) == anchored


def test_qido_finds_studies_series_and_instances(
    world: World, imported: dict[str, Any], token: str, patient_id: str, dicomweb: str
) -> None:
    ct, mr = uid(CT, "StudyInstanceUID"), uid(MR, "StudyInstanceUID")

    def studies(**params: str) -> list[str]:
        r = requests.get(f"{dicomweb}/studies", params=params, headers=auth(token), timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith(DICOM_JSON)
        return sorted(s["0020000D"]["Value"][0] for s in r.json())

    assert studies(PatientID=patient_id) == sorted([ct, mr])
    assert studies(PatientID=patient_id, StudyDate=uid(CT, "StudyDate")) == [ct]
    assert studies(PatientID=patient_id, ModalitiesInStudy="MR") == [mr]
    assert studies(StudyInstanceUID=ct) == [ct]
    assert studies(PatientID=patient_id, StudyDate="20040301-") == [mr]
    assert studies(PatientID="no-such-patient") == []
    r = requests.get(f"{dicomweb}/studies", params={"PatientName": "X"}, headers=auth(token), timeout=10)  # fmt: skip
    assert r.status_code == 400
    assert requests.get(f"{dicomweb}/studies", timeout=10).status_code == 401

    series = requests.get(f"{dicomweb}/studies/{ct}/series", headers=auth(token), timeout=10)
    assert series.status_code == 200, series.text
    (s,) = series.json()
    assert s["0020000E"]["Value"] == [uid(CT, "SeriesInstanceUID")]
    assert s["00080060"]["Value"] == ["CT"]
    listed = requests.get(
        f"{dicomweb}/studies/{ct}/series/{uid(CT, 'SeriesInstanceUID')}/instances",
        headers=auth(token),
        timeout=10,
    )
    assert [i["00080018"]["Value"][0] for i in listed.json()] == [uid(CT, "SOPInstanceUID")]
    assert (
        requests.get(f"{dicomweb}/studies/1.2.3.4/series", headers=auth(token), timeout=10).status_code
        == 404
    )  # fmt: skip


def wado_url(dicomweb: str, path: Path) -> str:
    return (
        f"{dicomweb}/studies/{uid(path, 'StudyInstanceUID')}/series/"
        f"{uid(path, 'SeriesInstanceUID')}/instances/{uid(path, 'SOPInstanceUID')}"
    )


def the_part(response: requests.Response) -> bytes:
    """The one part of a multipart/related answer, read with the standard library."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content, policy=email.policy.HTTP)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    (part,) = message.get_payload()  # type: ignore[misc]
    assert part.get_content_type() == "application/dicom"
    return bytes(part.get_payload(decode=True))


def test_wado_returns_the_original_file(
    world: World, imported: dict[str, Any], token: str, dicomweb: str
) -> None:
    for path in (CT, MR):
        r = requests.get(
            wado_url(dicomweb, path),
            headers=auth(token, Accept='multipart/related; type="application/dicom"'),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert the_part(r) == path.read_bytes()
    unknown = wado_url(dicomweb, CT).rsplit("/", 1)[0] + "/1.2.3.4.5"
    assert requests.get(unknown, headers=auth(token), timeout=10).status_code == 404
    json_only = requests.get(
        wado_url(dicomweb, CT), headers=auth(token, Accept=DICOM_JSON), timeout=10
    )
    assert json_only.status_code == 406


def test_export_deidentified_and_as_stored(
    world: World, home: Path, imported: dict[str, Any], tmp_path: Path
) -> None:
    ct = uid(CT, "StudyInstanceUID")
    out = tmp_path / "anon"
    result = medmesh(
        home, "dicom", "export", str(out), "--study", ct, "--fhir", world.url, "--deidentify",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (path,) = out.iterdir()
    original = pydicom.dcmread(CT)
    ds = pydicom.dcmread(path)
    assert ds.PatientIdentityRemoved == "YES"
    assert str(ds.get("PatientName", "")) != str(original.PatientName)
    assert ds.get("PatientID", "") != original.PatientID
    assert ds.SOPInstanceUID != original.SOPInstanceUID and path.stem == ds.SOPInstanceUID
    assert ds.StudyInstanceUID != ct
    assert ds.PixelData == original.PixelData
    assert str(original.PatientName).encode() not in path.read_bytes()
    # as stored: byte for byte, named by SOP Instance UID
    plain = tmp_path / "plain"
    result = medmesh(
        home, "dicom", "export", str(plain), "--study", uid(MR, "StudyInstanceUID"),
        "--fhir", world.url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (plain / f"{uid(MR, 'SOPInstanceUID')}.dcm").read_bytes() == MR.read_bytes()


def stow(url: str, token: str, files: list[bytes], **params: str) -> requests.Response:
    boundary = "test-boundary-0123"
    body = (
        b"".join(
            b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), f)
            for f in files
        )
        + b"--%s--\r\n" % boundary.encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return requests.post(
        url,
        params=params,
        data=body,
        headers=auth(token, **{"Content-Type": content_type}),
        timeout=60,
    )


def test_stow_checks_every_part_itself(
    world: World, imported: dict[str, Any], token: str, patient_id: str, dicomweb: str
) -> None:
    """A client that skips the checks gets them from the gateway: nothing stored."""
    anchored = len(records_of(world))
    data = CT.read_bytes()
    r = stow(
        f"{dicomweb}/studies", token, [b"not DICOM" * 50, data[: len(data) // 2]],
        subject=f"Patient/{patient_id}",
    )  # fmt: skip
    assert r.status_code == 409, r.text
    failed = r.json()["00081198"]["Value"]
    reasons = sorted(item["00091001"]["Value"][0] for item in failed)
    assert reasons == ["not a DICOM file", "truncated: pixel data ends after the end of the file"]
    assert all(item["00081197"]["Value"] == [0xC000] for item in failed)
    assert "00081199" not in r.json()
    assert len(records_of(world)) == anchored
    # an instance of another study than the URL names, a subject that is not a Patient here
    r = stow(f"{dicomweb}/studies/1.2.3", token, [MR.read_bytes()], subject=f"Patient/{patient_id}")
    assert r.status_code == 409 and len(records_of(world)) == anchored
    r = stow(f"{dicomweb}/studies", token, [MR.read_bytes()], subject="Patient/nobody")
    assert r.status_code == 422 and len(records_of(world)) == anchored
    # an instance stored before is linked again, not stored twice
    r = stow(f"{dicomweb}/studies", token, [MR.read_bytes()], subject=f"Patient/{patient_id}")
    assert r.status_code == 200, r.text
    (ref,) = r.json()["00081199"]["Value"]
    assert ref["00081155"]["Value"] == [uid(MR, "SOPInstanceUID")]
    assert len(records_of(world)) == anchored


def test_stow_needs_the_patients_contribute_consent(
    world: World, token: str, dicomweb: str
) -> None:
    """The other patient lets the hospital write Patient resources only."""
    world.keeper(world.other).grant(
        world.hospital.address, Scope.kind("fhir:Patient"), Purpose.CONTRIBUTE, FOREVER
    )
    r = requests.post(
        f"{world.url}/Patient",
        json=_patient(world, world.other, "Other"),
        headers=auth(token, **{"Content-Type": FHIR_JSON}),
        timeout=30,
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = stow(f"{dicomweb}/studies", token, [CT.read_bytes()], subject=f"Patient/{pid}")
    assert r.status_code == 403, r.text
    indexer = world.service.repo.keeper.indexer
    indexer.sync()
    assert [
        row for row in indexer.records(world.other.address, include_history=True)
        if row.kind == INSTANCE_TAG
    ] == []  # fmt: skip


def test_without_consent_the_instance_is_refused_and_logged(
    world: World, imported: dict[str, Any], token: str, dicomweb: str
) -> None:
    """Last in this module: the patient revokes the hospital's access."""
    log = world.service.gateway.log
    # no grant for research: refused, and the refusal logged
    logged = len(log.refusals())
    r = requests.get(
        wado_url(dicomweb, CT), headers=auth(token, **{"X-Medmesh-Purpose": "research"}), timeout=10
    )
    assert r.status_code == 403, r.text
    assert len(log.refusals()) == logged + 1
    # the patient revokes: the next retrieve is refused and logged
    world.keeper(world.patient).revoke(world.hospital.address, Scope.all())
    logged = len(log.refusals())
    r = requests.get(wado_url(dicomweb, CT), headers=auth(token), timeout=10)
    assert r.status_code == 403, r.text
    assert b"DICM" not in r.content
    assert len(log.refusals()) >= logged + 1
