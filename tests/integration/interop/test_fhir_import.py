"""``medmesh fhir import`` against a real FHIR gateway (Anvil, storage nodes, uvicorn): a
provider's NDJSON export lands as sealed, anchored records; bad lines are reported one by
one and store nothing; running the command again resumes instead of importing twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner, Result

from medmesh.cli.app import app
from medmesh.identity import save_wallet
from tests.integration.interop import test_fhir_api as api
from tests.integration.interop.test_fhir_api import World, _glucose, _h

world, token = api.world, api.token
PASS = "import-test-passphrase"


def medmesh(home: Path, *args: str) -> Result:
    return CliRunner().invoke(
        app, ["--home", str(home), *args], env={"MEDMESH_PASSPHRASE": PASS}, catch_exceptions=False
    )


@pytest.fixture(scope="module")
def home(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hospital's home (its wallet is the gateway's institution)."""
    home = tmp_path_factory.mktemp("hospital-home")
    save_wallet(world.hospital, home / "wallet.json", PASS, scrypt_n=2**10)
    config = {"nodes": world.cluster.urls, "k": 2, "n": 3, "rpc_url": world.rpc_url,
              "chain_id": int(world.service.repo.ledger.chain_id)}  # fmt: skip
    (home / "config.json").write_text(json.dumps(config))
    shutil.copy(world.root / "addresses.json", home / "addresses.json")
    return home


def _stored(world: World) -> tuple[int, int]:
    indexer = world.service.repo.keeper.indexer
    indexer.sync()
    return world.service.index.count(), len(
        indexer.records(world.patient.address, include_history=True)
    )


def test_ndjson_export_is_imported_resumably(
    world: World, token: str, home: Path, tmp_path: Path
) -> None:
    patient: dict[str, Any] = {"resourceType": "Patient", "id": "mrn-0042", "gender": "female",
                               "meta": {"versionId": "12", "lastUpdated": "2024-01-01T00:00:00Z"}}  # fmt: skip
    observations = []
    for i in range(23):
        obs = _glucose("mrn-0042", 80.0 + i, f"2026-03-{i + 1:02d}T08:00:00Z")
        obs["id"] = f"glu-{i}"
        observations.append(obs)
    bad = _glucose("mrn-0042", 70.0, "2026-03-30T08:00:00Z", status="bogus")
    lines = [json.dumps(o) for o in observations[:10]] + ["{truncated", json.dumps(bad)]
    lines += [json.dumps(o) for o in observations[10:]] + [json.dumps(patient)]
    export = tmp_path / "export.ndjson"
    export.write_text("\n".join(lines) + "\n")
    accounts = tmp_path / "accounts.csv"
    accounts.write_text(f"patient,address\nmrn-0042,{world.patient.address}\n")
    before = _stored(world)
    result = medmesh(home, "fhir", "import", str(export), "--fhir", world.url,
                     "--accounts", str(accounts), "--chunk", "7", "--json")  # fmt: skip
    assert result.exit_code == 2, result.output  # some resources failed
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["imported"], summary["failed"]) == (26, 24, 2)
    assert summary["by_type"] == {"Patient": 1, "Observation": 23}
    report = [json.loads(x) for x in Path(summary["report"]).read_text().splitlines()]
    assert sorted(r["place"] for r in report) == [11, 12]  # lines of the two bad ones
    assert "bogus" not in Path(summary["report"]).read_text()  # no values in the report
    index, chain = _stored(world)
    assert (index - before[0], chain - before[1]) == (24, 24)  # nothing of the bad lines
    # every imported resource is served, linked to its patient, under its own id
    r = requests.get(f"{world.url}/Observation", params={"patient": "mrn-0042", "_count": "50"},
                     headers=_h(token), timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    assert {e["resource"]["id"] for e in r.json()["entry"]} == {o["id"] for o in observations}
    p = requests.get(f"{world.url}/Patient/mrn-0042", headers=_h(token), timeout=30).json()
    assert p["meta"]["versionId"] == "1"  # the source server's version stamps are not kept
    # the same command again: all done already, nothing sent, nothing stored twice
    again = medmesh(home, "fhir", "import", str(export), "--fhir", world.url,
                    "--accounts", str(accounts), "--json")  # fmt: skip
    assert json.loads(again.stdout)["resumed_at"] == 26
    assert _stored(world) == (index, chain)


def test_import_refuses_a_wallet_that_is_not_the_gateways(world: World, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    save_wallet(world.other, stranger / "wallet.json", PASS, scrypt_n=2**10)
    export = tmp_path / "x.ndjson"
    export.write_text(json.dumps(_glucose("p", 1.0, "2026-01-01")) + "\n")
    result = medmesh(stranger, "fhir", "import", str(export), "--fhir", world.url)
    assert result.exit_code == 1
    assert "its own institution" in result.output
