"""``medmesh synth`` on a real local network (Anvil, storage nodes), as a subprocess: the
participants, their consents on chain, their records sealed and anchored, the hospitals'
FHIR indexes filled; a second run adds nothing; consent limits what each hospital may read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from medmesh.config import Home
from medmesh.identity import Wallet, load_wallet, save_wallet
from medmesh.interop.fhir.index import FhirIndex
from medmesh.ledger.contracts import Purpose, Role, kind_tag
from medmesh.ledger.local import open_indexer, open_ledger
from tests.integration.test_cli import PASS, medmesh


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("synth-home")
    save_wallet(Wallet.create(), home / "wallet.json", PASS, scrypt_n=2**10)
    (home / "config.json").write_text(json.dumps({"k": 2, "n": 3}))
    try:
        medmesh(home, "chain", "up", "--port", "0")
        medmesh(home, "devnet", "up", "--nodes", "3", "--base-port", "0")
        yield home
    finally:
        medmesh(home, "devnet", "down", check=False)
        medmesh(home, "chain", "down", check=False)


def test_synth_builds_a_population_with_consents_and_records(home: Path) -> None:
    run = medmesh(home, "synth", "--patients", "4", "--hospitals", "2", "--labs", "1", "--json")
    summary = json.loads(run.stdout)
    people = {p["name"]: p for p in summary["participants"]}
    assert sorted(people) == ["hospital-1", "hospital-2", "lab-1", "patient-001",
                              "patient-002", "patient-003", "patient-004"]  # fmt: skip
    assert summary["failed"] == 0
    assert summary["grants"] == 4 + 2 + 2  # primary hospitals, second hospital, lab
    assert summary["by_type"]["Patient"] == 4
    assert summary["records"] > 4 * 30  # carebundle writes ~40 resources per patient
    secrets = json.loads((home / "synth" / "population.json").read_text())
    assert (home / "synth" / "population.json").stat().st_mode & 0o077 == 0
    wallets = {n: load_wallet(Path(p["home"]) / "wallet.json", secrets["passphrase"])
               for n, p in people.items()}  # fmt: skip
    ledger = open_ledger(Home(home))
    try:
        roles = ledger.registry.roles
        assert roles(people["hospital-1"]["address"]) & Role.PROVIDER
        assert roles(people["lab-1"]["address"]) & Role.RESEARCHER
        indexer = open_indexer(Home(home), ledger)
        indexer.sync()
        p1 = people["patient-001"]["address"]  # primary hospital-1; also hospital-2 (Obs)
        rows = indexer.records(p1)
        by_kind = {r.kind: r for r in rows}
        obs, cond = by_kind[kind_tag("fhir:Observation")], by_kind[kind_tag("fhir:Condition")]
        h1, h2 = people["hospital-1"]["address"], people["hospital-2"]["address"]
        lab = people["lab-1"]["address"]
        has = ledger.consent.has_access
        assert has(h1, cond.record, Purpose.TREATMENT)
        assert has(h2, obs.record, Purpose.TREATMENT)
        assert not has(h2, cond.record, Purpose.TREATMENT)  # only Observations for hospital-2
        assert has(lab, obs.record, Purpose.RESEARCH)
        assert not has(lab, obs.record, Purpose.TREATMENT)
        p2 = people["patient-002"]["address"]  # primary hospital-2, nothing for the lab
        assert not has(lab, indexer.records(p2)[0].record, Purpose.RESEARCH)
        total = sum(len(indexer.records(people[f"patient-00{i}"]["address"])) for i in range(1, 5))
        assert total == summary["records"]
    finally:
        ledger.close()
    # each hospital's FHIR index (what its gateway serves from) holds its own patients' records
    h1_index = FhirIndex(Path(people["hospital-1"]["home"]) / "fhir.db",
                         wallets["hospital-1"].encryption_keys[0].secret_bytes())  # fmt: skip
    try:
        assert set(h1_index.patients()) == {p1, people["patient-003"]["address"]}
    finally:
        h1_index.close()
    # again: nothing new anywhere
    again = json.loads(medmesh(home, "synth", "--patients", "4", "--hospitals", "2", "--labs", "1",
                               "--json").stdout)  # fmt: skip
    assert again["participants"] == summary["participants"]
    ledger = open_ledger(Home(home))
    try:
        indexer = open_indexer(Home(home), ledger)
        indexer.sync()
        assert sum(len(indexer.records(people[f"patient-00{i}"]["address"], include_history=True))
                   for i in range(1, 5)) == summary["records"]  # fmt: skip
    finally:
        ledger.close()
    # another population in the same home is refused, clearly
    other = medmesh(home, "synth", "--patients", "5", check=False)
    assert other.returncode == 1
    assert "already holds another population" in " ".join(other.stderr.split())
