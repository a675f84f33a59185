"""The offline parts of ``medmesh dicom``: planning an import, the owner of a Patient, and
``medmesh dicom deidentify``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from medmesh.cli.app import app
from medmesh.errors import InvalidInputError
from medmesh.interop.dicom.importer import patient_owner, plan_import

FILES = Path(pydicom.data.__file__).parent / "test_files"
ADDRESS = "0x52908400098527886E0F7030069857D2E4169EE7"


def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(FILES / "CT_small.dcm", folder / "ct.dcm")
    shutil.copy(FILES / "MR_small.dcm", folder / "nested" / "mr")
    (folder / "notes.bin").write_bytes(b"not a DICOM file at all" * 10)
    data = (FILES / "CT_small.dcm").read_bytes()
    (folder / "nested" / "cut.dcm").write_bytes(data[: len(data) - 1000])
    (folder / "README.txt").write_text("companion file")
    return folder


def test_plan_sorts_studies_failures_and_skips(tmp_path: Path) -> None:
    plan = plan_import(scans(tmp_path))
    assert len(plan.studies) == 2 and plan.instances == 2
    assert (
        plan.size
        == (FILES / "CT_small.dcm").stat().st_size + (FILES / "MR_small.dcm").stat().st_size
    )
    reasons = {f.path.name: f.reason for f in plan.failures}
    assert reasons["notes.bin"] == "not a DICOM file"
    assert reasons["cut.dcm"].startswith("truncated")
    assert [s.path.name for s in plan.skipped] == ["README.txt"]


def test_patient_owner() -> None:
    did = {"system": "urn:ietf:rfc:3986", "value": f"did:pkh:eip155:31337:{ADDRESS.lower()}"}
    me = "0x" + "11" * 20
    assert (
        patient_owner({"identifier": [did]}, chain_id=31337, me=me, me_is_patient=False) == ADDRESS
    )
    # a patient's own gateway: no identifier, the wallet itself
    assert patient_owner({}, chain_id=31337, me=me, me_is_patient=True).lower() == me
    with pytest.raises(InvalidInputError, match="no account"):
        patient_owner({}, chain_id=31337, me=me, me_is_patient=False)
    with pytest.raises(InvalidInputError, match="another chain"):
        patient_owner({"identifier": [did]}, chain_id=1, me=me, me_is_patient=False)


def test_cli_deidentify_folder(tmp_path: Path) -> None:
    src = scans(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["dicom", "deidentify", str(src), str(out)])
    assert result.exit_code == 1, result.output  # two files refused
    assert "notes.bin" in result.output and "cut.dcm" in result.output
    written = sorted(out.iterdir())
    assert len(written) == 2
    originals = [pydicom.dcmread(FILES / n) for n in ("CT_small.dcm", "MR_small.dcm")]
    for path in written:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert path.stem == ds.SOPInstanceUID  # named by the new UID
        for original in originals:
            assert str(original.PatientName) not in str(ds.get("PatientName", ""))
            assert ds.get("PatientID", "") != original.PatientID
            assert ds.SOPInstanceUID != original.SOPInstanceUID
            assert original.SOPInstanceUID not in path.name


def test_cli_deidentify_one_file(tmp_path: Path) -> None:
    out = tmp_path / "anon.dcm"
    result = CliRunner().invoke(
        app, ["dicom", "deidentify", str(FILES / "CT_small.dcm"), str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    ds = pydicom.dcmread(out)
    original = pydicom.dcmread(FILES / "CT_small.dcm")
    assert ds.PatientIdentityRemoved == "YES"
    assert str(ds.get("PatientName", "")) != str(original.PatientName)
    assert ds.get("PatientID", "") != original.PatientID
    assert '"files"' in result.output
